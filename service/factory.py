"""``create_app(settings)``: the Sanic app with the Socket.IO server attached and wired."""

from __future__ import annotations

import gc
import logging
import os
from multiprocessing import Value
from typing import Any, Final

from engineio.payload import Payload
from sanic import Sanic

from service.auth import IceServers, TokenVerifier
from service.calls import (
    INCOMING,
    CallPolicy,
    CallRules,
    Calls,
    CallStore,
    EventLog,
    Lifecycle,
    LocalCallStore,
    LocalEventLog,
    Webhook,
)
from service.cluster import (
    ClusterDelivery,
    RedisCallStore,
    RedisEventLog,
    RedisLink,
    RedisPresence,
    SignedRedisManager,
)
from service.config import Settings, is_loopback
from service.delivery import Delivery, LocalDelivery, LocalPresence, Presence
from service.http import register_api, register_routes
from service.policy import Guard
from service.signaling import Signaling
from service.telemetry import Metrics, configure_logging, log_event, sanic_log_config
from service.transport import MAX_PACKETS_PER_POST, InlineManager, SignalingServer

SOCKETIO_PATH: Final = "socket.io"
#: room for the HTTP framing around one polling POST of ``max_message_bytes``
HTTP_OVERHEAD_BYTES: Final = 4096
#: how long a leaving node waits for the cluster messages already sent to it
FLUSH_SECONDS: Final = 3.0
#: the garbage collector's thresholds while serving (CPython's default: 700, 10, 10)
GC_THRESHOLDS: Final = (20_000, 20, 100)


