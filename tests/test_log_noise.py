"""A normal run says each fact once, at the level it deserves (issue 14 item 8)."""

from __future__ import annotations

import logging
import subprocess
import sys

from conftest import REPO_ROOT


def test_loading_tiny_random_on_auto_logs_each_fact_once(caplog):
    from engine.pipeline.sdk import LipSync

    with caplog.at_level(logging.DEBUG):
        LipSync.from_pretrained("tiny-random", device="cpu", backend="auto")
    random = [r for r in caplog.records if "RANDOM weights" in r.getMessage()]
    assert len(random) == 1 and random[0].levelno == logging.WARNING
    choice = [r for r in caplog.records if r.levelno >= logging.INFO and "unet=" in r.getMessage()]
    assert len(choice) == 1, [r.getMessage() for r in choice]  # the backends chosen: said once


def test_third_party_notices_are_demoted_to_debug(caplog):
    from engine.cli.logs import configure

    configure()
    logger = logging.getLogger("torch.utils.cpp_extension")
    with caplog.at_level(logging.INFO):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='/usr/local/cuda'")
        logger.warning("something else")
    assert [r.getMessage() for r in caplog.records if r.name == logger.name] == ["something else"]


def test_the_tflite_runtime_notice_is_not_printed():
    """ai_edge_litert's C++ runtime prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." once per
    process; the mediapipe source keeps it off stderr (everything else it prints still passes)."""
    code = ("import sys\nfrom engine.face.detection import make_face_source\n"
            "make_face_source('mediapipe'); make_face_source('mediapipe-static')\nprint('made', file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "XNNPACK" not in done.stderr and done.stderr.strip().endswith("made"), done.stderr
