"""Logging helpers for the entry points' Hydra logging config (conf/hydra/job_logging/halton.yaml)."""

from __future__ import annotations

import logging
import re
import sys

from halton.utils.files import DISK_FULL, errno_text


class BelowLevel(logging.Filter):
    """Lets through records below ``level``: info goes to stdout, warnings and errors (their own handler) to
    stderr, so a failing run's stderr holds its error line."""

    def __init__(self, level: str | int = logging.WARNING):
        super().__init__()
        self.level = logging.getLevelName(level) if isinstance(level, str) else level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


class LightningBanner(logging.Filter):
    """Drops Lightning's lines that do not concern the user: the accelerators that are absent ("GPU available:
    False, used: False", "TPU available: False, using: 0 TPU cores") and its advertisements ("💡 Tip: ...
    litlogger"). Its warnings, and the GPU line when there is a GPU, pass."""

    NOISE = re.compile(r"(GPU|TPU|HPU) available: False|💡 Tip: ")

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.NOISE.match(str(record.msg))


def route_lightning_logs() -> None:
    """Import Lightning and send its records through the run's handlers only: importing the ``lightning`` package
    gives its logger a stderr handler of its own, which would print every message a second time (on stderr).
    Its banner lines are dropped (:class:`LightningBanner`) where they are logged (its rank-zero loggers)."""
    import lightning  # noqa: F401

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, LightningBanner) for f in logger.filters):
            logger.addFilter(LightningBanner())


class RunLogFile(logging.FileHandler):
    """The run's log file. When the disk is full its records cannot be written: one warning line on stderr, once,
    instead of logging's traceback for every record (the terminal still shows what the run reports)."""

    warned = False

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not (isinstance(error, OSError) and error.errno in DISK_FULL):
            return super().handleError(record)
        if not self.warned:
            self.warned = True
            sys.stderr.write(f"warning: the log file {self.baseFilename} is not being written: "
                             f"{errno_text(error.errno)}; {DISK_FULL[error.errno]}\n")
