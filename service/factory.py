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
#: Engine.IO refuses a long-polling POST carrying more than 16 packets (and the client then
#: loses all of them); clients batch whatever queued up, and one ICE gathering burst is often
#: more than 16 events. The POST's byte size stays bounded by ``max_http_buffer_size``.
MAX_PACKETS_PER_POLL: Final = 256


def create_app(settings: Settings, *, name: str = "signaling") -> Sanic[Any, Any]:
    """Build the service from ``settings``; reads nothing from the environment."""
    logger = configure_logging(settings.log_level)
    Payload.max_decode_packets = MAX_PACKETS_PER_POLL  # a class attribute: process-wide
    app = Sanic(name)
    # polling clients would fill an access log with one line per long-poll; connect and
    # disconnect are logged by the service itself
    app.config.ACCESS_LOG = False
    sio = SignalingServer(
        async_mode="sanic",
        # None = same origin only; "*" = any origin (development)
        cors_allowed_origins=list(settings.cors_origins) or None,
        # handlers run inline in Engine.IO's per-message task: one task per event, in order
        async_handlers=False,
        logger=False,
        engineio_logger=False,
    )
    sio.attach(app, socketio_path=SOCKETIO_PATH)
    signaling = Signaling(sio, TokenVerifier(settings), logger)
    signaling.register()
    routes.register(app)
    app.ctx.settings = settings
    app.ctx.sio = sio
    app.ctx.signaling = signaling
    return app
