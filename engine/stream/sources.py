"""What a session loops over: a prepared avatar, a video file, or frames, as one ping-pong `Cursor`."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from engine.errors import InvalidInputError, expect
from engine.pipeline.source import Cursor, SourceItem


def open_source(sync, source, *, face, aligner, timer) -> Cursor:
    """A cursor over `source` (Avatar, video path, frames [T,H,W,3] uint8 or an iterator of frames).

    Cheap checks happen here, at the API boundary (R25): an avatar made for another
    model, a source of the wrong type, a first frame that is not uint8 [H,W,3].
    Closing the cursor releases the decoder.
    """
    from engine.stream.avatar import Avatar, AvatarCursor

    if isinstance(source, Avatar):
        source.check_compatible(sync.core, getattr(sync.models, "name", "?"))
        return AvatarCursor(source)
    from engine.pipeline.faces import make_landmark_source
    from engine.pipeline.source import SourceCursor

    expect(source is not None and not isinstance(source, (int, float, bytes)), InvalidInputError,
           "stream source", "a video path, frames [T,H,W,3] uint8, an iterator of frames or an Avatar",
           type(source).__name__)
    decoded, _, _ = sync._open_video(source)
    try:
        frames = _peek_frames(decoded)
        faces = make_landmark_source(face if face is not None else sync.face, sync.core.resolution)
    except BaseException:
        _close(decoded)
        raise
    return _OwningCursor(SourceCursor(frames, faces, aligner, timer=timer), decoded)


def _close(frames) -> None:
    close = getattr(frames, "close", None)
    if close is not None:
        close()


def _peek_frames(frames) -> Iterator:
    """Validate the first frame of an iterator source now (R25), then yield all of them."""
    from engine.pipeline.source import as_rgb_frame

    frames = iter(frames)
    first = next(frames, None)
    expect(first is not None, InvalidInputError, "stream source", "at least one frame", "none")
    as_rgb_frame(first, 0)
    return itertools.chain([first], frames)


class _OwningCursor(Cursor):
    """A source cursor that also closes the frame iterator (a decoder holding a file) it reads from."""

    def __init__(self, cursor: Cursor, frames) -> None:
        self._cursor = cursor
        self._frames = frames

    def __next__(self) -> SourceItem:
        return next(self._cursor)

    def close(self) -> None:
        self._cursor.close()
        _close(self._frames)
