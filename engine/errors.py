"""Typed errors: every failure a user can hit has one class here.

Each message says what was expected and what was found, so callers (CLI, SDK,
server) can report it without a traceback.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error this engine raises on purpose."""

    exit_code = 1


class InvalidInputError(EngineError, ValueError):
    """The input (file, array, argument) is not what the engine accepts."""

    exit_code = 2


class MediaDecodeError(EngineError):
    """A media file could not be decoded (truncated, corrupt, unsupported)."""

    exit_code = 3


class DecodeTimeoutError(MediaDecodeError):
    """A decoder or its input stalled: no frame within the configured time (MediaLimits.stall_timeout_s)."""


class NoFaceError(EngineError):
    """No usable face where one was required."""

    exit_code = 4


class CheckpointError(EngineError):
    """A weight file is missing, unsafe, or does not match the expected layout."""

    exit_code = 5


class DownloadError(CheckpointError):
    """A model file is not cached and cannot be fetched (offline mode, host unreachable, download failed)."""


class IncompatibleEngineError(EngineError):
    """A built engine (TensorRT plan, ONNX file) does not match what is needed."""

    exit_code = 6


class BackendUnavailableError(EngineError):
    """An explicitly requested backend cannot run on this machine."""

    exit_code = 7


class QueueFullError(EngineError):
    """A bounded queue is full; the request is refused instead of growing memory."""

    exit_code = 8


class DeadlineExceededError(EngineError):
    """A job's deadline passed before it could run."""

    exit_code = 9


class GpuOutOfMemoryError(EngineError):
    """The GPU ran out of memory; memory has been released."""

    exit_code = 10


class NonFiniteOutputError(EngineError):
    """A network produced NaN/Inf (also after a float32 retry); the frame range is named."""

    exit_code = 11


class OutputWriteError(EngineError):
    """An output could not be written (disk full, quota, file size limit, I/O error) while writing it.

    The message names the path, the free space left there and the OS error. The half-written file has been
    removed and no input was touched; a batch's per-job records still say which jobs finished.
    """

    exit_code = 12


# Every exit code a command can return, for docs and tests (`engine` returns 130 / 143 on SIGINT / SIGTERM).
EXIT_CODES = {0: "success", 1: "failure (EngineError, or a batch with failed jobs)", 2: "InvalidInputError",
              3: "MediaDecodeError (DecodeTimeoutError)", 4: "NoFaceError", 5: "CheckpointError (DownloadError)",
              6: "IncompatibleEngineError", 7: "BackendUnavailableError", 8: "QueueFullError",
              9: "DeadlineExceededError", 10: "GpuOutOfMemoryError", 11: "NonFiniteOutputError",
              12: "OutputWriteError", 130: "interrupted (SIGINT, Ctrl-C)", 143: "terminated (SIGTERM)"}


def expect(condition: bool, error: type[EngineError], what: str, expected: object, found: object) -> None:
    """Raise `error("<what>: expected <expected>, found <found>")` unless `condition` holds."""
    if not condition:
        raise error(f"{what}: expected {expected}, found {found}")
