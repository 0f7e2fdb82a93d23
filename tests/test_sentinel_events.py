"""How the sentinel topology reacts to each failover event a sentinel publishes.

The events are fed in as a sentinel writes them: no server can be made to
publish them on demand. The end-to-end behaviour (exact totals through
``SENTINEL FAILOVER``) is tested against real sentinels in test_redis_topologies.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from aa_storage_redis.failover_events import CHANNELS
from aa_storage_redis.node import Node
from aa_storage_redis.sentinel import Sentinel, _Named
from aa_storage_redis.stats import Counters

OLD = ("127.0.0.1", 7001)
NEW = ("127.0.0.1", 7002)


def unused(*args: Any) -> Any:
    raise AssertionError("no I/O is expected")


def a_node(address: tuple[str, int]) -> Node:
    return Node(
        unused,
        address=f"{address[0]}:{address[1]}",
        size=1,
        counters=Counters(),
        max_pending=10,
        connect_timeout=1.0,
        socket_timeout=1.0,
    )


@pytest.fixture
def sentinel() -> Sentinel:
    topology = Sentinel([("127.0.0.1", 26379)], "svc", a_node, unused, timeout=1.0)
    topology._primary = topology._nodes.at(OLD)
    return topology


def hear(topology: Sentinel, channel: str, data: str) -> None:
    assert channel in CHANNELS
    topology._events.heard(channel.encode(), data.encode())


@pytest.mark.asyncio
class TestFailoverEvents:
    async def test_a_started_failover_holds_calls(self, sentinel: Sentinel) -> None:
        """From +try-failover on, no primary is given to calls: they wait."""
        hear(sentinel, "+try-failover", "master svc 127.0.0.1 7001")
        assert sentinel.node_for(None) is None

    async def test_a_garbled_promotion_is_ignored(self, sentinel: Sentinel) -> None:
        """A port that is not a number neither moves calls nor stops the watcher."""
        primary = sentinel.node_for(None)
        hear(sentinel, "+promoted-slave", "slave 127.0.0.1:x 127.0.0.1 x @ svc 127.0.0.1 7001")
        hear(sentinel, "+switch-master", "svc 127.0.0.1 7001 127.0.0.1 x")
        assert sentinel.node_for(None) is primary

    async def test_another_services_failover_changes_nothing(self, sentinel: Sentinel) -> None:
        """Events about another service neither hold calls nor move them."""
        primary = sentinel.node_for(None)
        hear(sentinel, "+try-failover", "master other 127.0.0.1 7005")
        hear(sentinel, "+switch-master", "other 127.0.0.1 7005 127.0.0.1 7006")
        assert sentinel.node_for(None) is primary

    async def test_an_aborted_failover_lets_calls_go_on_to_the_same_primary(
        self, sentinel: Sentinel
    ) -> None:
        """An aborted failover ends the hold, and calls go on to the primary they had."""
        primary = sentinel.node_for(None)
        hear(sentinel, "+try-failover", "master svc 127.0.0.1 7001")
        hear(sentinel, "-failover-abort-no-good-slave", "master svc 127.0.0.1 7001")
        assert sentinel.node_for(None) is primary

    async def test_the_promoted_replica_becomes_the_first_candidate(
        self, sentinel: Sentinel
    ) -> None:
        """After +promoted-slave, calls wait for a discovery that tries the replica first."""
        hear(sentinel, "+try-failover", "master svc 127.0.0.1 7001")
        hear(
            sentinel, "+promoted-slave", "slave 127.0.0.1:7002 127.0.0.1 7002 @ svc 127.0.0.1 7001"
        )
        assert sentinel.node_for(None) is None  # the next call looks again ...
        assert sentinel._announced == NEW  # ... at the promoted replica first

    async def test_a_switch_to_the_current_primary_is_not_a_change(
        self, sentinel: Sentinel
    ) -> None:
        """Every sentinel announces the same switch: only the first one moves calls."""
        sentinel._primary = sentinel._nodes.at(NEW)
        hear(sentinel, "+switch-master", "svc 127.0.0.1 7001 127.0.0.1 7002")
        assert sentinel.node_for(None) is sentinel._nodes.at(NEW)
        assert sentinel._announced is None

    async def test_a_failover_that_never_ends_holds_calls_for_a_bounded_time(
        self, sentinel: Sentinel, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without a word after +try-failover, calls go on to the named primary."""
        monkeypatch.setattr("aa_storage_redis.sentinel.FAILOVER_HOLD_SECS", 0.05)
        monkeypatch.setattr(sentinel, "_open_sentinel", no_sentinel)
        primary = sentinel.node_for(None)
        hear(sentinel, "+try-failover", "master svc 127.0.0.1 7001")
        try:
            await sentinel.discover()
            assert sentinel.node_for(None) is primary
        finally:
            await sentinel.aclose()


