"""The Socket.IO side of the service: the event handlers, and the connections they serve.

- :mod:`service.signaling.handlers`: ``Signaling``, the handlers: parse → check → hand the
  relay to the calls → ack;
- :mod:`service.signaling.sessions`: the session registry and life cycle (token timers,
  revocation, server-side closes, draining at shutdown, readiness);
- :mod:`service.signaling.control`: ``Control``, what the app's backend may do through the
  server API (presence, disconnect and revoke, notify, calls), cluster-wide.
"""

from __future__ import annotations

from service.signaling.control import Control
from service.signaling.handlers import OUTCOMES, Signaling

__all__ = ["OUTCOMES", "Control", "Signaling"]
