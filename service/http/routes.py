"""HTTP routes beside the Socket.IO endpoint: liveness and readiness for load balancers and
orchestrators, ICE servers for clients, and the demo page."""

from __future__ import annotations

import hmac
import time
from importlib import resources
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from sanic import Request, Sanic
from sanic.response import HTTPResponse, json, raw, redirect

from service import __version__
from service.auth import extract_token, mint
from service.config import Settings, is_loopback
from service.errors import AuthError, InvalidPayload, ServiceUnavailable, Throttled
from service.protocol import parse_user_id
from service.telemetry import CONTENT_TYPE, Metrics

if TYPE_CHECKING:
    from service.signaling import Signaling

#: the demo page may talk to its own origin only (and show camera streams); 'self' covers
#: its own origin's ws:/wss: too (CSP Level 3), not any websocket host
DEMO_CSP: Final = ("default-src 'self'; connect-src 'self'; img-src 'self' data:; "
                   "media-src 'self' blob: mediastream:; style-src 'self' 'unsafe-inline'; "
                   "frame-ancestors 'none'")
DEMO_FILES: Final = {"demo.js": "text/javascript", "socket.io.min.js": "text/javascript"}
DEV_TOKEN_TTL: Final = 3600
#: the protocol's specs, kept in service/http/specs/ and served as they are
SPECS: Final = ("asyncapi.json", "openapi.json")


def register_routes(app: Sanic[Any, Any], signaling: Signaling, settings: Settings,
                    metrics: Metrics) -> None:
    """Add the service's HTTP routes to ``app``."""

    specs = resources.files("service.http") / "specs"
    documents = {name: (specs / name).read_bytes() for name in SPECS}

    @app.get("/asyncapi.json", name="asyncapi")
    async def asyncapi(request: Request) -> HTTPResponse:
        """The AsyncAPI 3 document of the Socket.IO events (service/http/specs/asyncapi.json)."""
        return raw(documents["asyncapi.json"], content_type="application/json")

    @app.get("/openapi.json", name="openapi")
    async def openapi(request: Request) -> HTTPResponse:
        """The OpenAPI 3.1 document of these HTTP routes (service/http/specs/openapi.json)."""
        return raw(documents["openapi.json"], content_type="application/json")

    @app.get("/metrics")
    async def metrics_page(request: Request) -> HTTPResponse:
        """Prometheus metrics (:mod:`service.telemetry.metrics`), every worker's; with
        SIGNAL_METRICS_TOKEN set, only for ``Authorization: Bearer <that token>``."""
        if settings.metrics_token is not None:
            given = request.headers.get("authorization", "")
            expected = "Bearer " + settings.metrics_token.reveal()
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return json({"error": "unauthorized"}, status=401,
                            headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        return raw(metrics.expose(), content_type=CONTENT_TYPE,
                   headers={"Cache-Control": "no-store"})

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

    @app.get("/ice-servers")
    async def ice_servers(request: Request) -> HTTPResponse:
        """The RTCIceServer list (SIGNAL_ICE_SERVERS, and a TURN entry with credentials
        minted for the token's user, see :mod:`service.auth.turn`) for a client with a valid
        token: TURN credentials are not for everyone. Failed tokens spend the address's
        authentication budget, the one Socket.IO connects spend (no second door to test
        tokens at)."""
        guard = signaling.guard
        ip = guard.client_ip(str(request.ip), request.headers.get("x-forwarded-for"))
        if not guard.may_authenticate(ip):
            return json({"error": Throttled.code, "reason": Throttled.reason}, status=429,
                        headers={"Retry-After": "5"})
        try:
            token = extract_token(None, request.headers.get("authorization"))
            identity = await signaling.verifier.verify(token)
        except AuthError as exc:
            guard.authentication_failed(ip)
            metrics.auth_failures.labels(exc.reason).inc()
            return json({"error": exc.code, "reason": exc.reason}, status=401,
                        headers={"WWW-Authenticate": "Bearer"})
        except ServiceUnavailable as exc:  # the token's issuer has no keys yet: retry
            return json({"error": exc.code, "reason": exc.reason}, status=503,
                        headers={"Retry-After": "1"})
        servers = signaling.ice.for_user(identity.user_id, identity.expires_at, time.time())
        return json({"iceServers": servers}, headers={"Cache-Control": "no-store"})

    if settings.demo:
        _register_demo(app, settings)


def _register_demo(app: Sanic[Any, Any], settings: Settings) -> None:
    static = resources.files("service.http") / "static"
    page = (static / "demo.html").read_bytes()
    files = {name: (static / name).read_bytes() for name in DEMO_FILES}

    @app.get("/demo", strict_slashes=True)
    async def demo_redirect(request: Request) -> HTTPResponse:
        return redirect("/demo/")

    @app.get("/demo/", strict_slashes=True)
    async def demo_page(request: Request) -> HTTPResponse:
        """A two-party video call on this service, for trying it out."""
        return raw(page, content_type="text/html; charset=utf-8",
                   headers={"Content-Security-Policy": DEMO_CSP,
                            "X-Content-Type-Options": "nosniff"})

    @app.get("/demo/<name:str>")
    async def demo_file(request: Request, name: str) -> HTTPResponse:
        if name == "config":
            return json({"devTokens": settings.demo_tokens,
                         "userClaim": settings.jwt_user_claim})
        if name == "token":
            return _dev_token(request, settings)
        if name not in files:
            return json({"error": "not_found"}, status=404)
        return raw(files[name], content_type=DEMO_FILES[name],
                   headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


def _dev_token(request: Request, settings: Settings) -> HTTPResponse:
    """Development only (SIGNAL_DEMO_TOKENS): a token for any user id, for the demo page of
    the same origin, to a browser on this machine (a production process would otherwise
    mint tokens for anyone with the production secret)."""
    if not settings.demo_tokens:
        return json({"error": "not_found"}, status=404)
    if not _from_this_machine(request):
        return json({"error": "forbidden", "detail": "dev tokens are for loopback clients"},
                    status=403)
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        return json({"error": "forbidden"}, status=403)
    try:
        user = parse_user_id(request.args.get("user"), "user")
    except InvalidPayload as exc:
        return json({"error": exc.code, "detail": str(exc)}, status=400)
    claims = {settings.jwt_user_claim: user} if settings.jwt_user_claim != "sub" else None
    return json({"token": mint(settings, user, DEV_TOKEN_TTL, claims=claims)},
                headers={"Cache-Control": "no-store"})


def _from_this_machine(request: Request) -> bool:
    """A loopback TCP peer that is not a proxy forwarding someone else."""
    forwarded = any(name in request.headers for name in ("x-forwarded-for", "forwarded",
                                                         "x-real-ip"))
    return not forwarded and is_loopback(str(request.ip))
