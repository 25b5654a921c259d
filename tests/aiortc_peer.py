"""An aiortc WebRTC peer that signals through the service with a python-socketio client, the
way a Python app (a bot, a recorder, a test rig) would."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import socketio
from aiortc import (
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.sdp import candidate_from_sdp


class AiortcPeer:
    """One user: a Socket.IO connection (joined to its room) and at most one call."""

    def __init__(self, url: str, user: str, token: str, *, video: bool = False) -> None:
        self.url, self.user, self.token, self.video = url, user, token, video
        self.sio = socketio.AsyncClient(reconnection=False)
        self.pc: RTCPeerConnection | None = None
        self.peer: str | None = None
        self.call_id: str | None = None
        self.connected = asyncio.Event()
        self.messages: asyncio.Queue[str] = asyncio.Queue()
        self.hangups: asyncio.Queue[str] = asyncio.Queue()
        self.offers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.auto_answer = True
        self.offer_at = 0.0
        self.setup_ms: float | None = None
        self.sio.on("offer", self._on_offer)
        self.sio.on("answer", self._on_answer)
        self.sio.on("candidate", self._on_candidate)
        self.sio.on("hangup", self._on_hangup)

    async def connect(self) -> None:
        await self.sio.connect(self.url, auth={"token": self.token}, transports=["websocket"])
        assert await self.sio.call("JoinSocket", self.user) == {"ok": True}

    async def disconnect(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()
        if self.sio.eio.http is not None:
            await self.sio.eio.http.close()

    def _new_pc(self, peer: str) -> RTCPeerConnection:
        pc = RTCPeerConnection()
        self.pc, self.peer = pc, peer
        self.connected.clear()
        if self.video:
            pc.addTrack(VideoStreamTrack())

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "connected":
                self.setup_ms = (time.perf_counter() - self.offer_at) * 1000
                self.connected.set()

        @pc.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:
            channel.on("message", self.messages.put_nowait)

        return pc

    async def call(self, peer: str, *, data_channel: bool = True) -> RTCDataChannel | None:
        """Offer a call (with a data channel), the full SDP at once: aiortc gathers its
        candidates before ``setLocalDescription`` returns."""
        pc = self._new_pc(peer)
        channel = pc.createDataChannel("chat") if data_channel else None
        if channel is not None:
            channel.on("message", self.messages.put_nowait)
        await pc.setLocalDescription(await pc.createOffer())
        self.offer_at = time.perf_counter()
        offer = {"type": pc.localDescription.type, "sdp": pc.localDescription.sdp}
        ack = await self.sio.call("offer", {"to": peer, "offer": offer})
        assert ack["ok"] is True and ack["delivered"] is True, ack
        self.call_id = ack["callId"]
        return channel

    async def answer(self, message: dict[str, Any]) -> None:
        self.call_id = message["callId"]
        pc = self._new_pc(message["from"])
        self.offer_at = time.perf_counter()
        await pc.setRemoteDescription(RTCSessionDescription(**message["offer"]))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = {"type": pc.localDescription.type, "sdp": pc.localDescription.sdp}
        ack = await self.sio.call("answer", {"to": message["from"], "answer": answer})
        assert ack["ok"], ack

    async def _on_offer(self, message: dict[str, Any]) -> None:
        self.offers.put_nowait(message)
        if self.auto_answer:
            await self.answer(message)

    async def _on_answer(self, message: dict[str, Any]) -> None:
        if self.pc is not None and message["from"] == self.peer:
            await self.pc.setRemoteDescription(RTCSessionDescription(**message["answer"]))

    async def _on_candidate(self, message: dict[str, Any]) -> None:
        init = message["candidate"]
        if self.pc is None or message["from"] != self.peer or not init["candidate"]:
            return
        candidate = candidate_from_sdp(init["candidate"].split(":", 1)[1])
        candidate.sdpMid = init["sdpMid"]
        candidate.sdpMLineIndex = init["sdpMLineIndex"]
        await self.pc.addIceCandidate(candidate)

    async def _on_hangup(self, message: dict[str, Any]) -> None:
        self.hangups.put_nowait(message["from"])
        await self.close_call()

    async def hangup(self) -> None:
        if self.peer is not None:
            await self.sio.call("hangup", {"to": self.peer})
        await self.close_call()

    async def close_call(self) -> None:
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await self.pc.close()
        self.pc = None
