"""Prometheus metrics (``GET /metrics``, prometheus-client's text format).

Labels are bounded: event names (the protocol's, else ``other``), error codes, refusal and
disconnect reasons (the service's own codes, else ``other``), transports, limit classes.
Never a user id, sid, address or free text.

With several Sanic workers every worker counts in its own files under
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode; ``service.app`` sets a
fresh directory up before the workers start) and whichever worker answers a scrape sums
them all: each worker is counted once. Without that variable (one process, the tests) each
:class:`Metrics` has a registry of its own.
"""

from __future__ import annotations

import os
import platform
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from service import __version__

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: relay handling time buckets, seconds (50 µs to 250 ms)
RELAY_BUCKETS: Final = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                        0.05, 0.1, 0.25)
#: python-socketio's own disconnect reasons (the service's are its error codes)
LIBRARY_REASONS: Final = frozenset({
    "client namespace disconnect", "server namespace disconnect", "transport close",
    "transport error", "ping timeout", "client disconnect", "server disconnect"})


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def bounded(value: str, allowed: Iterable[str], other: str = "other") -> str:
    """``value`` when it is one of ``allowed``, else ``other``: labels never grow with
    what clients send."""
    return value if value in allowed else other


class Metrics:
    """Every metric the service exports (see the module docstring)."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        self.registry = CollectorRegistry()
        # in multiprocess mode the values live in files; nothing is registered here
        reg = None if self.multiprocess else self.registry
        self.connections = Gauge(
            "signaling_connections", "Socket.IO connections now, by transport",
            ["transport"], registry=reg, multiprocess_mode="livesum")
        self.connects = Counter(
            "signaling_connects", "Socket.IO connection attempts, by result (ok or the "
            "refusal reason)", ["result"], registry=reg)
        self.disconnects = Counter(
            "signaling_disconnects", "Connections ended, by reason", ["reason"], registry=reg)
        self.auth_failures = Counter(
            "signaling_auth_failures", "Tokens refused (connects, /ice-servers, "
            "RefreshToken), by reason", ["reason"], registry=reg)
        self.events = Counter(
            "signaling_events", "Client events handled, by name and outcome (ok or the error "
            "code)", ["event", "outcome"], registry=reg)
        self.relays = Counter(
            "signaling_relays", "Accepted relays, by result: delivered, held (for a party "
            "that is away or offline), not_delivered", ["result"], registry=reg)
        self.relay_seconds = Histogram(
            "signaling_relay_seconds", "Relay handling time: handler entry to the emit of "
            "the relayed message", registry=reg, buckets=RELAY_BUCKETS)
        self.rate_limited = Counter(
            "signaling_rate_limited", "Refusals by a rate limit, by class (relay, room, "
            "refresh, other, connect, packets, strike_out)", ["limit"], registry=reg)
        self.jwks_fetches = Counter(
            "signaling_jwks_fetches", "JWKS fetches, by result (ok, failed)", ["result"],
            registry=reg)
        self.redis_errors = Counter(
            "signaling_redis_errors", "Redis operations that failed, by operation "
            "(presence, publish, subscribe, calls)", ["operation"], registry=reg)
        self.cluster_dropped = Counter(
            "signaling_cluster_messages_dropped", "Cluster messages dropped, by why "
            "(malformed, bad_signature, stale, replayed)", ["why"], registry=reg)
        self.slow_consumer_drops = Counter(
            "signaling_slow_consumer_drops", "Connections closed for not reading what they "
            "were sent, by reason (send_timeout, slow_consumer)", ["reason"], registry=reg)
        self.repeats = Counter(
            "signaling_repeated_signals", "Signals whose signalId was sent before (a client's "
            "retry): acked as the first, not relayed again", registry=reg)
        self.calls_opened = Counter(
            "signaling_calls_opened", "Calls opened", registry=reg)
        self.calls_ended = Counter(
            "signaling_calls_ended", "Calls ended, by reason (hangup, timeout, peer_gone)",
            ["reason"], registry=reg)
        self.webhooks = Counter(
            "signaling_webhooks", "call.incoming webhook deliveries, by result (delivered, "
            "refused, failed, retry, stopped)", ["result"], registry=reg)
        self.webhook_events = Counter(
            "signaling_webhook_events", "Lifecycle webhook events, by type and result "
            "(delivered; refused: a 3xx/4xx answer; retry; undeliverable: given up after "
            "SIGNAL_WEBHOOK_RETRY_FOR; dropped: past the in-memory bound; lost: queued in "
            "memory at shutdown)", ["type", "result"], registry=reg)
        self.call_policy = Counter(
            "signaling_call_policy", "Answers of the call permission hook, by result "
            "(allowed, denied: asked now or kept; no_answer; caller_busy)", ["result"],
            registry=reg)
        self.api_requests = Counter(
            "signaling_api_requests", "Server API requests (/api/v1/), by operation and "
            "HTTP status", ["operation", "status"], registry=reg)
        self.build_info = Gauge(
            "signaling_build_info", "Version of the service and of Python",
            ["version", "python"], registry=reg, multiprocess_mode="max")
        self.build_info.labels(__version__, platform.python_version()).set(1)
        # The per-event counts are kept here and added to the metrics by :meth:`flush`
        # (every second, and before each scrape): in multiprocess mode every increment is
        # a locked write to a memory-mapped file, ~0.8 µs, and a histogram observation two
        # of them; per relay that was ~10 % of the service's CPU.
        self._events: dict[tuple[str, str], int] = {}
        self._relays: dict[str, int] = {}
        self._bounds = RELAY_BUCKETS
        self._relay_buckets = [0] * (len(RELAY_BUCKETS) + 1)  # the last one: +Inf
        self._relay_sum = 0.0
        #: brings the gauges up to date before a scrape (the connection count)
        self.on_scrape: Callable[[], None] | None = None

    def event(self, event: str, outcome: str) -> None:
        """Count one client event (labels already bounded)."""
        key = (event, outcome)
        self._events[key] = self._events.get(key, 0) + 1

    def relay(self, result: str, seconds: float) -> None:
        """Count one accepted relay and how long it took."""
        self._relays[result] = self._relays.get(result, 0) + 1
        self._relay_buckets[bisect_left(self._bounds, seconds)] += 1
        self._relay_sum += seconds

    def flush(self) -> None:
        """Add what :meth:`event` and :meth:`relay` counted to the exported metrics."""
        events, self._events = self._events, {}
        for (event, outcome), count in events.items():
            self.events.labels(event, outcome).inc(count)
        relays, self._relays = self._relays, {}
        for result, count in relays.items():
            self.relays.labels(result).inc(count)
        if any(self._relay_buckets):
            # prometheus-client keeps a histogram's buckets non-cumulative, one value each
            # (+Inf last), and its sum (pinned in tests/test_library_pins.py)
            buckets, self._relay_buckets = self._relay_buckets, [0] * len(self._relay_buckets)
            for value, count in zip(self.relay_seconds._buckets, buckets, strict=True):
                if count:
                    value.inc(count)
            self.relay_seconds._sum.inc(self._relay_sum)
            self._relay_sum = 0.0

    def session_dropped(self, reason: str) -> None:
        """An Engine.IO session was closed by the service, with ``reason``."""
        if reason in ("slow_consumer", "send_timeout"):
            self.slow_consumer_drops.labels(reason).inc()
        elif reason in ("rate_limited", "too_many_packets"):
            self.rate_limited.labels("packets").inc()

    def expose(self) -> bytes:
        """The text exposition: this registry, or (several workers) every worker's files."""
        if self.on_scrape is not None:
            self.on_scrape()
        self.flush()
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def worker_stopped(self, pid: int) -> None:
        """A worker is gone: its connection gauge no longer counts."""
        self.flush()
        path = multiprocess_dir()
        if path is not None:
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
