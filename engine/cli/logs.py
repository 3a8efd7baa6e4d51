"""Log setup for the `engine` command: one line per fact, at the level it deserves.

Third-party libraries log a few lines that state no fact about the user's job, or state it at the wrong level;
those are demoted to DEBUG here (visible with `engine -v`), never dropped. Their INFO logging as a whole
(torch.onnx, onnxscript, onnx_ir: ~490 lines per `engine export`) is shown only with `engine -v`: at the
default verbosity only this project's loggers log below WARNING.
"""

from __future__ import annotations

import logging

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
# (logger, start of the message) demoted to DEBUG
DEMOTED = (
    # torch.utils.cpp_extension on import, on any CUDA-built torch without a GPU (`engine bench`, torch.compile):
    # the machine's CUDA state is `engine doctor`'s and the device line's business
    ("torch.utils.cpp_extension", "No CUDA runtime is found"),
)


class _Demote(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and str(record.msg).startswith(self.prefix):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


OWN_LOGGERS = ("engine", "export", "benchmarks", "__main__")


class _OwnInfoOnly(logging.Filter):
    """At default verbosity: INFO and below only from this project's loggers; third parties from WARNING up."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return record.name.split(".")[0] in OWN_LOGGERS


def configure(verbose: bool = False) -> None:
    """Root logging for the CLI (stderr) plus the demotions above; third-party INFO only when `verbose`."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        if not verbose and not any(isinstance(f, _OwnInfoOnly) for f in handler.filters):
            handler.addFilter(_OwnInfoOnly())
        elif verbose:
            for f in [f for f in handler.filters if isinstance(f, _OwnInfoOnly)]:
                handler.removeFilter(f)
    for name, prefix in DEMOTED:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Demote) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_Demote(prefix))
