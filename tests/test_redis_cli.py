"""``aa-storage check`` against a live redis-server: facts, warnings and clean failures."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from aa_storage.cli import main
from servers import RedisServer, free_ports


def config_file(tmp_path: Path, url: str, **extra: str) -> str:
    path = tmp_path / "redis.toml"
    lines = ["[storage]", 'backend = "redis"', "[storage.redis]", f'url = "{url}"']
    lines += [f"{key} = {value}" for key, value in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def eviction(redis_server: RedisServer) -> Iterator[None]:
    with redis_server.client() as admin:
        admin.config_set("maxmemory-policy", "allkeys-lru")
        yield
        admin.config_set("maxmemory-policy", "noeviction")


class TestCheck:
    def test_reports_every_operation_and_the_server(
        self, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A passing check prints ten rows, the server's version and mode, TLS and the user."""
        assert main(["check", "--config", config_file(tmp_path, redis_url)]) == 0
        out = capsys.readouterr().out
        rows = [line for line in out.splitlines() if line.split()[:1] and " yes " in line]
        assert [row.split()[:3] for row in rows] == [
            ["session_store", "redis", "save"],
            ["session_store", "redis", "load"],
            ["session_store", "redis", "delete"],
            ["rate_limit_counter", "redis", "increment"],
            ["rate_limit_counter", "redis", "current"],
            ["rate_limit_counter", "redis", "reset"],
            ["policy_store", "redis", "get_or_load"],
            ["policy_store", "redis", "cache_policy"],
            ["policy_store", "redis", "get_policy"],
            ["policy_store", "redis", "invalidate"],
        ]
        assert "  version: redis 7." in out or "  version: redis 6." in out
        assert "  mode: standalone" in out
        assert "  tls: off" in out
        assert "  user: default" in out
        assert "WARNING" not in out

    def test_leaves_only_an_expiring_lease_behind(
        self, redis_server: RedisServer, redis_url: str, tmp_path: Path
    ) -> None:
        """The check cleans up every key it wrote, but for the lease of its get_or_load,
        which expires within lease_ttl on its own."""
        assert main(["check", "--config", config_file(tmp_path, redis_url, lease_ttl="2.5")]) == 0
        with redis_server.client() as admin:
            [left] = admin.keys("*")
            pttl = admin.pttl(left)
            admin.delete(left)
        assert re.fullmatch(rb"\{aa:policy:[0-9a-f]{32}\}:lease", left)
        assert 0 < pttl <= 2500

    @pytest.mark.usefixtures("eviction")
    def test_warns_about_an_evicting_server(
        self, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A maxmemory-policy that can evict counters and sessions gets a warning."""
        assert main(["check", "--config", config_file(tmp_path, redis_url)]) == 0
        out = capsys.readouterr().out
        assert "WARNING: maxmemory-policy is allkeys-lru, not noeviction" in out

    def test_unreachable_server_is_one_line_and_exit_1(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Nothing listening: exit status 1 and a single BackendError line, no traceback."""
        (port,) = free_ports(1)
        path = config_file(tmp_path, f"redis://127.0.0.1:{port}", retries="0")
        assert main(["check", "--config", path]) == 1
        captured = capsys.readouterr()
        assert captured.err.count("\n") == 1
        assert captured.err.startswith("aa-storage: BackendError: session_store save via redis:")
        assert "cannot reach redis" in captured.err
        assert "Traceback" not in captured.err + captured.out

    def test_unreachable_server_is_named_once(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The message for a server that refuses connections gives its address once, then
        the reason."""
        (port,) = free_ports(1)
        path = config_file(tmp_path, f"redis://127.0.0.1:{port}", retries="0")
        assert _failure(capsys, path) == (
            "aa-storage: BackendError: session_store save via redis: "
            f"cannot reach redis at redis://127.0.0.1:{port}: Connection refused"
        )

    def test_missing_password_is_said_plainly(
        self, acl_redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A server that requires a password, given none, is one line saying so, without the
        server's long HELLO text."""
        url = f"redis://127.0.0.1:{acl_redis_server.port}"
        assert _failure(capsys, config_file(tmp_path, url, retries="0")) == (
            "aa-storage: BackendError: session_store save via redis: "
            f"redis at {url} needs a password, and the URL gives none "
            "(redis://user:password@host:port)"
        )

    def test_tls_against_a_plain_server_hints_at_it(
        self, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """tls = true against a server that does not speak TLS times out with a hint
        saying that the server may not speak TLS."""
        path = config_file(tmp_path, redis_url, tls="true", connect_timeout="0.3", retries="0")
        tls_url = redis_url.replace("redis://", "rediss://")
        assert _failure(capsys, path) == (
            "aa-storage: BackendError: session_store save via redis: "
            f"redis at {tls_url} did not answer in time: no TLS handshake; "
            "the server may not speak TLS (tls = true, or rediss://, against a plain port)"
        )


def _failure(capsys: pytest.CaptureFixture[str], config: str) -> str:
    """Run check on ``config``, which must fail; return its single stderr line."""
    assert main(["check", "--config", config]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    return err.rstrip("\n")