def create_app(settings: Settings, *, name: str = "signaling") -> Sanic[Any, Any]:
    """Build the service from ``settings``; reads nothing from the environment."""
    logger = configure_logging(settings.log_level)
    # Engine.IO refuses a polling POST of more than 16 packets, a limit clients are never
    # told: they batch whatever queued up (one ICE gathering burst is often more than 16
    # events) and lose the whole batch. A POST of more than MAX_PACKETS_PER_POST is refused
    # (and its session closed) by the service's Engine.IO route before it is decoded; this is
    # the same bound where Engine.IO decodes. (A class attribute.)
    Payload.max_decode_packets = MAX_PACKETS_PER_POST
    app = Sanic(name, log_config=sanic_log_config())
    # polling clients would fill an access log with one line per long-poll; connect and
    # disconnect are logged by the service itself
    app.config.ACCESS_LOG = False
    # the message size, on both transports: Sanic refuses bigger websocket frames (close
    # 1009) and bigger request bodies (413) before they are read; Engine.IO checks both again
    app.config.WEBSOCKET_MAX_SIZE = settings.max_message_bytes
    app.config.REQUEST_MAX_SIZE = settings.max_message_bytes + HTTP_OVERHEAD_BYTES
    # leave room for our own graceful shutdown before Sanic cuts connections
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = settings.shutdown_timeout + 5

    metrics = Metrics()
    manager, presence, link = _cluster(settings, logger, metrics)
    sio = SignalingServer(
        log=logger,
        metrics=metrics,
        auth_timeout=settings.auth_timeout,
        max_queued=settings.max_queued_messages,
        send_timeout=settings.send_timeout,
        ping_interval=settings.ping_interval,
        ping_timeout=settings.ping_timeout,
        async_mode="sanic",
        client_manager=manager,
        # None = same origin only; "*" = any origin (development)
        cors_allowed_origins=list(settings.cors_origins) or None,
        # Socket.IO handlers run inline, not in a task of their own ...
        async_handlers=False,
        logger=False,
        engineio_logger=False,
        max_http_buffer_size=settings.max_message_bytes,
        # Engine.IO's per-session service task is replaced by one sweep over all sessions
        # (EngineServer.sweep, run by Sessions.start)
        monitor_clients=False,
    )
    # ... and Engine.IO too: each connection's messages are handled one after another, so a
    # sender's relays go out in the order they came in, with one task fewer per message
    sio.eio.async_handlers = False
    sio.attach(app, socketio_path=SOCKETIO_PATH)
    delivery: Delivery
    if isinstance(presence, RedisPresence):
        delivery = ClusterDelivery(sio, manager, presence)
    else:
        assert isinstance(presence, LocalPresence)
        delivery = LocalDelivery(sio, presence)
    webhook = _webhook(settings, logger, metrics)
    lifecycle = _lifecycle(settings, webhook, link, presence, logger, metrics)
    calls = Calls(CallRules(ring_timeout=settings.ring_timeout,
                            grace=settings.reconnect_grace, busy_policy=settings.busy_policy),
                  _call_store(settings, link, metrics, lifecycle), delivery, logger,
                  webhook if INCOMING in settings.webhook_events else None, metrics,
                  policy=_call_policy(settings, logger, metrics),
                  policy_fail_open=settings.call_policy_fail_open, lifecycle=lifecycle)
    verifier = TokenVerifier(settings, logger)
    for source in verifier.jwks.values():
        source.on_fetch = lambda ok: metrics.jwks_fetches.labels("ok" if ok else "failed").inc()
    if isinstance(manager, SignedRedisManager):
        # the device's node holds what reaches a socket of its that is closing
        manager.undelivered = calls.undelivered
    signaling = Signaling(sio, verifier, Guard(settings), presence,
                          delivery, calls, logger,
                          expiry_warning=settings.token_expiry_warning,
                          ice=IceServers(settings.ice_servers, settings.turn_urls,
                                         settings.turn_secret.reveal()
                                         if settings.turn_secret else None,
                                         settings.turn_ttl),
                          metrics=metrics)
    signaling.register()

    @app.main_process_start
    async def check_workers(app: Sanic[Any, Any]) -> None:
        workers = app.state.workers
        if workers > 1 and settings.redis_url is None:
            raise RuntimeError(
                f"{workers} workers need SIGNAL_REDIS_URL: without it each worker only knows "
                "its own clients, and calls between workers would silently fail.")
        app.shared_ctx.workers = Value("i", workers)
        host = app.state.host or "127.0.0.1"
        if settings.demo_tokens and not (app.state.unix or is_loopback(host)):
            raise RuntimeError(
                f"SIGNAL_DEMO_TOKENS=true while listening on {host}: dev tokens let anyone "
                "who reaches the service sign in as any user. Bind to 127.0.0.1 or set "
                "SIGNAL_DEMO_TOKENS=false.")

    previous_gc: list[int] = []

    @app.after_server_start
    async def start_background(app: Sanic[Any, Any]) -> None:
        shared = getattr(app.shared_ctx, "workers", None)
        workers = shared.value if shared is not None else 1
        if workers > 1 and not settings.sticky_sessions:
            # long-polling needs every request of a session on the same worker
            sio.eio.transports = ["websocket"]
        log_event(logger, "serving", workers=workers, transports=list(sio.eio.transports),
                  cluster="redis" if link else "memory")
        if settings.demo_tokens:
            log_event(logger, "demo_tokens_enabled", logging.WARNING,
                      detail="GET /demo/token mints a token for any user id (loopback "
                             "clients only); development only, never in production")
        await signaling.start()
        # what was made to start (modules, the app) is never garbage: out of the collector's
        # sight, and collections rarer, so a full one (which grows with every connection's
        # objects: ~0.5 s at 10,000 here) does not stall relays and handshakes every few s
        gc.freeze()
        previous_gc[:] = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLDS)

    @app.before_server_stop
    async def stop_background(app: Sanic[Any, Any]) -> None:
        # (a server made in a process that goes on, as the tests': all is as it was)
        gc.unfreeze()
        if previous_gc:
            gc.set_threshold(*previous_gc)
        await signaling.shutdown(settings.shutdown_timeout)
        await signaling.stop()  # (no longer counted online: nothing new is sent here)
        if link is not None:
            # what was sent to this node's sockets before that is held, not lost
            await manager.flush(FLUSH_SECONDS)
            await manager.close()
            await link.close()

    @app.after_server_stop
    async def forget_worker(app: Sanic[Any, Any]) -> None:
        metrics.worker_stopped(os.getpid())

    register_routes(app, signaling, settings, metrics)
    register_api(app, signaling, settings, metrics)
    app.ctx.settings = settings
    app.ctx.sio = sio
    app.ctx.signaling = signaling
    return app


