"""The execution core's rules, each tested where it is decided, so that a one-line slip in it fails.

The connections, nodes and tracker run against real redis-servers. Where a rule is about time
(the watchdog), the test moves the event loop's clock forward instead of waiting: a timer fires
when the clock passes its deadline, and the test looks only once every timer due by then has
run, so no result depends on how fast the machine is. A reply is held back with ``BLPOP`` on an
empty list, which the server answers only when the test pushes to that list: on one
connection, every command written after it waits too.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
import redis
from redis import exceptions as redis_errors
from redis.asyncio.connection import Connection
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from aa_storage.testing import bounded
from aa_storage_redis.cluster import Cluster
from aa_storage_redis.cluster import _slot_owners as slot_owners
from aa_storage_redis.connection import MultiplexedConnection
from aa_storage_redis.keys import KeySpace
from aa_storage_redis.near_cache import NearCache
from aa_storage_redis.node import Node
from aa_storage_redis.sentinel import Sentinel, _Named
from aa_storage_redis.stats import Counters
from aa_storage_redis.tracking import Tracker
from aa_storage_redis.wire import NotSent, ReplyLost, pack
from servers import RedisServer
from test_redis_near_cache import tracking_clients
from test_sentinel_events import NEW, OLD, a_node, every_sentinel_names, hear, no_sentinel
from waiting import Clock, eventually

pytestmark = pytest.mark.asyncio

# The socket_timeout of the connections under test, in seconds of the test's clock: far
# beyond the real time a test takes, so only the clock the test moves can make it run out.
TIMEOUT = 1000.0
PING = pack("PING")
CLIENT_ID = pack("CLIENT", "ID")


class Holds:
    """Replies the server holds back: ``BLPOP`` on empty lists, answered when released."""

    def __init__(self, raw: redis.Redis) -> None:
        self._raw = raw
        self._keys: list[str] = []

    def command(self) -> bytes:
        """A command whose reply, and that of every later command on its connection, the
        server holds until :meth:`release` (or :meth:`release_all`)."""
        key = f"hold{len(self._keys)}"
        self._keys.append(key)
        return pack("BLPOP", key, 0)

    def release(self, index: int) -> None:
        """Let the server answer the ``index``-th held command."""
        self._raw.lpush(self._keys[index], "released")

    def release_all(self) -> None:
        for index in range(len(self._keys)):
            self.release(index)


@pytest.fixture
def holds(raw: redis.Redis) -> Holds:
    return Holds(raw)


def opener(server: RedisServer) -> Callable[[], Connection]:
    """What a node opens its connections with, to ``server``."""
    return functools.partial(Connection, host=server.host, port=server.port)


@pytest_asyncio.fixture
async def connection(
    redis_server: RedisServer, holds: Holds, clock: Clock
) -> AsyncIterator[tuple[MultiplexedConnection, Counters]]:
    """A multiplexed connection to the emptied session server, with its counters; closed after
    every held reply is released, so that closing waits for nothing."""
    counters = Counters()
    multiplexed = MultiplexedConnection(
        opener(redis_server), connect_timeout=TIMEOUT, socket_timeout=TIMEOUT, counters=counters
    )
    yield multiplexed, counters
    holds.release_all()
    await bounded(multiplexed.aclose())


def failure(future: asyncio.Future[Any]) -> BaseException | None:
    """What ``future`` failed with; ``None`` while it is pending or if it succeeded."""
    return future.exception() if future.done() else None


def timed_out(future: asyncio.Future[Any]) -> bool:
    """Whether ``future`` failed because its connection's watchdog closed the connection."""
    failed = failure(future)
    return isinstance(failed, ReplyLost) and isinstance(failed.cause, redis_errors.TimeoutError)


