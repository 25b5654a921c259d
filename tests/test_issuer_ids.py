"""Issuers do not share user ids unless the operator says so (issue 9, item 6): a service
trusting more than one issuer refuses to start until SIGNAL_JWT_USER_IDS says how their ids
relate; with prefixes, issuer B's user 42 is ``b:42`` and never reaches issuer A's user 42."""

from __future__ import annotations

import pytest

from service.config import Secret, Settings
from service.errors import ConfigError
from tests.idp import IdpKey
from tests.support import SECRET, Peer, offer_to, serving

ISS_A = "https://idp-a.example.com/"
ISS_B = "https://idp-b.example.com/"


def test_two_issuers_without_a_declaration_refuse_to_start() -> None:
    """Two issuers for the static keys, or a secret beside another issuer's PEM, stop
    start-up with an error naming SIGNAL_JWT_USER_IDS, from the environment and from direct
    construction alike; one issuer needs nothing."""
    env = {"SIGNAL_JWT_SECRET": SECRET, "SIGNAL_JWT_ISSUER": f"{ISS_A},{ISS_B}"}
    with pytest.raises(ConfigError, match="SIGNAL_JWT_USER_IDS is required"):
        Settings.from_env(env, env_file=None)
    with pytest.raises(ConfigError, match="SIGNAL_JWT_USER_IDS is required"):
        Settings(jwt_secret=Secret(SECRET), jwt_issuers=(ISS_A, ISS_B))
    assert Settings.from_env({**env, "SIGNAL_JWT_USER_IDS": "shared"},
                             env_file=None).jwt_shared_user_ids
    assert Settings.from_env({**env, "SIGNAL_JWT_ISSUER": ISS_A}, env_file=None)


@pytest.mark.parametrize(("value", "problem"), [
    (f"{ISS_A} a:", "gives no prefix for"),
    (f"{ISS_A} a:,{ISS_B} a:", "distinct"),
    (f"{ISS_A} a,{ISS_B} ab", "none may begin another"),
    (f"{ISS_A} a:,{ISS_B} b:,https://c.example.com/ c:", "not in SIGNAL_JWT_ISSUER"),
    (f"{ISS_A}", "ISSUER PREFIX"),
])
def test_bad_prefixes_are_named(value: str, problem: str) -> None:
    """Prefixes must cover every accepted issuer, be distinct, and never begin one another
    (``a`` + ``b42`` would be ``ab`` + ``42``)."""
    env = {"SIGNAL_JWT_SECRET": SECRET, "SIGNAL_JWT_ISSUER": f"{ISS_A},{ISS_B}",
           "SIGNAL_JWT_USER_IDS": value}
    with pytest.raises(ConfigError, match=problem):
        Settings.from_env(env, env_file=None)


async def test_prefixed_issuers_are_different_users(transport: str) -> None:
    """With prefixes, issuer B's ``sub: 42`` is ``b:42``: it cannot join A's ``a:42``, does
    not receive A's user's calls, and its relays arrive ``from: b:42``."""
    pem_key = IdpKey.new("ES256", "b-key")
    settings = Settings(jwt_secret=Secret(SECRET), jwt_public_keys=(pem_key.pem,),
                        jwt_issuers=(ISS_A, ISS_B),
                        jwt_user_id_prefixes=((ISS_A, "a:"), (ISS_B, "b:")))
    async with serving(settings) as service:
        a42, b42, caller = (Peer(service.url, transport) for _ in range(3))
        await a42.connect(service.token("42", iss=ISS_A))
        await b42.connect(pem_key.token("42", iss=ISS_B))
        await caller.connect(service.token("alice", iss=ISS_A))
        assert await a42.call("JoinSocket", "a:42") == {"ok": True}
        assert (await b42.call("JoinSocket", "a:42"))["error"] == "forbidden"
        assert (await b42.call("JoinSocket", "42"))["error"] == "forbidden"
        assert await b42.call("JoinSocket", "b:42") == {"ok": True}
        assert (await caller.call("offer", offer_to("a:42", n=1)))["delivered"] is True
        assert (await a42.next("offer"))["from"] == "a:alice"
        # a marker from the same sender to b:42: what b:42 receives first is the marker, so
        # the call to a:42 never reached it
        assert (await caller.call("offer", offer_to("b:42", n=2)))["delivered"]
        assert (await b42.next("offer"))["n"] == 2
        for user in ("a:42", "b:42"):
            assert (await caller.call("hangup", {"to": user}))["delivered"]
        assert (await b42.call("offer", offer_to("a:42", **{"from": "a:42"})))["delivered"]
        assert (await a42.next("offer"))["from"] == "b:42"
        for peer in (a42, b42, caller):
            await peer.close()