def no_sentinel(address: tuple[str, int]) -> Any:
    raise redis.ConnectionError("no sentinel in this test")


@pytest.mark.asyncio
class TestDiscovery:
    """Which primary discovery picks when the sentinels disagree. Every data node
    answers ROLE with master here, as an old primary does for seconds after a
    failover, before the sentinels demote it."""

    @pytest.fixture(autouse=True)
    def every_node_is_a_primary(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """... except those a test puts in ``self.replicas`` (as ``host:port``)."""
        self.replicas: set[str] = set()

        async def role(node: Node, *command: str) -> list[bytes]:
            assert command == ("ROLE",)
            return [b"slave"] if node.address in self.replicas else [b"master"]

        monkeypatch.setattr("aa_storage_redis.sentinel.ask", role)

    def sentinels_say(
        self, monkeypatch: pytest.MonkeyPatch, topology: Sentinel, answers: list[Any]
    ) -> None:
        """Sentinel i answers ``answers[i]``: (config epoch, primary), with a third item
        True when it leads a failover, or an exception."""
        replies = dict(zip(topology._sentinels, answers, strict=True))

        async def named(sentinel: tuple[str, int]) -> _Named:
            reply = replies[sentinel]
            if isinstance(reply, BaseException):
                raise reply
            epoch, primary, *leading = reply
            return _Named(epoch, primary, failing_over=bool(leading), sentinel=sentinel)

        monkeypatch.setattr(topology, "_named_primary", named)

    def three_sentinels(self) -> Sentinel:
        sentinels = [("127.0.0.1", 26379 + i) for i in range(3)]
        return Sentinel(sentinels, "svc", a_node, unused, timeout=1.0)

    async def test_the_highest_config_epoch_wins_over_the_first_answer(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The primary named with the highest config epoch is used, whoever answered first."""
        topology = self.three_sentinels()
        self.sentinels_say(monkeypatch, topology, [(1, OLD), (2, NEW), (1, OLD)])
        await topology._find_primary()
        assert topology.node_for(None) is topology._nodes.at(NEW)

    async def test_a_sentinel_that_fails_is_outvoted_by_those_that_answer(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A sentinel that fails to answer is passed over for those that do."""
        topology = self.three_sentinels()
        down = redis.ConnectionError("sentinel down")
        self.sentinels_say(monkeypatch, topology, [down, (3, NEW), (2, OLD)])
        await topology._find_primary()
        assert topology.node_for(None) is topology._nodes.at(NEW)

    async def test_a_promoted_replica_announced_is_tried_before_any_sentinel(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Between +promoted-slave and +switch-master every sentinel still names the
        old primary, with its old epoch."""
        topology = self.three_sentinels()
        topology._primary = topology._nodes.at(OLD)
        self.sentinels_say(monkeypatch, topology, [(1, OLD), (1, OLD), (1, OLD)])
        hear(
            topology, "+promoted-slave", "slave 127.0.0.1:7002 127.0.0.1 7002 @ svc 127.0.0.1 7001"
        )
        await topology._find_primary()
        assert topology.node_for(None) is topology._nodes.at(NEW)

    async def test_no_sentinel_answering_is_the_sentinels_error(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With no sentinel answering, discovery raises the sentinels' own error."""
        topology = self.three_sentinels()
        down = redis.ConnectionError("sentinel down")
        self.sentinels_say(monkeypatch, topology, [down, down, down])
        with pytest.raises(redis.ConnectionError, match="sentinel down"):
            await topology._find_primary()

    def failing_over(self, monkeypatch: pytest.MonkeyPatch, chosen: Any) -> Sentinel:
        """Three sentinels naming OLD, the first leading a failover to ``chosen`` (None:
        no replica chosen yet), which is still a replica."""
        topology = self.three_sentinels()
        self.sentinels_say(monkeypatch, topology, [(1, OLD, "leads"), (1, OLD), (1, OLD)])

        async def target(sentinel: tuple[str, int]) -> Any:
            assert sentinel == topology._sentinels[0], "ask the sentinel that leads"
            return chosen

        monkeypatch.setattr(topology, "_failover_target", target)
        self.replicas.add("127.0.0.1:7002")
        return topology

    async def test_a_failover_under_way_holds_calls_until_its_replica_is_promoted(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A failover that began before the watchers listened: the leading sentinel
        still names the old primary, which still answers as one, but no call goes
        there; the chosen replica is used once it answers as a primary."""
        topology = self.failing_over(monkeypatch, NEW)
        await topology._find_primary()
        assert_holding(topology)
        topology.failover_ended(None)
        self.replicas.clear()
        await topology._find_primary()
        assert topology.node_for(None) is topology._nodes.at(NEW)

    async def test_a_failover_that_has_not_chosen_a_replica_yet_holds_calls(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A failover under way with no replica chosen yet holds calls."""
        topology = self.failing_over(monkeypatch, None)
        await topology._find_primary()
        assert_holding(topology)

    async def test_past_the_hold_the_primary_the_sentinels_name_is_used(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Once the hold has run out, calls go to the primary the sentinels name."""
        topology = self.failing_over(monkeypatch, NEW)
        topology._hold_ran_out = True
        await topology._find_primary()
        assert topology.node_for(None) is topology._nodes.at(OLD)

    async def test_a_primary_found_lets_the_next_failover_hold_calls_again(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Running out of patience lasts for one failover only."""
        topology = self.failing_over(monkeypatch, NEW)
        topology._hold_ran_out = True
        await topology._find_primary()
        topology.failed(topology._nodes.at(OLD))
        await topology._find_primary()
        assert_holding(topology)


def assert_holding(topology: Sentinel) -> None:
    """Calls wait: no primary to send them to, and a failover being waited out."""
    assert topology.node_for(None) is None
    assert not topology._settled.is_set()


def every_sentinel_names(
    primary: tuple[str, int], topology: Sentinel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each sentinel of ``topology`` names ``primary`` (config epoch 1, no failover under
    way), and every data node answers ``ROLE`` as a primary."""

    async def named(sentinel: tuple[str, int]) -> _Named:
        return _Named(1, primary, failing_over=False, sentinel=sentinel)

    async def role(node: Node, *command: str) -> list[bytes]:
        return [b"master"]

    monkeypatch.setattr(topology, "_named_primary", named)
    monkeypatch.setattr("aa_storage_redis.sentinel.ask", role)


class ListeningLater:
    """A sentinel connection whose SUBSCRIBE is confirmed only when the test says so."""

    def __init__(self) -> None:
        self._reader = asyncio.StreamReader()
        self.subscribed = asyncio.Event()

    async def connect(self) -> None:
        pass

    async def send_command(self, *command: str) -> None:
        assert command[0] == "SUBSCRIBE"
        self.subscribed.set()

    def confirm(self) -> None:
        for number, channel in enumerate(CHANNELS, 1):
            self._reader.feed_data(
                b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:%d\r\n"
                % (len(channel), channel.encode(), number)
            )

    def _close(self) -> None:
        self._reader.feed_eof()


@pytest.mark.asyncio
async def test_discovery_waits_until_the_watchers_listen(monkeypatch: pytest.MonkeyPatch) -> None:
    """No primary is chosen, so no call is sent, before the sentinel has confirmed the
    watcher's subscriptions: a failover it started meanwhile would go unheard."""
    connection = ListeningLater()
    topology = Sentinel([("127.0.0.1", 26379)], "svc", a_node, lambda _: connection, 1.0)
    every_sentinel_names(OLD, topology, monkeypatch)
    discovery = asyncio.ensure_future(topology.discover())
    try:
        await asyncio.wait_for(connection.subscribed.wait(), 10)
        # Turns of the loop, not time: without the wait, discovery would be done by now.
        for _ in range(20):
            await asyncio.sleep(0)
        assert not discovery.done()
        assert topology.node_for(None) is None
        connection.confirm()
        await asyncio.wait_for(discovery, 10)
        assert topology.node_for(None) is topology._nodes.at(OLD)
    finally:
        await topology.aclose()
