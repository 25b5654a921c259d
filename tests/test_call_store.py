"""The call stores (in memory, and on the real Redis the suite uses) at their interface: what
the relay path relies on when a claim interleaves with a relay."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from service.calls import ACTIVE, Call, CallStore, Ledger, LocalCallStore
from service.calls.rules import Party
from service.cluster import RedisCallStore, RedisLink
from tests.processes import SHARED_REDIS
from tests.test_cluster import redis_url

__all__ = ["redis_url"]  # fixture


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[CallStore]:
    if request.param == "memory":
        yield LocalCallStore()
        return
    link = RedisLink(SHARED_REDIS, max_connections=4)
    try:
        yield RedisCallStore(link, prefix=f"test-{uuid.uuid4().hex[:12]}")
    finally:
        await link.close()


async def test_a_record_after_a_claim_names_the_claiming_device(store: CallStore) -> None:
    """A relay decided for bob's old device records its message after bob's new device
    claimed the call (and read the outbox): the record says where bob is now, so the
    message goes there instead of to the old socket, and the outbox keeps it too."""
    call = Call("c1", Party("alice", "a1"), Party("bob", "old"), ACTIVE, 0.0, None)

    def open_(ledger: Ledger) -> None:
        ledger.save(call)

    await store.update(("alice", "bob"), open_)
    seq = await store.reserve_seq("c1", "bob")
    assert seq == 1
    assert await store.record("c1", "bob", 1, "candidate", {"seq": 1}, "old") is None

    def claim(ledger: Ledger) -> None:
        claimed = ledger.calls["c1"]
        claimed.callee.device = "new"
        ledger.save(claimed)

    await store.update(("bob",), claim)
    assert await store.record("c1", "bob", 2, "candidate", {"seq": 2}, "old") == "new"
    assert await store.record("c1", "bob", 3, "candidate", {"seq": 3}, "new") is None
    assert [seq for seq, _, _ in await store.outbox("c1", "bob")] == [1, 2, 3]
    assert await store.reserve_seq("nobody's", "bob") is None
