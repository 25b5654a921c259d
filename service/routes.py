"""HTTP routes beside the Socket.IO endpoint."""

from __future__ import annotations

from typing import Any

from sanic import Request, Sanic
from sanic.response import HTTPResponse, json

from service import __version__


def register(app: Sanic[Any, Any]) -> None:
    """Add the service's HTTP routes to ``app``."""

    @app.get("/healthz")
    async def healthz(request: Request) -> HTTPResponse:
        """The process is alive and its event loop answers."""
        return json({"status": "ok", "version": __version__})
