"""The engine's CUDA stage clocks are accounted, never dropped: a long backlog is resolved, not cut.

On a GPU the device thread keeps each batch's CUDA events unread (reading waits for the device) until stats are
asked for. Cutting that backlog to its newest entries used to lose the busy time of the older batches, so the
idle fraction was over-reported exactly under load; now the oldest half is resolved (its events completed long
ago). The clocks here stand in for CUDA events only by their `total_s`: the accounting is what is under test.
"""

from __future__ import annotations

import pytest
import torch

from engine.runtime import EnginePolicy
from engine.runtime.engine import PENDING_CLOCKS_MAX, _DeviceLoop, _take_oldest


class _ResolvedClock:
    def __init__(self, seconds: float) -> None:
        self.total_s = seconds


def test_every_batch_clock_is_counted_past_the_backlog_limit():
    loop = _DeviceLoop(None, torch.device("cuda"), EnginePolicy(), None)  # never starts a thread or touches CUDA
    batches = 3 * PENDING_CLOCKS_MAX + 7
    for _ in range(batches):
        loop._account(_ResolvedClock(0.01))
    assert len(loop._pending_clocks) <= PENDING_CLOCKS_MAX
    assert loop.stats_dict()["busy_s"] == pytest.approx(batches * 0.01, abs=1e-3)
    assert loop._pending_clocks == []


def test_take_oldest_takes_half_only_past_the_limit():
    pending = list(range(10))
    assert _take_oldest(pending, 10) == [] and pending == list(range(10))
    pending.append(10)
    assert _take_oldest(pending, 10) == [0, 1, 2, 3, 4] and pending == list(range(5, 11))
