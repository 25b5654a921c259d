"""The typed values settings hold, and the rules that read them: :class:`Secret` (never shown),
:class:`Rate` (a limit), :class:`JwksEndpoint`, networks of trusted proxies, browser origins,
loopback hosts. Pure: what the checks and the environment reader build on."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from urllib.parse import urlsplit

Network = IPv4Network | IPv6Network


class Secret:
    """A string that shows as ``'**********'`` in reprs, logs and tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself; call this only where it is used."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class JwksEndpoint:
    """A JWKS URL and the one issuer whose tokens its keys may verify."""

    issuer: str
    url: str


@dataclass(frozen=True, slots=True)
class Rate:
    """``rate`` tokens per second, at most ``burst`` saved up. ``rate == 0`` means unlimited."""

    rate: float
    burst: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``"RATE:BURST"`` (``"30:120"``), ``"RATE"`` (burst = rate) or ``"0"`` (no limit)."""
        rate_text, _, burst_text = text.partition(":")
        rate = float(rate_text)
        burst = float(burst_text) if burst_text else rate
        if not (math.isfinite(rate) and math.isfinite(burst) and rate >= 0 and burst >= 0):
            raise ValueError("rate and burst must be finite numbers >= 0")
        if rate > 0 and burst < 1:
            raise ValueError("burst must be at least 1")
        return cls(rate, burst)

    @property
    def valid(self) -> bool:
        """Finite, not negative, and a burst of at least one when limited."""
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                      for v in (self.rate, self.burst))
        return (numbers and math.isfinite(self.rate) and math.isfinite(self.burst)
                and self.rate >= 0 and self.burst >= 0 and (self.rate == 0 or self.burst >= 1))

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def __str__(self) -> str:
        return "unlimited" if self.unlimited else f"{self.rate:g}/s, bursts of {self.burst:g}"


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """CIDR networks (a bare address is a /32 or /128)."""
    return tuple(ip_network(item.strip(), strict=False) for item in items if item.strip())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def normal_origin(item: str) -> str | None:
    """``scheme://host[:port]`` in lower case, ``*`` as is; None if it is not an origin."""
    if item == "*":
        return item
    parts = urlsplit(item)
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.path
            or parts.query or parts.fragment or parts.username):
        return None
    return f"{parts.scheme}://{parts.netloc.lower()}"
