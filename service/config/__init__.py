"""Settings: the frozen :class:`Settings`, every check on it, and reading it from the
environment.

- :mod:`service.config.values`: the typed values a setting holds (``Secret``, ``Rate``, ...);
- :mod:`service.config.fields`: the ``SIGNAL_`` variable of each field, bounds, help texts;
- :mod:`service.config.environment`: ``SIGNAL_*`` text (and ``.env``) into typed values;
- :mod:`service.config.settings`: ``Settings``, its checks, ``Settings.from_env()``.

Imports go one way, values ← fields ← environment ← settings: nothing here imports a module
that imports it.
"""

from __future__ import annotations

from service.config.fields import WEBHOOK_EVENTS
from service.config.settings import BUSY_POLICIES, KNOWN, REJECT, RING, Settings
from service.config.values import (
    JwksEndpoint,
    Network,
    Rate,
    Secret,
    is_loopback,
    parse_networks,
)

__all__ = ["BUSY_POLICIES", "KNOWN", "REJECT", "RING", "WEBHOOK_EVENTS", "JwksEndpoint",
           "Network", "Rate", "Secret", "Settings", "is_loopback", "parse_networks"]