class TestWatchdog:
    """The connection is closed when its OLDEST pending request has waited socket_timeout,
    counted from that request's submission, or from when the connection opened if later."""

    async def test_the_oldest_request_times_out_though_newer_ones_have_time_left(
        self, connection: tuple[MultiplexedConnection, Counters], holds: Holds, clock: Clock
    ) -> None:
        """Once the first request is answered, the watchdog moves to the next oldest and
        fires at its deadline, not at that of the newest request."""
        multiplexed, counters = connection
        assert await bounded(multiplexed.submit(PING)) == b"PONG"
        first = multiplexed.submit(holds.command())  # its deadline: 1.0 TIMEOUT
        await clock.advance(0.5 * TIMEOUT)
        oldest = multiplexed.submit(holds.command())  # its deadline: 1.5 TIMEOUT
        await clock.advance(0.4 * TIMEOUT)
        newest = multiplexed.submit(PING)  # its deadline: 1.9 TIMEOUT
        holds.release(0)
        assert await bounded(first) == [b"hold0", b"released"]
        await clock.advance(0.3 * TIMEOUT)  # 1.2: the first deadline passed with no one due
        assert not oldest.done()
        assert not newest.done()
        await clock.advance(0.4 * TIMEOUT)  # 1.6: past the oldest's deadline only
        assert timed_out(oldest), failure(oldest)
        assert timed_out(newest), failure(newest)
        assert counters.timeouts == 1

    async def test_a_request_after_an_idle_spell_has_its_full_timeout(
        self, connection: tuple[MultiplexedConnection, Counters], holds: Holds, clock: Clock
    ) -> None:
        """A request sent on a connection open for longer than socket_timeout gets
        socket_timeout from its own submission: the connection's age does not count."""
        multiplexed, counters = connection
        assert await bounded(multiplexed.submit(PING)) == b"PONG"
        await clock.advance(2 * TIMEOUT)
        held = multiplexed.submit(holds.command())  # its deadline: 3.0 TIMEOUT
        await clock.advance(0.9 * TIMEOUT)
        assert not held.done()
        assert counters.timeouts == 0
        await clock.advance(0.2 * TIMEOUT)
        assert timed_out(held), failure(held)

    async def test_a_request_queued_while_connecting_counts_from_the_opening(
        self, connection: tuple[MultiplexedConnection, Counters], holds: Holds, clock: Clock
    ) -> None:
        """A request submitted before the connection opened gets socket_timeout from the
        opening, not from its submission: connecting has a bound of its own."""
        multiplexed, _ = connection
        probe = multiplexed.submit(PING)
        held = multiplexed.submit(holds.command())
        clock.jump(0.9 * TIMEOUT)  # before the connect task's first step: it opens at 0.9
        assert await bounded(probe) == b"PONG"
        await clock.advance(0.6 * TIMEOUT)  # 1.5: past 1.0 from the submission
        assert not held.done()
        await clock.advance(0.5 * TIMEOUT)  # 2.0: past 1.9 from the opening
        assert timed_out(held), failure(held)


class TestOutbox:
    """A command still in the outbox (queued, not yet written) is never counted as written:
    when the connection breaks it fails with NotSent (safe to retry), while a written one
    fails with ReplyLost (its outcome unknown)."""

    async def test_commands_still_queued_when_the_connection_breaks_are_not_sent(
        self, connection: tuple[MultiplexedConnection, Counters], holds: Holds, clock: Clock
    ) -> None:
        """Commands queued in the same turn as the watchdog fires were never written: they
        fail with NotSent, the written one with ReplyLost, and the next command sent counts
        as the only one written since."""
        multiplexed, counters = connection
        loop = asyncio.get_running_loop()
        assert await bounded(multiplexed.submit(PING)) == b"PONG"
        now = loop.time()
        written = multiplexed.submit(holds.command())
        queued: list[asyncio.Future[Any]] = []
        # Due in the same turn as the watchdog, just before it: the outbox is not flushed yet.
        loop.call_at(now + 0.5 * TIMEOUT, lambda: queued.extend(
            multiplexed.submit(PING) for _ in range(2)))  # fmt: skip
        await clock.advance(2 * TIMEOUT)
        assert timed_out(written), failure(written)
        assert len(queued) == 2
        for future in queued:
            assert isinstance(failure(future), NotSent), failure(future)
        sent = counters.commands_sent
        assert sent == 2  # the PING and the held command
        assert await bounded(multiplexed.submit(PING)) == b"PONG"
        assert counters.commands_sent == sent + 1

    async def test_commands_written_in_a_batch_count_as_written(
        self, connection: tuple[MultiplexedConnection, Counters], holds: Holds, clock: Clock
    ) -> None:
        """Commands that left the outbox in a batch write fail with ReplyLost when the
        connection breaks, like the one written at once: the server may have run them."""
        multiplexed, counters = connection
        assert await bounded(multiplexed.submit(PING)) == b"PONG"
        first = multiplexed.submit(holds.command())
        batched = [multiplexed.submit(PING) for _ in range(2)]
        await clock.advance(0)  # the batch is written on this turn
        assert counters.commands_sent == 4
        await clock.advance(2 * TIMEOUT)
        for future in (first, *batched):
            assert timed_out(future), failure(future)


def a_node_over(open_connection: Callable[[], Any], address: tuple[str, int], size: int) -> Node:
    """A node of ``size`` connections made by ``open_connection``, with the test's timeouts."""
    return Node(
        open_connection,
        address=f"{address[0]}:{address[1]}",
        size=size,
        counters=Counters(),
        max_pending=100,
        connect_timeout=TIMEOUT,
        socket_timeout=TIMEOUT,
    )


