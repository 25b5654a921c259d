"""What the service tells its operator: JSON log lines (:mod:`service.telemetry.logs`),
Prometheus metrics (:mod:`service.telemetry.metrics`), and background loops that log their own
failures and go on (:mod:`service.telemetry.supervision`).

The bottom of the stack, beside :mod:`service.errors`: every layer may log and count into it,
and it imports no other part of the service (but its version). (A loop that survives its own
bugs is here because what it does with them is tell the operator.)

The metrics are loaded when first named: prometheus-client fixes its multiprocess mode when it
is imported, so only what counts may import it, after :mod:`service.app` has set
``PROMETHEUS_MULTIPROC_DIR`` (logging from auth, say, must not).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from service.telemetry.logs import (
    LOGGER_NAME,
    JsonFormatter,
    configure_logging,
    log_event,
    sanic_log_config,
)
from service.telemetry.supervision import forever

if TYPE_CHECKING:
    from service.telemetry.metrics import CONTENT_TYPE, LIBRARY_REASONS, Metrics, bounded

_METRICS = frozenset({"CONTENT_TYPE", "LIBRARY_REASONS", "Metrics", "bounded"})


def __getattr__(name: str) -> Any:
    if name in _METRICS:
        return getattr(import_module("service.telemetry.metrics"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CONTENT_TYPE", "LIBRARY_REASONS", "LOGGER_NAME", "JsonFormatter", "Metrics",
           "bounded", "configure_logging", "forever", "log_event", "sanic_log_config"]
