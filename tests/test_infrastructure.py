"""The real-server and fault-injection helpers behave as the other tests assume."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoPermissionError
from redis.retry import Retry

from faultproxy import FaultProxy, FaultProxyFactory
from servers import RedisServer, server_version, wait_until

FAST_TIMEOUT = 0.5
# How long a test waits for the proxy's thread to notice a closed connection before failing.
CONTROL_PATIENCE = 10.0


def _client(url: str, **kwargs: object) -> redis.Redis:
    """A sync client that gives up quickly and never retries, so faults surface at once."""
    options: dict[str, object] = {
        "socket_timeout": FAST_TIMEOUT,
        "socket_connect_timeout": FAST_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
    }
    options.update(kwargs)
    return redis.Redis.from_url(url, **options)


@pytest.fixture
def proxy(fault_proxy: FaultProxyFactory, redis_server: RedisServer) -> FaultProxy:
    """A fault proxy in front of the session server, starting in passthrough."""
    return fault_proxy(redis_server.port)


@pytest.fixture
def proxied(proxy: FaultProxy) -> Iterator[redis.Redis]:
    """A client talking to the session server through ``proxy``."""
    with _client(proxy.url) as client:
        yield client


# --- servers ---


def test_server_answers_ping_on_loopback_port(redis_server: RedisServer) -> None:
    """The server answers PING and listens only on 127.0.0.1 at the chosen port."""
    with _client(redis_server.url) as client:
        assert client.ping()
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        assert client.client_info()["laddr"] == f"127.0.0.1:{redis_server.port}"


def _reported_version(server: RedisServer) -> str:
    """The product and version the running server reports in INFO, as server_version() words it."""
    with _client(server.url) as client:
        info = client.info("server")
    if info.get("server_name") == "valkey":
        return f"Valkey {info['valkey_version']}"
    return f"Redis {info['redis_version']}"


def test_valkey_server_is_valkey(valkey_server: RedisServer) -> None:
    """The valkey_server fixture runs Valkey, of the version its binary reports."""
    assert server_version(valkey_server.binary).startswith("Valkey ")
    assert _reported_version(valkey_server) == server_version(valkey_server.binary)


def test_redis_server_version_is_the_one_reported(redis_server: RedisServer) -> None:
    """server_version() of the redis-server binary is what the running server reports."""
    assert _reported_version(redis_server) == server_version(redis_server.binary)


def test_restart_keeps_port(fresh_redis_server: RedisServer) -> None:
    """restart() brings up a new process on the same port."""
    port, pid = fresh_redis_server.port, fresh_redis_server.pid
    fresh_redis_server.restart()
    assert fresh_redis_server.port == port
    assert fresh_redis_server.pid != pid
    with _client(fresh_redis_server.url) as client:
        assert client.ping()


def test_freeze_times_out_and_thaw_recovers(fresh_redis_server: RedisServer) -> None:
    """A frozen server times clients out; after thaw() it answers again."""
    fresh_redis_server.freeze()
    with _client(fresh_redis_server.url) as client, pytest.raises(redis.TimeoutError):
        client.ping()
    fresh_redis_server.thaw()
    with _client(fresh_redis_server.url) as client:
        assert client.ping()


def test_kill_drops_connections(fresh_redis_server: RedisServer) -> None:
    """After kill() clients fail to connect, and start() serves the same port again."""
    fresh_redis_server.kill()
    with _client(fresh_redis_server.url) as client, pytest.raises(redis.ConnectionError):
        client.ping()
    fresh_redis_server.start()
    with _client(fresh_redis_server.url) as client:
        assert client.ping()


# --- TLS ---


def test_tls_accepts_client_trusting_server_ca(tls_redis_server: RedisServer) -> None:
    """A rediss:// client verifying against ca_path gets through."""
    with _client(tls_redis_server.tls_url, ssl_ca_certs=tls_redis_server.ca_path) as client:
        assert client.ping()


def test_tls_rejects_client_trusting_other_ca(tls_redis_server: RedisServer) -> None:
    """A rediss:// client verifying against other_ca_path cannot connect."""
    url, ca = tls_redis_server.tls_url, tls_redis_server.other_ca_path
    with _client(url, ssl_ca_certs=ca) as client, pytest.raises(redis.ConnectionError):
        client.ping()


def test_required_client_cert() -> None:
    """With require_client_cert, only clients presenting client_cert_path are served."""
    with RedisServer(tls=True, require_client_cert=True) as server:
        url, ca = server.tls_url, server.ca_path
        with _client(url, ssl_ca_certs=ca) as anonymous, pytest.raises(redis.ConnectionError):
            anonymous.ping()
        cert = {"ssl_certfile": server.client_cert_path, "ssl_keyfile": server.client_key_path}
        with _client(url, ssl_ca_certs=ca, **cert) as client:
            assert client.ping()


