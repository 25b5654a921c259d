"""Structured logs: one JSON object per line on stdout, for a log pipeline to parse. That holds
for every line the process writes while serving: the service's own records, Sanic's, and any
library's (through a JSON handler on the root logger), whatever a client put in them.

Call sites pass named fields (``log_event(logger, "connect", sid=..., user=...)``); there is
no free-text path for a payload to slip into. Never pass a token, an SDP body or an ICE
candidate. The Socket.IO and Engine.IO loggers are held at ERROR whatever the service's
level, because at INFO they print every packet, SDP and candidates included.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from typing import Any, Final

LOGGER_NAME: Final = "signaling"
_QUIET_LIBRARIES: Final = ("socketio", "socketio.server", "engineio", "engineio.server")


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "logger": ..., "event": ..., **fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            "pid": record.process,
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[0] is not None:
            # the type and where it happened, not the message: messages can carry payloads
            entry["error_type"] = record.exc_info[0].__name__
            entry["traceback"] = [
                line.rstrip() for line in traceback.format_tb(record.exc_info[2])
            ]
        # ASCII: a lone surrogate from a client (in an event name, say) cannot break the line
        return json.dumps(entry, ensure_ascii=True, default=str)


def configure_logging(level: str) -> logging.Logger:
    """Point the service logger at stdout in JSON at ``level``; idempotent."""
    logger = logging.getLogger(LOGGER_NAME)
    _json_to_stdout(logger)
    logger.setLevel(level)
    logger.propagate = False
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    # every other library's records reach the root logger: through the same formatter, so a
    # client-chosen string (an Engine.IO sid with a newline, say) cannot write a line of its own
    _json_to_stdout(logging.getLogger())
    return logger


def _json_to_stdout(logger: logging.Logger) -> None:
    """Give ``logger`` one JSON handler on stdout (replacing the one added before)."""
    for existing in list(logger.handlers):
        if getattr(existing, "_signaling", False):
            logger.removeHandler(existing)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler._signaling = True  # type: ignore[attr-defined]
    logger.addHandler(handler)


def sanic_log_config() -> dict[str, Any]:
    """Sanic's own loggers (start-up, errors, websockets), in the same JSON lines: passed to
    ``Sanic(log_config=...)`` in place of its text formats."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json",
                                "stream": "ext://sys.stdout"}},
        "loggers": {name: {"level": "INFO", "handlers": ["stdout"], "propagate": False}
                    for name in ("sanic.root", "sanic.error", "sanic.access", "sanic.server",
                                 "sanic.websockets")},
    }


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with named fields as one JSON line."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})