@pytest_asyncio.fixture
async def node(redis_server: RedisServer, holds: Holds) -> AsyncIterator[Node]:
    """A node of three connections to the emptied session server; closed after every held
    reply is released."""
    three = a_node_over(opener(redis_server), (redis_server.host, redis_server.port), size=3)
    yield three
    holds.release_all()
    await bounded(three.aclose())


def client_ids(futures: list[asyncio.Future[Any]]) -> Iterator[int]:
    """Which connection (its server-side client id) ran each ``CLIENT ID``."""
    return (future.result() for future in futures)


class TestNodeChoice:
    """A node sends a command on the connection with the fewest pending requests, the first
    one on a tie; commands submitted together stay on one connection, back to back."""

    async def test_a_burst_spreads_over_the_connections_in_turn(self, node: Node) -> None:
        """Six commands submitted at once go to connections 1, 2, 3, 1, 2, 3: each to the one
        with the fewest pending, the first on a tie."""
        burst = [node.submit(CLIENT_ID) for _ in range(6)]
        await bounded(asyncio.gather(*burst))
        first, second, third, *again = client_ids(burst)
        assert len({first, second, third}) == 3
        assert again == [first, second, third]

    async def test_the_least_busy_connection_is_chosen(self, node: Node, holds: Holds) -> None:
        """With the first connection held up by two commands, the second by one and the third
        by none, the next command goes to the third, and the one after it, on a tie of one
        each, to the second."""
        spread = [node.submit(CLIENT_ID) for _ in range(3)]
        _, second, third = await bounded(asyncio.gather(*spread))
        held = [node.submit(holds.command()) for _ in range(3)]  # one on each connection
        held.append(node.submit(holds.command()))  # a second on the first
        holds.release(2)
        assert await bounded(held[2]) == [b"hold2", b"released"]  # the third has none now
        after = [node.submit(CLIENT_ID) for _ in range(2)]
        holds.release_all()
        await bounded(asyncio.gather(*held, *after))
        assert list(client_ids(after)) == [third, second]

    async def test_a_lone_caller_always_uses_the_first_connection(self, node: Node) -> None:
        """Commands sent one at a time all go to the first connection."""
        ids = {await bounded(node.submit(CLIENT_ID)) for _ in range(5)}
        assert len(ids) == 1

    async def test_commands_submitted_together_share_one_connection(self, node: Node) -> None:
        """Commands submitted together all go to one connection, the least busy, even when
        each alone would have gone to a different one."""
        alone = node.submit(CLIENT_ID)
        together = node.submit_together(CLIENT_ID, CLIENT_ID, CLIENT_ID)
        await bounded(asyncio.gather(alone, *together))
        ids = set(client_ids(together))
        assert len(ids) == 1
        assert alone.result() not in ids


# --- the cluster's slot map ---

PRIMARIES = {name: ("127.0.0.1", 7000 + index) for index, name in enumerate("ABCD")}


@functools.cache
def key_in_each_slot() -> tuple[bytes, ...]:
    """For each of the 16384 slots, a key that hashes to it."""
    found: dict[int, bytes] = {}
    number = 0
    while len(found) < REDIS_CLUSTER_HASH_SLOTS:
        key = b"k%d" % number
        found.setdefault(key_slot(key), key)
        number += 1
    return tuple(found[slot] for slot in range(REDIS_CLUSTER_HASH_SLOTS))


# Slot ranges and their owners, in the order a CLUSTER SLOTS reply lists them: as a new
# 3-primary cluster has them, in another order, and after a reshard that gave a range of C's
# to a fourth primary and one of B's to A, so that two primaries own two ranges each.
SLOT_MAPS = {
    "three-primaries": [(0, 5460, "A"), (5461, 10922, "B"), (10923, 16383, "C")],
    "listed-last-first": [(10923, 16383, "C"), (5461, 10922, "B"), (0, 5460, "A")],
    "resharded": [
        (12000, 16383, "C"),
        (0, 5460, "A"),
        (10923, 11999, "D"),
        (10000, 10922, "A"),
        (5461, 9999, "B"),
    ],
}


