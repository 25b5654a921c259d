"""What the service tells its operator: JSON log lines (:mod:`service.telemetry.logs`),
Prometheus metrics (:mod:`service.telemetry.metrics`), and background loops that log their own
failures and go on (:mod:`service.telemetry.supervision`).

The bottom of the stack, beside :mod:`service.errors`: every layer may log and count into it,
and it imports no other part of the service (but its version).
"""

from __future__ import annotations

from service.telemetry.logs import (
    LOGGER_NAME,
    JsonFormatter,
    configure_logging,
    log_event,
    sanic_log_config,
)
from service.telemetry.metrics import CONTENT_TYPE, LIBRARY_REASONS, Metrics, bounded
from service.telemetry.supervision import forever

__all__ = ["CONTENT_TYPE", "LIBRARY_REASONS", "LOGGER_NAME", "JsonFormatter", "Metrics",
           "bounded", "configure_logging", "forever", "log_event", "sanic_log_config"]
