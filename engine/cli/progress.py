"""Progress bars for CLI work that takes minutes: one tqdm bar on stderr, log lines printed above it.

Every command uses `progress_bar(...)`, so bars look and behave alike:
- while the bar is shown, log records go through `tqdm.write` (tqdm's logging redirection), so a log line never
  lands on the bar's line;
- the rate and ETA are the average since the bar started (`smoothing=0`): the pipeline delivers frames in bursts
  of one chunk (16), and tqdm's default moving average over such bursts swings between "stalled" and "instant";
- nothing is drawn when stderr is not a terminal or the caller disables it (`--no-progress`), and the object is
  still safe to update, so code never branches on whether a bar exists.

Usage::

    with progress_bar(total=frames, desc="eval", unit="frame") as bar:
        for ...:
            bar.update(1)
    # or, for a `progress(done, total)` callback such as LipSync's:
    with progress_bar(desc="lip-sync", unit="frame") as bar:
        sync(video, audio, out, progress=bar.callback)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class Bar:
    """A tqdm bar or, when nothing is drawn, a counter with the same methods."""

    def __init__(self, tqdm_bar=None) -> None:
        self._bar = tqdm_bar
        self.n = 0
        self.total: int | None = None if tqdm_bar is None else tqdm_bar.total

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def set_total(self, total: int | None) -> None:
        self.total = total
        if self._bar is not None and total is not None and self._bar.total != total:
            self._bar.total = total
            self._bar.refresh()

    def callback(self, done: int, total: int | None = None) -> None:
        """`progress(done, total)` style: absolute counts (as `LipSync(..., progress=...)` reports them)."""
        if total is not None:
            self.set_total(total)
        if done > self.n:
            self.update(done - self.n)

    def restart(self, desc: str, total: int | None = None) -> None:
        """Start counting again from 0 under a new label (the next stage of a command)."""
        self.n, self.total = 0, total
        if self._bar is not None:
            self._bar.reset(total=total)
            self._bar.set_description_str(desc)

    def describe(self, text: str) -> None:
        """Change the bar's label (e.g. the sweep row being made)."""
        if self._bar is not None:
            self._bar.set_description_str(text)


@contextlib.contextmanager
def progress_bar(total: int | None = None, *, desc: str, unit: str = "frame", enabled: bool = True,
                 stream=None) -> Iterator[Bar]:
    """A bar on `stream` (stderr) while the block runs; log records are printed above it."""
    stream = stream or sys.stderr
    if not enabled or not _is_terminal(stream):
        yield Bar()
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(), tqdm(total=total, desc=desc, unit=unit, file=stream, smoothing=0,
                                       dynamic_ncols=True, leave=True) as bar:
        yield Bar(bar)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
