"""The HTTP side, where an operator looks: liveness and readiness, ``/metrics``,
``/ice-servers``, the AsyncAPI and OpenAPI documents (``specs/``, served as kept) and the demo
page (``static/``), all in :mod:`service.http.routes`; the server API for the app's backend
(``/api/v1/``) in :mod:`service.http.api`.
"""

from __future__ import annotations

from service.http.api import register_api
from service.http.routes import register_routes

__all__ = ["register_api", "register_routes"]
