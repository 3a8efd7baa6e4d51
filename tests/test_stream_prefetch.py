"""PrefetchCursor: a session's source items made ahead on their own thread, in the cursor's own order."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from engine.pipeline.source import Cursor, SourceItem
from engine.stream.prefetch import PrefetchCursor


class Counting(Cursor):
    """Items 0, 1, 2, ... (a `limit` ends it, or raises `fail` there); records who made each one and when."""

    def __init__(self, limit: int | None = None, fail: BaseException | None = None) -> None:
        self.made: list[tuple[int, str]] = []
        self.limit, self.fail, self.closed = limit, fail, False

    def __next__(self) -> SourceItem:
        k = len(self.made)
        if self.limit is not None and k >= self.limit:
            if self.fail is not None:
                raise self.fail
            raise StopIteration
        self.made.append((k, threading.current_thread().name))
        return SourceItem(k, np.full((2, 2, 3), k % 256, np.uint8), None)

    def close(self) -> None:
        self.closed = True


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert condition()


def test_items_are_made_ahead_in_order_and_bounded():
    inner = Counting()
    cursor = PrefetchCursor(inner, 4, name="prefetch-test")
    _wait_for(lambda: len(inner.made) >= 4)  # made before anyone asked
    time.sleep(0.1)
    assert len(inner.made) <= 5  # depth 4 queued, at most one more in hand
    assert [item.source_index for item in cursor.take(10)] == list(range(10))
    assert {name for _, name in inner.made} == {"prefetch-test"}
    cursor.close()
    assert inner.closed and not any(t.name == "prefetch-test" and t.is_alive() for t in threading.enumerate())


def test_end_and_errors_reach_the_consumer_where_the_item_would_be():
    ended = PrefetchCursor(Counting(limit=3), 2)
    assert [i.source_index for i in ended.take(3)] == [0, 1, 2]
    with pytest.raises(StopIteration):
        next(ended)
    with pytest.raises(StopIteration):  # and every later take ends the same way
        next(ended)
    ended.close()
    failing = PrefetchCursor(Counting(limit=2, fail=ValueError("bad frame 2")), 8)
    assert [i.source_index for i in failing.take(2)] == [0, 1]
    with pytest.raises(ValueError, match="bad frame 2"):
        next(failing)
    failing.close()


def test_close_while_the_queue_is_full_stops_the_thread():
    inner = Counting()
    cursor = PrefetchCursor(inner, 2, name="prefetch-full")
    _wait_for(lambda: len(inner.made) >= 3)
    cursor.close()
    assert inner.closed and not any(t.name == "prefetch-full" and t.is_alive() for t in threading.enumerate())
