"""The Socket.IO side of the service: the event handlers, and the connections they serve.

- :mod:`service.signaling.handlers`: ``Signaling``, the handlers: parse → check → hand the
  relay to the calls → ack;
- :mod:`service.signaling.sessions`: the session registry and life cycle (token timers,
  revocation, server-side closes, draining at shutdown, readiness).
"""

from __future__ import annotations

from service.signaling.handlers import OUTCOMES, Signaling

__all__ = ["OUTCOMES", "Signaling"]
