"""``create_app(settings)``: the Sanic app with the Socket.IO server attached and wired."""

from __future__ import annotations

from typing import Any, Final

from engineio.payload import Payload
from sanic import Sanic

from service import routes
from service.auth import TokenVerifier
from service.config import Settings
from service.logs import configure_logging
from service.signaling import Signaling
from service.socket_server import SignalingServer

SOCKETIO_PATH: Final = "socket.io"
#: Engine.IO bytes accepted per long-polling POST (its default). It is advertised to clients
#: as ``maxPayload``, and socket.io-client splits its batches to fit.
MAX_POLL_BYTES: Final = 1_000_000


def create_app(settings: Settings, *, name: str = "signaling") -> Sanic[Any, Any]:
    """Build the service from ``settings``; reads nothing from the environment."""
    logger = configure_logging(settings.log_level)
    # Engine.IO also refuses a POST of more than 16 packets, a limit clients are never told:
    # they batch whatever queued up (one ICE gathering burst is often more than 16 events)
    # and lose the whole batch. The advertised byte limit is the real bound, and it implies
    # at most one packet per byte. (A class attribute: process-wide.)
    Payload.max_decode_packets = MAX_POLL_BYTES
    app = Sanic(name)
    # polling clients would fill an access log with one line per long-poll; connect and
    # disconnect are logged by the service itself
    app.config.ACCESS_LOG = False
    sio = SignalingServer(
        async_mode="sanic",
        # None = same origin only; "*" = any origin (development)
        cors_allowed_origins=list(settings.cors_origins) or None,
        # Socket.IO handlers run inline, not in a task of their own ...
        async_handlers=False,
        logger=False,
        engineio_logger=False,
        max_http_buffer_size=MAX_POLL_BYTES,
    )
    # ... and Engine.IO too: each connection's messages are handled one after another, so a
    # sender's relays go out in the order they came in, with one task fewer per message
    sio.eio.async_handlers = False
    sio.attach(app, socketio_path=SOCKETIO_PATH)
    signaling = Signaling(sio, TokenVerifier(settings, logger), logger,
                          expiry_warning=settings.token_expiry_warning)
    signaling.register()

    @app.after_server_start
    async def start_background(app: Sanic[Any, Any]) -> None:
        await signaling.start()

    @app.before_server_stop
    async def stop_background(app: Sanic[Any, Any]) -> None:
        await signaling.stop()

    routes.register(app)
    app.ctx.settings = settings
    app.ctx.sio = sio
    app.ctx.signaling = signaling
    return app
