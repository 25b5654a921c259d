"""A stand-in identity provider for tests: a real HTTP server publishing JWKS documents, and
key pairs that sign tokens the way Auth0, Keycloak or Cognito would."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from service.auth.minting import PrivateKey, generate_key, public_jwk, public_pem, sign
from tests.support import free_socket


@dataclass
class IdpKey:
    """A private key, its kid and its public forms."""

    alg: str
    kid: str
    key: PrivateKey = field(repr=False)

    @classmethod
    def new(cls, alg: str, kid: str) -> IdpKey:
        return cls(alg, kid, generate_key(alg))

    @property
    def jwk(self) -> dict[str, Any]:
        return public_jwk(self.key, self.alg, self.kid)

    @property
    def pem(self) -> str:
        return public_pem(self.key)

    def token(self, user: str = "alice", *, iss: str | None = None, aud: str | None = None,
              ttl: int = 600, headers: dict[str, Any] | None = None, kid: str | None = "",
              **claims: Any) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {"sub": user, "iat": now, "exp": now + ttl}
        if iss is not None:
            payload["iss"] = iss
        if aud is not None:
            payload["aud"] = aud
        payload.update(claims)
        return sign(payload, self.key, self.alg, kid=self.kid if kid == "" else kid,
                    headers=headers)


class JwksServer:
    """Serves ``/<name>.json`` from ``documents``; counts requests per path; can be slowed
    down, made to fail, or to send each document in two parts (``split``, as a large set
    over TLS arrives); ``/moved/<name>.json`` redirects to it."""

    def __init__(self) -> None:
        self.documents: dict[str, dict[str, Any]] = {}
        self.hits: Counter[str] = Counter()
        self.delay = 0.0
        self.status = 200
        self.split = False
        self._runner: web.AppRunner | None = None
        self.base = ""

    def publish(self, name: str, *keys: IdpKey) -> str:
        """Serve ``keys`` as JWKS ``name``; returns its URL."""
        self.documents[name] = {"keys": [k.jwk for k in keys]}
        return self.url(name)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}.json"

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[name] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, text="unavailable")
        if name not in self.documents:
            return web.Response(status=404)
        if not self.split:
            return web.json_response(self.documents[name])
        body = json.dumps(self.documents[name]).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(body[:len(body) // 2])
        await asyncio.sleep(0.05)  # (so the two parts are read apart)
        await response.write(body[len(body) // 2:])
        await response.write_eof()
        return response

    async def _moved(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/{request.match_info['name']}.json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{name}.json", self._serve)
        app.router.add_get("/moved/{name}.json", self._moved)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = free_socket()
        site = web.SockSite(self._runner, sock)
        await site.start()
        self.base = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
