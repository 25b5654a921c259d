"""The ICE servers a client gets: the static list (``SIGNAL_ICE_SERVERS``, e.g. STUN) and,
with ``SIGNAL_TURN_URLS``, a TURN entry with short-lived credentials of coturn's REST
scheme (``use-auth-secret``): username ``<expiry>:<userID>``, credential
``base64(HMAC-SHA1(secret, username))``. The TURN server checks both with the shared secret
and refuses them after ``expiry`` (unix seconds), which is never later than the caller's own
token. Pure: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any


def turn_credential(secret: str, username: str) -> str:
    """coturn's REST API password for ``username``."""
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


@dataclass(frozen=True, slots=True)
class IceServers:
    """What ``GET /ice-servers`` and ``GetIceServers`` hand out."""

    static: tuple[dict[str, Any], ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: str | None = None
    turn_ttl: int = 3600

    def expiry(self, token_expires_at: int, now: float) -> int | None:
        """When TURN credentials handed out now expire (None: no TURN): their TTL ahead,
        or the token's ``exp``, whichever is first."""
        if not self.turn_urls or self.turn_secret is None:
            return None
        return min(int(now) + self.turn_ttl, int(token_expires_at))

    def refresh_at(self, token_expires_at: int, now: float) -> float | None:
        """When a connection given credentials now should get fresh ones, before they expire
        (a minute ahead, a third of the TTL at most); None when there is no TURN, or when the
        token expires first (a ``RefreshToken`` then brings fresh ones in its ack)."""
        expiry = self.expiry(token_expires_at, now)
        if expiry is None or expiry >= int(token_expires_at):
            return None
        return expiry - min(60.0, self.turn_ttl / 3)

    def for_user(self, user: str, token_expires_at: int, now: float) -> list[dict[str, Any]]:
        """The RTCIceServer list for ``user``, whose token expires at ``token_expires_at``."""
        servers = [dict(s) for s in self.static]
        expiry = self.expiry(token_expires_at, now)
        if expiry is not None and self.turn_secret is not None:
            username = f"{expiry}:{user}"
            servers.append({"urls": list(self.turn_urls), "username": username,
                            "credential": turn_credential(self.turn_secret, username)})
        return servers