# --- ACL ---


def test_acl_user_limited_to_its_key_pattern() -> None:
    """An acl_users user can use its aa:* keys, gets NOPERM elsewhere, and survives restart()."""
    rule = "infra on >infra-pw ~aa:* +@all"
    with RedisServer(admin_password="admin-pw", acl_users=[rule]) as server:
        server.restart()
        with _client(server.url_for("infra", "infra-pw")) as client:
            client.set("aa:infra", b"1")
            assert client.get("aa:infra") == b"1"
            # redis-py turns a NOPERM reply into NoPermissionError and strips the prefix.
            with pytest.raises(NoPermissionError):
                client.get("other:infra")


def test_acl_server_requires_admin_password(acl_redis_server: RedisServer) -> None:
    """The default user needs the admin password; url carries it."""
    wrong = acl_redis_server.url_for(password="wrong")
    with _client(wrong) as client, pytest.raises(redis.AuthenticationError):
        client.ping()
    with _client(acl_redis_server.url) as client:
        assert client.ping()


def test_commandstats_counts_get(redis_server: RedisServer, redis_url: str) -> None:
    """commandstats() reports a GET issued after reset() as one call."""
    with _client(redis_url) as client:
        client.get("aa:counted")
    assert redis_server.commandstats()["get"] == 1


def test_clients_lists_other_connections_only(redis_server: RedisServer) -> None:
    """clients() sees a connection while it is open, and not the one that asks."""
    before = len(redis_server.clients())
    with _client(redis_server.url) as client:
        client.client_setname("aa-counted")
        names = [info["name"] for info in redis_server.clients()]
        assert names.count("aa-counted") == 1
        assert len(names) == before + 1


# --- fault proxy ---


def test_proxy_passthrough(proxy: FaultProxy, proxied: redis.Redis) -> None:
    """In passthrough the proxy relays commands and replies untouched."""
    proxied.set("aa:proxied", b"v")
    assert proxied.get("aa:proxied") == b"v"
    assert proxy.connections_accepted == 1


def test_proxy_latency_still_delivers(proxy: FaultProxy, proxied: redis.Redis) -> None:
    """With latency the reply arrives, just later."""
    proxy.latency(0.05)
    assert proxied.ping()


def test_proxy_drop_mid_reply(proxy: FaultProxy, proxied: redis.Redis) -> None:
    """drop_mid_reply cuts the next reply and the client sees a connection error."""
    proxied.set("aa:big", b"x" * 1000)
    proxy.drop_mid_reply()
    with pytest.raises(redis.ConnectionError):
        proxied.get("aa:big")
    assert proxied.get("aa:big") == b"x" * 1000


def test_proxy_blackhole_times_out(proxy: FaultProxy, proxied: redis.Redis) -> None:
    """A blackholed proxy never answers, so the client times out."""
    assert proxied.ping()
    proxy.blackhole()
    with pytest.raises(redis.TimeoutError):
        proxied.ping()


def test_proxy_refuse_fails_connect(proxy: FaultProxy) -> None:
    """A refusing proxy makes a fresh connection fail."""
    proxy.refuse()
    with _client(proxy.url) as client, pytest.raises(redis.ConnectionError):
        client.ping()
    assert proxy.connections_accepted == 1


def test_proxy_refuses_only_count_connections(proxy: FaultProxy) -> None:
    """refuse(2) resets the next two connections, then the proxy is back to passthrough."""
    proxy.refuse(2)
    for _ in range(2):
        with _client(proxy.url) as client, pytest.raises(redis.ConnectionError):
            client.ping()
    with _client(proxy.url) as client:
        assert client.ping()
    assert proxy.connections_refused == 2
    assert proxy.connections_accepted == 3


def test_proxy_counts_chunks_to_server_and_open_connections(proxy: FaultProxy) -> None:
    """Each command a client writes and awaits is one chunk; a closed connection is not open."""
    with _client(proxy.url) as client:
        client.ping()  # the handshake's commands count too, so count from here
        before = proxy.chunks_to_server
        for _ in range(3):
            client.ping()
        assert proxy.chunks_to_server == before + 3
        assert proxy.open_connections == 1
    # The proxy sees the close in its own thread: nothing to wait on but its count.
    wait_until(
        lambda: f"{proxy.open_connections} open" if proxy.open_connections else None,
        timeout=CONTROL_PATIENCE,
        diagnostics=lambda: "the proxy still counts the closed connection as open",
    )


def test_proxy_only_forwards_to_loopback() -> None:
    """FaultProxy refuses a non-loopback upstream."""
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("192.0.2.1", 1)
