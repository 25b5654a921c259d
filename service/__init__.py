"""WebRTC signaling over Socket.IO, authenticated with JWTs."""

__version__ = "0.1.0"
