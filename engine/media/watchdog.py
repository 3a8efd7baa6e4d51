"""Decoders that hang or crash (R2): a stall timeout on frame iteration, and decoding isolated in a child process.

- `with_timeout(items, timeout_s, what)`: the items are produced in a daemon thread and handed over
  through a queue of two; when the next one takes longer than `timeout_s` (an input that stops
  delivering bytes, a decoder stuck in a loop) the consumer gets a DecodeTimeoutError and the job
  ends. The stuck thread is abandoned (it cannot be interrupted inside FFmpeg) but holds no lock the
  rest of the process needs, so other jobs go on. iter_video_frames uses it (MediaLimits.stall_timeout_s).
- `run_isolated(fn, *args, timeout_s=...)`: `fn(*args)` in a fresh child process (spawn). A crash of
  the child (a decoder segfault, abort) becomes a MediaDecodeError naming the signal and a hang a
  DecodeTimeoutError; the caller's process survives either way. For untrusted uploads (a server's
  probe) and the fuzz tests; about 0.5 s of start-up per call.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from engine.errors import DecodeTimeoutError, EngineError, MediaDecodeError

T = TypeVar("T")

HANDOFF_DEPTH = 2  # items decoded ahead of the consumer
POLL_S = 0.1  # how often a blocked producer checks whether the consumer has gone
_ITEM, _END, _ERROR = "item", "end", "error"


def with_timeout(items: Iterable[T], timeout_s: float | None, what: str) -> Iterator[T]:
    """Yield `items` (produced in another thread); DecodeTimeoutError when one takes longer than `timeout_s`.

    `timeout_s=None` iterates directly, in the caller's thread.
    """
    if timeout_s is None:
        yield from items
        return
    handoff: queue.Queue = queue.Queue(maxsize=HANDOFF_DEPTH)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                handoff.put(entry, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put((_ITEM, item)):
                    return
            put((_END, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((_ERROR, exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # in this thread: a generator is closed where it runs (releases the container)

    producer = threading.Thread(target=produce, name=f"decode:{what}"[:60], daemon=True)
    producer.start()
    try:
        while True:
            try:
                kind, value = handoff.get(timeout=timeout_s)
            except queue.Empty:
                raise DecodeTimeoutError(f"{what}: expected the next frame within {timeout_s:g} s "
                                         "(MediaLimits.stall_timeout_s), found none: the input or the decoder "
                                         "stalled") from None
            if kind == _ITEM:
                yield value
            elif kind == _END:
                return
            else:
                raise value
    finally:
        stop.set()


def _child(conn, fn, args) -> None:
    try:
        conn.send((True, fn(*args)))
    except BaseException as exc:  # noqa: BLE001 - sent to the parent
        try:
            conn.send((False, exc))
        except Exception:  # noqa: BLE001 - an exception that does not pickle: send its text
            conn.send((False, MediaDecodeError(f"{type(exc).__name__}: {exc}")))
    finally:
        conn.close()


def run_isolated(fn: Callable[..., Any], *args, timeout_s: float, what: str = "decode") -> Any:
    """`fn(*args)` in a spawned child process; its result, its EngineError, or a typed error for a crash/hang.

    `fn`, its arguments and result must pickle (a module-level function, paths, small results).
    A non-engine exception in the child is re-raised as MediaDecodeError with its type and message.
    """
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(send, fn, args), name=f"isolated-{what}", daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(timeout_s):
            raise DecodeTimeoutError(f"{what}: expected a result within {timeout_s:g} s, found none "
                                     "(the decoder hung); the child process was killed")
        try:
            ok, value = receive.recv()
        except EOFError:  # the child died without answering: a crash
            child.join(timeout=5)
            code = child.exitcode
            how = (f"signal {signal.Signals(-code).name}" if code is not None and code < 0
                   else f"exit status {code}")
            raise MediaDecodeError(f"{what}: expected the decoder to finish, found it crashed ({how}); "
                                   "the input is probably corrupt") from None
    finally:
        if child.is_alive():
            child.kill()
        child.join(timeout=5)
        receive.close()
    if ok:
        return value
    if isinstance(value, EngineError):
        raise value
    raise MediaDecodeError(f"{what}: {type(value).__name__}: {value}") from value
