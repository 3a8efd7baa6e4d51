"""Pipeline building blocks: presets, placement, the ping-pong order and the bounded frame store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import BackendUnavailableError, InvalidInputError
from engine.pipeline.config import PRESETS, SyncConfig, resolve_config
from engine.pipeline.device import choose_placement
from engine.pipeline.frames import FrameStore, first_source_needed_again, pingpong_index
from engine.pipeline.sdk import frame_ranges


def test_reference_preset_is_the_official_setting():
    ref = PRESETS["reference"]
    assert (ref.steps, ref.guidance_scale, ref.deepcache_interval, ref.seed, ref.chunk_frames) == (20, 1.5, 3, 1247, 16)
    assert PRESETS["fast"].steps < ref.steps


def test_overrides_and_validation():
    cfg = resolve_config("fast", steps=4, guidance_scale=None, seed=5, deepcache_off=True)
    assert (cfg.steps, cfg.guidance_scale, cfg.seed, cfg.deepcache_interval) == (4, 1.5, 5, None)
    assert not SyncConfig(guidance_scale=1.0).uses_cfg and SyncConfig().uses_cfg
    assert SyncConfig(deepcache_interval=1).effective_deepcache is None
    for bad in (dict(steps=0), dict(guidance_scale=-1), dict(deepcache_interval=0), dict(chunk_frames=25),
                dict(seed=-3)):
        with pytest.raises(InvalidInputError, match="expected"):
            SyncConfig(**bad)
    with pytest.raises(InvalidInputError, match="preset"):
        resolve_config("turbo")


def test_placement_is_explicit_and_never_falls_back():
    cpu = choose_placement("cpu", "auto")
    assert cpu.device.type == "cpu" and cpu.dtype == torch.float32 and "fp32 on CPU" in cpu.reason
    with pytest.raises(InvalidInputError, match="fp16"):
        choose_placement("cpu", "fp16")
    with pytest.raises(InvalidInputError, match="dtype"):
        choose_placement("cpu", "int8")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="CUDA"):
            choose_placement("cuda", "auto")


def test_pingpong_order_matches_the_official_loop():
    # official loop_video: copies alternate forward and reversed, concatenated, truncated to L
    t, total = 4, 13
    copies = [list(range(t)) if k % 2 == 0 else list(range(t))[::-1] for k in range(-(-total // t))]
    expected = [i for c in copies for i in c][:total]
    assert [pingpong_index(j, t) for j in range(total)] == expected


def test_frames_kept_for_the_reversed_pass():
    assert first_source_needed_again(252, 250, exact=True) == 248 - 2  # equal lengths: only the tail is revisited
    assert first_source_needed_again(100, 250, exact=True) == 398  # no loop at all: nothing kept
    assert first_source_needed_again(600, 250) == 0  # several loops: keep everything
    assert first_source_needed_again(252, None) == 0
    assert first_source_needed_again(252, 250) < first_source_needed_again(252, 250, exact=True)


def test_frame_store_spills_beyond_its_ram_budget_and_cleans_up():
    frames = [np.full((4, 5, 3), i, np.uint8) for i in range(10)]
    with FrameStore(ram_frames=3) as store:
        for i, f in enumerate(frames):
            store.put(i, f)
        assert len(store._ram) == 3 and store._file is not None
        for i, f in enumerate(frames):
            np.testing.assert_array_equal(store.get(i), f)
        with pytest.raises(KeyError):
            store.get(42)
    assert store._file is None


def test_frame_ranges():
    assert frame_ranges([5, 6, 7, 9, 2]) == [(2, 3), (5, 8), (9, 10)]
    assert frame_ranges([]) == []
