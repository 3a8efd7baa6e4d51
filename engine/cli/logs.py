"""Log setup for the `engine` command: one line per fact, at the level it deserves.

Third-party libraries log a few lines that state no fact about the user's job, or state it at the wrong level;
those are demoted to DEBUG here (visible with `engine -v`), never dropped.
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


def configure(verbose: bool = False) -> None:
    """Root logging for the CLI (stderr) plus the demotions above."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
    for name, prefix in DEMOTED:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Demote) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_Demote(prefix))