class TestSlotMap:
    @pytest.mark.parametrize("ranges", SLOT_MAPS.values(), ids=SLOT_MAPS)
    async def test_every_slot_goes_to_the_owner_of_its_range_ends_included(
        self, ranges: list[tuple[int, int, str]]
    ) -> None:
        """After a CLUSTER SLOTS reply, each slot, the first and last of every range among
        them, is served by the primary the reply names for that range."""
        cluster = Cluster([PRIMARIES["A"]], a_node)
        reply = [
            [start, end, [b"127.0.0.1", PRIMARIES[owner][1], b"id-" + owner.encode()]]
            for start, end, owner in ranges
        ]
        cluster._set_slots(slot_owners(reply, PRIMARIES["A"], cluster.node))
        keys = key_in_each_slot()
        owner_of = [""] * REDIS_CLUSTER_HASH_SLOTS
        for start, end, owner in ranges:
            owner_of[start : end + 1] = [owner] * (end - start + 1)
        ends = sorted({slot for start, end, _ in ranges for slot in (start, end)})
        for slot in ends:  # first, so that a failure names a range end
            served = cluster.node_for(keys[slot])
            assert served is cluster.node(PRIMARIES[owner_of[slot]]), slot
        wrong = [
            slot
            for slot in range(REDIS_CLUSTER_HASH_SLOTS)
            if cluster.node_for(keys[slot]) is not cluster.node(PRIMARIES[owner_of[slot]])
        ]
        assert wrong == []


# --- sentinel events ---


class TestSwitchMaster:
    async def test_a_switch_master_alone_moves_calls_to_the_new_primary(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A +switch-master heard with no +try-failover or +promoted-slave before it stops
        calls to the old primary at once, and the next discovery picks the new one, though
        the sentinels asked still name the old one, which still answers as a primary."""
        topology = Sentinel([("127.0.0.1", 26379)], "svc", a_node, no_sentinel, TIMEOUT)
        every_sentinel_names(OLD, topology, monkeypatch)
        try:
            await bounded(topology.discover())
            assert address_of(topology.node_for(None)) == OLD
            hear(topology, "+switch-master", "svc 127.0.0.1 7001 127.0.0.1 7002")
            assert topology.node_for(None) is None
            await bounded(topology.discover())
            assert address_of(topology.node_for(None)) == NEW
        finally:
            await bounded(topology.aclose())


def address_of(node: Node | None) -> tuple[str, int] | None:
    if node is None:
        return None
    host, port = node.address.rsplit(":", 1)
    return host, int(port)


# --- the near-cache's tracker ---


class Witness(NearCache):
    """A near-cache that notes, each time it is resumed, what ``note()`` says then."""

    def watch(self, note: Callable[[], Any]) -> None:
        self.note = note
        self.resumed_with: list[Any] = []

    def resume(self) -> None:
        self.resumed_with.append(self.note())
        super().resume()


class TestTracking:
    async def test_a_topology_change_while_connecting_is_looked_at_before_resuming(
        self,
        redis_server: RedisServer,
        fresh_redis_server: RedisServer,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """When the primary changes while tracking is connecting to the old one, the
        near-cache resumes only once the tracker has looked at the primaries again and
        tracks the new one."""
        old = (redis_server.host, redis_server.port)
        new = (fresh_redis_server.host, fresh_redis_server.port)

        def real_node(address: tuple[str, int]) -> Node:
            connect = functools.partial(Connection, host=address[0], port=address[1])
            return a_node_over(connect, address, size=1)

        topology = Sentinel([("127.0.0.1", 26379)], "svc", real_node, no_sentinel, TIMEOUT)
        sentinels_name = [_Named(1, old, failing_over=False, sentinel=("127.0.0.1", 26379))]

        async def named(sentinel: tuple[str, int]) -> _Named:
            return sentinels_name[-1]

        monkeypatch.setattr(topology, "_named_primary", named)

        def connect(address: tuple[str, int]) -> Connection:
            if address == old and len(sentinels_name) == 1:
                # A failover ends as tracking connects to the old primary.
                sentinels_name.append(sentinels_name[0]._replace(epoch=2, primary=new))
                hear(topology, "+switch-master", "svc {} {} {} {}".format(*old, *new))
            return Connection(host=address[0], port=address[1], protocol=3)

        near = Witness(10)
        near.watch(lambda: (topology.primaries(), len(tracking_clients(fresh_redis_server))))
        tracker = Tracker(
            near,
            topology,
            connect,
            keys=KeySpace("aa:"),
            connect_timeout=TIMEOUT,
            socket_timeout=TIMEOUT,
            server="the test's servers",
            secret=None,
        )
        try:
            tracker.start()
            await eventually(lambda: near.live, "tracking is up")
            assert len(sentinels_name) == 2, "the primary changed while tracking connected"
            assert near.resumed_with[0] == ((new,), 1)
        finally:
            await bounded(tracker.aclose())
            await bounded(topology.aclose())
