"""A session's source items made ahead of the speech: decode, face tracking and alignment off the critical path.

A live chunk can start only once its speech has arrived; its source items (the avatar's stored frame and face,
or a video frame decoded, tracked and aligned) do not depend on the speech at all. Made when the chunk starts,
they add 10-20 ms per frame at 1080x1920 on a CPU (a 16-frame chunk: 0.2-0.3 s) to the first frame's latency.
`PrefetchCursor` makes the next items of a cursor on its own thread, in the cursor's order, so taking them is a
queue read. The items and their order are the cursor's own: whoever takes them (speech chunks, idle frames) gets
exactly what the cursor would have given, only sooner.
"""

from __future__ import annotations

import queue
import threading

from engine.pipeline.source import Cursor, SourceItem

POLL_S = 0.05  # how often a blocked put/get re-checks for close()


class _End:
    """What the making thread leaves in the queue when the cursor stops: StopIteration or its error."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class PrefetchCursor(Cursor):
    """Wraps `cursor`; keeps up to `depth` of its next items made ahead, on a thread named `name`."""

    def __init__(self, cursor: Cursor, depth: int, *, name: str = "lipsync-stream-source") -> None:
        self._cursor = cursor
        self._ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._end: _End | None = None  # seen by the consumer: every later take ends the same way
        self._thread = threading.Thread(target=self._make, name=name, daemon=True)
        self._thread.start()

    def _make(self) -> None:
        end = _End(None)
        try:
            while not self._stop.is_set():
                item = next(self._cursor)
                if not self._put(item):
                    return
        except StopIteration:
            pass
        except BaseException as exc:  # handed to the consumer, raised where it takes the item
            end = _End(exc)
        self._put(end)

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._ready.put(entry, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __next__(self) -> SourceItem:
        while self._end is None:
            try:
                entry = self._ready.get(timeout=POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    raise StopIteration from None
                continue
            if isinstance(entry, _End):
                self._end = entry
                break
            return entry
        if self._end.error is not None:
            raise self._end.error
        raise StopIteration

    def close(self) -> None:
        """Stop making items (the one being made finishes), then close the wrapped cursor."""
        self._stop.set()
        while True:  # free a making thread blocked on a full queue
            try:
                self._ready.get_nowait()
            except queue.Empty:
                break
        if threading.current_thread() is not self._thread:
            self._thread.join()
        self._cursor.close()