def _call_store(settings: Settings, link: RedisLink | None, metrics: Metrics,
                lifecycle: Lifecycle | None) -> CallStore:
    """Open calls: in memory, or on Redis (cluster-wide) when SIGNAL_REDIS_URL is set; the
    lifecycle events of their changes go to ``lifecycle``'s log as they are committed."""
    log = lifecycle.log if lifecycle is not None else None
    if link is None:
        assert log is None or isinstance(log, LocalEventLog)
        return LocalCallStore(events=log)
    assert log is None or isinstance(log, RedisEventLog)
    return RedisCallStore(link, prefix=settings.redis_channel, metrics=metrics, events=log)


def _lifecycle(settings: Settings, webhook: Webhook | None, link: RedisLink | None,
               presence: Presence, logger: logging.Logger, metrics: Metrics,
               ) -> Lifecycle | None:
    """The lifecycle webhooks (SIGNAL_WEBHOOK_EVENTS beyond call.incoming), if any."""
    wanted = [e for e in settings.webhook_events if e != INCOMING]
    if webhook is None or not wanted:
        return None
    log: EventLog = (LocalEventLog(wanted) if link is None else
                     RedisEventLog(link, prefix=settings.redis_channel, wanted=wanted,
                                   retry_for=settings.webhook_retry_for,
                                   node_ttl=settings.node_ttl, metrics=metrics))
    return Lifecycle(log, webhook, presence, logger, grace=settings.reconnect_grace,
                     retry_for=settings.webhook_retry_for, metrics=metrics)


def _webhook(settings: Settings, logger: logging.Logger, metrics: Metrics) -> Webhook | None:
    if settings.webhook_url is None:
        return None
    assert settings.webhook_secret is not None  # Settings checks it
    return Webhook(settings.webhook_url.reveal(), settings.webhook_secret.reveal(), logger,
                   on_result=lambda result: metrics.webhooks.labels(result).inc())


def _call_policy(settings: Settings, logger: logging.Logger, metrics: Metrics,
                 ) -> CallPolicy | None:
    if settings.call_policy_url is None:
        return None
    assert settings.webhook_secret is not None  # Settings checks it
    return CallPolicy(settings.call_policy_url.reveal(), settings.webhook_secret.reveal(),
                      logger, cache=settings.call_policy_cache,
                      timeout=settings.call_policy_timeout,
                      on_result=lambda result: metrics.call_policy.labels(result).inc())


def _cluster(settings: Settings, logger: logging.Logger, metrics: Metrics,
             ) -> tuple[Any, Presence, RedisLink | None]:
    """The client manager and presence: in memory, or on Redis when SIGNAL_REDIS_URL is set."""
    if settings.redis_url is None:
        return InlineManager(), LocalPresence(), None
    assert settings.redis_secret is not None  # Settings checks it
    link = RedisLink(settings.redis_url.reveal(), max_connections=settings.redis_max_connections)
    manager = SignedRedisManager(link, channel=settings.redis_channel,
                                 secret=settings.redis_secret.reveal(), logger=logger,
                                 metrics=metrics)
    presence = RedisPresence(link, prefix=settings.redis_channel, ttl=settings.node_ttl,
                             logger=logger, receiving=lambda: manager.subscribed,
                             metrics=metrics)
    return manager, presence, link
