"""Shared test setup: golden fixture paths, device markers, deterministic threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LATENTSYNC_SHARED", REPO_ROOT.parent / "shared"))
GOLDEN = SHARED / "golden"
MEDIA = SHARED / "media"


def _has_cuda() -> bool:
    return torch.cuda.is_available()


def _has_trt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return _has_cuda()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_trt = pytest.mark.skip(reason="needs TensorRT and a CUDA GPU")
    cuda, trt = _has_cuda(), _has_trt()
    for item in items:
        if "requires_cuda" in item.keywords and not cuda:
            item.add_marker(skip_cuda)
        if "requires_trt" in item.keywords and not trt:
            item.add_marker(skip_trt)


@pytest.fixture(scope="session")
def golden() -> Path:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden fixtures not found at {GOLDEN}")
    return GOLDEN


@pytest.fixture(scope="session")
def media() -> Path:
    if not MEDIA.is_dir():
        pytest.skip(f"test media not found at {MEDIA}")
    return MEDIA
