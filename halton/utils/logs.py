"""Logging helpers for the entry points' Hydra logging config (conf/hydra/job_logging/halton.yaml)."""

from __future__ import annotations

import logging


class BelowLevel(logging.Filter):
    """Lets through records below ``level``: info goes to stdout, warnings and errors (their own handler) to
    stderr, so a failing run's stderr holds its error line."""

    def __init__(self, level: str | int = logging.WARNING):
        super().__init__()
        self.level = logging.getLevelName(level) if isinstance(level, str) else level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def route_lightning_logs() -> None:
    """Import Lightning and send its records through the run's handlers only: importing the ``lightning`` package
    gives its logger a stderr handler of its own, which would print every message a second time (on stderr)."""
    import lightning  # noqa: F401

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
