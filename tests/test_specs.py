"""The specs cannot drift: every event, error code and route the service implements is in
service/http/specs/ (AsyncAPI 3, OpenAPI 3.1), both are served as they are, and real payloads a
session sends and receives, and real HTTP answers, validate against them (jsonschema)."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from service import __version__, errors
from service.config import Rate, Secret, Settings
from service.protocol import RELAY_EVENTS
from service.signaling import OUTCOMES
from service.telemetry import LIBRARY_REASONS
from tests.support import (
    SECRET,
    Peer,
    RunningService,
    answer_to,
    candidate_to,
    offer_to,
    refusal,
    serving,
)

ROOT = Path(__file__).resolve().parent.parent
ASYNCAPI = json.loads((ROOT / "service" / "http" / "specs" / "asyncapi.json").read_text())
OPENAPI = json.loads((ROOT / "service" / "http" / "specs" / "openapi.json").read_text())
#: events the service emits itself (besides the relays)
SERVICE_EVENTS = {"token_expiring", "server_disconnect", "ice_servers"}


def message_validator(message: str) -> Draft202012Validator:
    """The payload schema of AsyncAPI message ``message`` (refs resolved in the document)."""
    return Draft202012Validator({"$ref": f"#/components/messages/{message}/payload",
                                 "components": ASYNCAPI["components"]})


def check(message: str, payload: Any) -> None:
    errors_found = sorted(e.message for e in message_validator(message).iter_errors(payload))
    assert not errors_found, (message, payload, errors_found)


def check_http(path: str, method: str, status: int, body: Any) -> None:
    response = OPENAPI["paths"][path][method]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**schema, "components": OPENAPI["components"]})
    errors_found = sorted(e.message for e in validator.iter_errors(body))
    assert not errors_found, (path, status, body, errors_found)


def _names(action: str) -> set[str]:
    names = set()
    for operation in ASYNCAPI["operations"].values():
        if operation["action"] == action:
            for ref in operation["messages"]:
                key = ref["$ref"].rsplit("/", 1)[1]
                names.add(ASYNCAPI["components"]["messages"][key]["name"])
    return names


def test_both_documents_are_valid_shapes_and_versions() -> None:
    assert ASYNCAPI["asyncapi"] == "3.0.0" and OPENAPI["openapi"] == "3.1.0"
    assert ASYNCAPI["info"]["version"] == OPENAPI["info"]["version"] == __version__
    for doc in (ASYNCAPI, OPENAPI):
        for schema in doc["components"]["schemas"].values():
            Draft202012Validator.check_schema(schema)


async def test_every_event_the_service_handles_is_specified(service: RunningService) -> None:
    """The handlers registered on the server, and the events the service emits, each have
    their operation."""
    handled = set(service.app.ctx.signaling._handlers)
    assert handled <= _names("receive"), handled - _names("receive")
    source = "\n".join(p.read_text() for p in (ROOT / "service").rglob("*.py"))
    emitted = set(re.findall(r'\.emit\("([A-Za-z_]+)"', source))
    assert emitted == SERVICE_EVENTS, emitted
    assert SERVICE_EVENTS | set(RELAY_EVENTS) <= _names("send")


def test_every_error_code_and_reason_is_specified() -> None:
    """Every code an event can be refused with, every connection refusal reason, the
    service-originated hangup reasons, and the disconnect reasons sent to clients."""
    schemas = ASYNCAPI["components"]["schemas"]
    request_codes = {cls.code for _, cls in inspect.getmembers(errors, inspect.isclass)
                     if issubclass(cls, errors.RequestError) and cls is not errors.RequestError}
    auth_reasons = {cls.reason for _, cls in inspect.getmembers(errors, inspect.isclass)
                    if issubclass(cls, errors.AuthError)}
    error_codes = set(schemas["ErrorCode"]["enum"])
    assert request_codes | auth_reasons | {"internal_error"} <= error_codes
    assert error_codes == OUTCOMES - {"ok"}  # the metrics' outcomes are the same codes
    refusals = {cls.reason for _, cls in inspect.getmembers(errors, inspect.isclass)
                if issubclass(cls, errors.ConnectionRefused)} - {"refused"}
    assert refusals | {"internal_error"} == set(schemas["RefusalReason"]["enum"])
    from service import calls

    hangups = {calls.TIMEOUT, calls.ANSWERED_ELSEWHERE, calls.DECLINED_ELSEWHERE,
               calls.PEER_GONE, calls.BUSY, calls.ENDED_BY_SERVER}
    assert hangups == set(schemas["ServiceHangup"]["properties"]["reason"]["enum"])
    assert not set(schemas["ServerDisconnect"]["properties"]["reason"]["anyOf"][0]["enum"]) & (
        LIBRARY_REASONS)


def test_every_webhook_event_is_specified() -> None:
    """openapi.json's webhooks name every event SIGNAL_WEBHOOK_EVENTS can choose."""
    from service.config import WEBHOOK_EVENTS

    schemas = OPENAPI["components"]["schemas"]
    lifecycle = set(schemas["LifecycleEvent"]["properties"]["type"]["enum"])
    assert lifecycle | {schemas["IncomingCall"]["properties"]["type"]["const"]} == set(
        WEBHOOK_EVENTS)
    assert set(OPENAPI["webhooks"]) == {"callIncoming", "lifecycleEvent"}


