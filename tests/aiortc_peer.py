"""An aiortc WebRTC peer that signals through the service with a python-socketio client, the
way a Python app (a bot, a recorder, a test rig) would: it drops a message of its call whose
``seq`` it has handled, and after a reconnect claims its call.

aiortc has no ICE restart (aiortc/aiortc#211): :meth:`AiortcPeer.restart` renegotiates the
call with a fresh peer connection on each end (new ICE credentials, a new DTLS session), which
is what an aiortc app does after a network change; to the service it is the same renegotiating
offer and answer inside the call."""

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
        self.sio = self._client()
        self.stale: socketio.AsyncClient | None = None  # a socket left behind by reconnect()
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
        self.last_seq: dict[str, int] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self.repeats = 0
        # what was dropped as a repeat, by event: ("offer", message), ...
        self.repeated: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.frames = 0

    def _client(self) -> socketio.AsyncClient:
        sio = socketio.AsyncClient(reconnection=False)
        for event, handler in (("offer", self._on_offer), ("answer", self._on_answer),
                               ("candidate", self._on_candidate), ("hangup", self._on_hangup)):
            sio.on(event, self._once(event, handler))
        return sio

    def _once(self, event: str, handler: Any) -> Any:
        """``handler``, skipping a message of a call whose seq was handled already (a claim
        sends again what the earlier socket may have missed)."""
        async def handle(message: dict[str, Any]) -> None:
            call_id, seq = message.get("callId"), message.get("seq")
            if isinstance(call_id, str) and isinstance(seq, int):
                if seq <= self.last_seq.get(call_id, 0):
                    self.repeats += 1
                    self.repeated.put_nowait((event, message))
                    return
                self.last_seq[call_id] = seq
            await handler(message)
        return handle

    async def connect(self) -> None:
        await self.sio.connect(self.url, auth={"token": self.token}, transports=["websocket"])
        assert await self.sio.call("JoinSocket", self.user) == {"ok": True}

    async def reconnect(self, url: str) -> dict[str, Any]:
        """Connect again on a new connection (the old socket may be half-dead: it is left to
        the service, which closes it on the claim), claim the call, then join (claimed
        first, what was held comes after what the claim sends again)."""
        self.stale, self.sio, self.url = self.sio, self._client(), url
        await self.sio.connect(self.url, auth={"token": self.token}, transports=["websocket"])
        assert self.call_id is not None
        ack: dict[str, Any] = await self.sio.call("ClaimCall", {
            "callId": self.call_id, "lastSeq": self.last_seq.get(self.call_id, 0)})
        assert await self.sio.call("JoinSocket", self.user) == {"ok": True}
        return ack

    async def disconnect(self) -> None:
        for sio in (self.sio, self.stale):
            if sio is None:
                continue
            if sio.connected:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sio.disconnect(), 5)
            if sio.eio.http is not None:
                await sio.eio.http.close()

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

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "video":
                self._tasks.add(asyncio.ensure_future(self._count_frames(track)))

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

    async def _count_frames(self, track: Any) -> None:
        with contextlib.suppress(Exception):
            while True:
                await track.recv()
                self.frames += 1

    async def restart(self) -> dict[str, Any]:
        """Renegotiate the call on a fresh peer connection (aiortc's ICE restart): the old
        one is closed, the offer goes in the same call."""
        assert self.peer is not None and self.call_id is not None
        await self.close_call()
        pc = self._new_pc(self.peer)
        await pc.setLocalDescription(await pc.createOffer())
        self.offer_at = time.perf_counter()
        offer = {"type": pc.localDescription.type, "sdp": pc.localDescription.sdp}
        ack: dict[str, Any] = await self.sio.call(
            "offer", {"to": self.peer, "callId": self.call_id, "offer": offer})
        return ack

    async def answer(self, message: dict[str, Any]) -> None:
        if self.pc is not None:  # a renegotiation in the call: a fresh peer connection
            await self.close_call()
        self.call_id = message["callId"]
        pc = self._new_pc(message["from"])
        self.offer_at = time.perf_counter()
        await pc.setRemoteDescription(RTCSessionDescription(**message["offer"]))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = {"type": pc.localDescription.type, "sdp": pc.localDescription.sdp}
        ack = await self.sio.call("answer", {"to": message["from"], "callId": self.call_id,
                                             "answer": answer})
        assert ack["ok"], ack

    async def _on_offer(self, message: dict[str, Any]) -> None:
        self.offers.put_nowait(message)
        if self.auto_answer or (self.pc is not None and message["callId"] == self.call_id):
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
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await self.pc.close()
        self.pc = None
