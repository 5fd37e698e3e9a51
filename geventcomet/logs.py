"""The process's log: one place that configures it, for the command and for each worker.

Every line goes through :class:`MaskingFormatter`, so a credential inside a URL (a
backend's ``redis://:PASSWORD@..`` quoted by an error, a traceback included) never
reaches the log.
"""
from __future__ import annotations

import logging

from .security import mask_credentials

LINE_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


class MaskingFormatter(logging.Formatter):
    """Masks credentials inside any URL of a log line, tracebacks included."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_credentials(super().format(record))


def configure_logging(level: str) -> None:
    """Log to stderr at ``level``, one line per record, URL credentials masked."""
    handler = logging.StreamHandler()
    handler.setFormatter(MaskingFormatter(LINE_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
