"""HTTP routes beside the Socket.IO endpoint: liveness and readiness, for load balancers
and orchestrators."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sanic import Request, Sanic
from sanic.response import HTTPResponse, json

from service import __version__

if TYPE_CHECKING:
    from service.signaling import Signaling


def register(app: Sanic[Any, Any], signaling: Signaling) -> None:
    """Add the service's HTTP routes to ``app``."""

    @app.get("/healthz")
    async def healthz(request: Request) -> HTTPResponse:
        """200 while the process is alive and its event loop answers."""
        return json({"status": "ok", "version": __version__})

    @app.get("/readyz")
    async def readyz(request: Request) -> HTTPResponse:
        """200 when this node should get traffic; 503 while Redis (when configured) cannot
        be reached or while it is shutting down."""
        ready, reason = await signaling.ready()
        return json({"status": "ready" if ready else "not_ready", "reason": reason,
                     "connections": len(signaling.sessions)}, status=200 if ready else 503)
