"""The process's log: one place that configures it, for the command, each worker and ``serve()``.

Two formats (``--log-format``): ``text``, one line per record, and ``json``, one JSON object
per line with structured fields::

    {"time": "2026-11-29T10:11:51.712Z", "level": "INFO", "logger": "geventcomet.access",
     "pid": 2839, "event": "request", "message": "127.0.0.1 - - [...] \\"GET /stats HTTP/1.1\\" 200 512 0.000412",
     "client": "127.0.0.1", "request": "GET /stats HTTP/1.1", "status": 200, "bytes": 512, "duration_s": 0.000412}

(a poll's line has ``"channels": N`` too, the number of channels it named).

``event`` is the record's own (``log.info(..., extra={"event": "listening"})``) or the last
part of its logger's name; any other ``extra`` becomes a field. gevent's access log writes
preformatted lines, so an access line is parsed back into its fields here.

Every line is masked: a credential inside a URL (a backend's ``redis://:PASSWORD@..``
quoted by an error, a traceback included) never reaches the log.
"""
from __future__ import annotations

import json
import logging
import re
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .security import mask_credentials

LINE_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
#: The attributes every LogRecord has; any other one was given as ``extra``.
STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
#: gevent's access line: ``CLIENT - - [TIME] "REQUEST" STATUS LENGTH DURATION``.
ACCESS_LINE = re.compile(r'(?P<client>\S+) - - \[[^\]]*\] "(?P<request>[^"]*)" (?P<status>\d+) '
                         r'(?P<bytes>\d+|-) (?P<duration_s>[\d.]+|-)$')


class MaskingFormatter(logging.Formatter):
    """Masks credentials inside any URL of a log line, tracebacks included."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_credentials(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record (``--log-format json``), every string masked."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "pid": record.process,
            "event": record.name.rsplit(".", 1)[-1], "message": record.getMessage()}
        if record.name == "geventcomet.access":
            entry["event"] = "request"
            entry.update(access_fields(entry["message"]))
        entry.update((k, v) for k, v in vars(record).items() if k not in STANDARD_ATTRS and not k.startswith("_"))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(masked(entry), default=str, ensure_ascii=False)


def access_fields(line: str) -> dict[str, Any]:
    """The fields of one of gevent's access lines (nothing if it is not one)."""
    found = ACCESS_LINE.search(line)
    if found is None:
        return {}
    fields: dict[str, Any] = {"client": found["client"], "request": found["request"], "status": int(found["status"])}
    target = found["request"].split(" ")[1] if found["request"].count(" ") >= 1 else ""
    channels = parse_qs(urlsplit(target).query).get("channel")
    if channels:
        fields["channels"] = len(channels)
    if found["bytes"] != "-":
        fields["bytes"] = int(found["bytes"])
    if found["duration_s"] != "-":
        fields["duration_s"] = float(found["duration_s"])
    return fields


def masked(value: Any) -> Any:
    """``value`` with URL credentials masked in every string inside it."""
    if isinstance(value, str):
        return mask_credentials(value)
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [masked(v) for v in value]
    return value


def make_handler(log_format: str = "text") -> logging.Handler:
    """A stderr handler with the ``text`` or ``json`` formatter."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else MaskingFormatter(LINE_FORMAT))
    return handler


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr at ``level``, one line per record (``text`` or ``json``), URL credentials masked;
    a greenlet's uncaught error too (:func:`log_hub_errors`)."""
    logging.basicConfig(level=level.upper(), handlers=[make_handler(log_format)])
    log_hub_errors()


def log_hub_errors() -> None:
    """Route the errors gevent's hub reports (a greenlet that died of an exception) through
    logging, as ERROR records of ``geventcomet.hub`` with the traceback.

    Measured fact (gevent 25-26): ``Hub.print_exception`` writes the traceback, then a
    timestamp and "<greenlet> failed with <Error>", straight to ``sys.stderr`` in several
    writes: unmasked, and with ``--log-format json`` a run of lines that are not JSON.
    """
    from gevent.hub import Hub

    def print_exception(hub: Hub, context: Any, kind: Any, value: Any, tb: Any) -> None:
        try:
            where = context if isinstance(context, str) else hub.format_context(context)
        except Exception:  # noqa: BLE001 - formatting a broken object must not hide its error
            where = repr(context)
        error = value if isinstance(value, BaseException) else None
        logging.getLogger("geventcomet.hub").error(
            "%s failed with %s", where, getattr(kind, "__name__", "exception"),
            exc_info=(type(error), error, tb) if error is not None else None)

    Hub.print_exception = print_exception  # type: ignore[method-assign]


def ensure_logging(level: str, log_format: str = "text") -> bool:
    """Configure logging as :func:`configure_logging` does unless the program already did
    (a handler on the root or the ``geventcomet`` logger); True if it was done here.

    For ``geventcomet.serve(config)`` called from a program's own code: without it the
    "listening on" line would go nowhere (Python's last-resort handler shows warnings only).
    """
    if logging.getLogger("geventcomet").hasHandlers():
        return False
    configure_logging(level, log_format)
    return True
