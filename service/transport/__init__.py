"""The transport: every byte between a client and python-socketio's handlers.

- :mod:`service.transport.websocket`: ``Wire``, RFC 6455 framing on Sanic's transport;
- :mod:`service.transport.engine`: the Engine.IO layer (its route, sessions, queues, pings);
- :mod:`service.transport.server`: the Socket.IO server class (admission, packet checks, slow
  consumers);
- :mod:`service.transport.manager`: python-socketio's client manager, sending inline.

The only package that overrides python-engineio's, python-socketio's and Sanic's private
methods (``tests/test_library_pins.py`` pins each); it knows nothing of tokens, calls or
what an application event means (it checks event names and sizes, nothing else).
"""

from __future__ import annotations

from service.transport.engine import MAX_PACKETS_PER_POST
from service.transport.manager import InlineManager
from service.transport.server import SignalingServer
from service.transport.websocket import Wire, accept

__all__ = ["MAX_PACKETS_PER_POST", "InlineManager", "SignalingServer", "Wire", "accept"]