def test_every_route_is_specified() -> None:
    from service.factory import create_app

    app = create_app(Settings(jwt_secret=Secret(SECRET), demo=True, demo_tokens=True,
                              api_keys=(Secret("k" * 32),)),
                     name="spec_routes")
    for route in app.router.routes:
        path = "/" + re.sub(r"<(\w+):\w+>", r"{\1}", route.path)
        path = "/socket.io/" if path == "/socket.io" else path
        assert path in OPENAPI["paths"], path
        for method in route.methods - {"OPTIONS", "HEAD"}:
            assert method.lower() in OPENAPI["paths"][path], (path, method)


async def test_served_as_kept(service: RunningService) -> None:
    async with aiohttp.ClientSession() as http:
        for name, doc in (("asyncapi.json", ASYNCAPI), ("openapi.json", OPENAPI)):
            async with http.get(f"{service.url}/{name}") as response:
                assert response.status == 200
                assert await response.json() == doc


async def test_real_payloads_validate(transport: str) -> None:
    """A session through most of the protocol; everything sent and received, acks
    included, validates against its AsyncAPI message; HTTP answers against OpenAPI."""
    settings = Settings(jwt_secret=Secret(SECRET), ring_timeout=1, token_expiry_warning=1,
                        limit_ip_connects=Rate(0, 0),
                        ice_servers=({"urls": "stun:stun.example.com:3478"},))
    async with serving(settings) as service:
        made: list[Peer] = []

        async def peer(user: str, ttl: int = 600) -> Peer:
            p = Peer(service.url, transport)
            made.append(p)
            auth = {"token": service.token(user, ttl=ttl)}
            check("connect", auth)
            await p.connect(auth=auth)
            join = await p.call("JoinSocket", user)
            check("joinSocket", user)
            check("okAck", join)
            return p

        async def send(p: Peer, event: str, message: str, payload: Any, ack: str) -> Any:
            check(message, payload)
            answer = await p.call(event, payload)
            check(ack, answer)
            return answer

        try:
            check("connectError", await refusal(service.url, transport, token="nope"))
            alice, bob, carol = await peer("alice"), await peer("bob"), await peer("carol")
            ack = await send(alice, "offer", "offer", offer_to("bob"), "relayAck")
            check("relayedOffer", await bob.next_raw("offer"))
            check("errorAck", await bob.call("offer", offer_to("alice")))  # glare
            check("errorAck", await carol.call("offer", offer_to("bob")))  # busy
            check("relayedHangup", await carol.next_raw("hangup"))  # busy, for ack-less clients
            check("errorAck", await carol.call("candidate", candidate_to("bob")))
            await send(alice, "candidate", "candidate", candidate_to("bob"), "relayAck")
            check("relayedCandidate", await bob.next_raw("candidate"))
            await send(bob, "answer", "answer", answer_to("alice", callId=ack["callId"]),
                       "relayAck")
            check("relayedAnswer", await alice.next_raw("answer"))
            await bob.close()
            await send(alice, "candidate", "candidate", candidate_to("bob"), "relayAck")
            await send(alice, "hangup", "hangup", {"to": "bob", "reason": "bye"}, "relayAck")
            await send(carol, "offer", "offer", offer_to("dave"), "relayAck")  # offline
            check("relayedHangup", await carol.next_raw("hangup", within=10))  # timeout
            await send(carol, "GetIceServers", "getIceServers", None, "iceServersAck")
            check("errorAck", await carol.call("GetIceServers", [1]))
            await send(carol, "RefreshToken", "refreshToken", service.token("carol"),
                       "refreshAck")
            await send(carol, "LeaveSocket", "leaveSocket", "carol", "okAck")
            check("errorAck", await carol.call("JoinSocket", "bob"))
            check("errorAck", await carol.call("Nope", {}))
            short = await peer("erin", ttl=3)
            check("tokenExpiring", await short.next_raw("token_expiring", within=10))
            check("serverDisconnect", await short.next_raw("server_disconnect", within=15))
            async with aiohttp.ClientSession() as http:
                for path, headers, status in (
                        ("/healthz", {}, 200), ("/readyz", {}, 200),
                        ("/ice-servers", {"Authorization": "Bearer " + service.token("x")},
                         200),
                        ("/ice-servers", {}, 401)):
                    async with http.get(service.url + path, headers=headers) as response:
                        assert response.status == status
                        check_http(path, "get", status, await response.json())
        finally:
            await asyncio.gather(*(p.close() for p in made))


@pytest.mark.parametrize("message", ["relayAck", "errorAck"])
def test_the_spec_is_strict_enough_to_catch_drift(message: str) -> None:
    """A field the service never sends fails validation (the acks are closed objects)."""
    bad = {"ok": True, "delivered": True, "extra": 1} if message == "relayAck" else {
        "ok": False, "error": "no_such_code"}
    assert list(message_validator(message).iter_errors(bad))
