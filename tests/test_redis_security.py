"""TLS, least-privilege ACL, tenant isolation by key prefix, and secrets kept out of sight."""

from __future__ import annotations

import asyncio
import logging
import re
import string
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from aa_storage import (
    AgentId,
    BackendError,
    ConfigError,
    PolicyDocument,
    SessionId,
    SessionRecord,
    StorageError,
    load_config,
)
from aa_storage.cli import main
from aa_storage.memory import MemoryBackend
from aa_storage.testing import ContractSuite
from aa_storage_redis import RedisBackend, RedisStorageConfig
from servers import ADMIN_PASSWORD, RedisServer, free_ports

README = Path(__file__).parent.parent / "README.md"
SECRET = "pa55-Zq9-never-shown"


def readme_acl_rule() -> list[str]:
    """The ACL SETUSER rule the README gives, split into its parts after the user name."""
    match = re.search(r"^ACL SETUSER aa-driver (.+)$", README.read_text(), re.MULTILINE)
    assert match, "README.md must give the driver user's ACL SETUSER rule"
    return match.group(1).split()


# --- TLS ---


class TestTlsContract(ContractSuite):
    """The whole contract holds over rediss:// with certificate verification on."""

    @pytest_asyncio.fixture
    async def backend(self, tls_redis_server: RedisServer) -> AsyncIterator[RedisBackend]:
        tls_redis_server.flushall()
        backend = RedisBackend.connect(tls_redis_server.backend_config(tls=True))
        yield backend
        await backend.aclose()


@pytest.fixture(scope="module")
def mtls_server() -> Iterator[RedisServer]:
    server = RedisServer(tls=True, require_client_cert=True)
    server.start()
    yield server
    server.close()


@pytest.mark.asyncio
class TestTls:
    async def test_wrong_ca_is_a_clear_backend_error(self, tls_redis_server: RedisServer) -> None:
        """A server certificate that the configured CA did not sign fails verification."""
        config = RedisStorageConfig(
            url=tls_redis_server.tls_url, ca_file=tls_redis_server.other_ca_path
        )
        backend = RedisBackend.connect(config)
        try:
            with pytest.raises(BackendError, match="TLS certificate verification failed"):
                await backend.rate_limiter().current("k")
        finally:
            await backend.aclose()

    async def test_tls_flag_upgrades_a_redis_url(self, tls_redis_server: RedisServer) -> None:
        """tls = true with a redis:// URL connects over TLS."""
        url = tls_redis_server.tls_url.replace("rediss://", "redis://")
        config = RedisStorageConfig(url=url, tls=True, ca_file=tls_redis_server.ca_path)
        backend = RedisBackend.connect(config)
        try:
            assert await backend.rate_limiter().increment("tls-flag", 1, 60) >= 1
            facts = dict((await backend.describe()).facts)
            assert facts["tls"] == "on"
        finally:
            await backend.aclose()

    async def test_mutual_tls_with_a_client_certificate(self, mtls_server: RedisServer) -> None:
        """A server that requires client certificates accepts the configured one."""
        config = RedisStorageConfig(
            url=mtls_server.tls_url,
            ca_file=mtls_server.ca_path,
            cert_file=mtls_server.client_cert_path,
            key_file=mtls_server.client_key_path,
        )
        backend = RedisBackend.connect(config)
        try:
            assert await backend.rate_limiter().increment("mtls", 1, 60) >= 1
        finally:
            await backend.aclose()

    async def test_mutual_tls_without_a_certificate_fails(self, mtls_server: RedisServer) -> None:
        """Without a client certificate, the server that requires one is a BackendError."""
        config = RedisStorageConfig(url=mtls_server.tls_url, ca_file=mtls_server.ca_path)
        backend = RedisBackend.connect(config)
        try:
            with pytest.raises(BackendError):
                await backend.rate_limiter().current("k")
        finally:
            await backend.aclose()


# --- ACL ---


# A user of its own: the session's ACL server keeps its aa-driver user as other tests
# expect it.
README_USER = "aa-driver-readme"


async def _never_loaded(agent_id: AgentId) -> PolicyDocument:
    raise AssertionError("the lease was denied, so no loader runs")


def _set_user(server: RedisServer, name: str, rule: list[str]) -> str:
    with server.client() as admin:
        admin.execute_command("ACL", "SETUSER", name, "reset", *rule)
    return server.url_for(user=name, password="CHANGE-ME")


class TestLeastPrivilegeContract(ContractSuite):
    """The whole contract holds for a user with exactly the README's ACL rule."""

    @pytest_asyncio.fixture
    async def backend(self, acl_redis_server: RedisServer) -> AsyncIterator[RedisBackend]:
        acl_redis_server.flushall()
        url = _set_user(acl_redis_server, README_USER, readme_acl_rule())
        backend = RedisBackend.connect(acl_redis_server.backend_config(url=url))
        yield backend
        await backend.aclose()


@pytest.mark.asyncio
class TestAcl:
    async def test_user_without_the_prefix_is_denied(self, acl_redis_server: RedisServer) -> None:
        """A user whose keys exclude aa:* gets a BackendError saying permission was denied."""
        rule = [part if not part.startswith("~") else "~other:*" for part in readme_acl_rule()]
        url = _set_user(acl_redis_server, "aa-outsider", rule)
        backend = RedisBackend.connect(RedisStorageConfig(url=url))
        try:
            for call in (
                backend.rate_limiter().increment("k", 1, 60),
                backend.rate_limiter().current("k"),
                backend.sessions().load(SessionId.new()),
            ):
                with pytest.raises(BackendError, match="permission denied"):
                    await call
        finally:
            await backend.aclose()

    async def test_each_denial_names_the_grant_it_lacks(
        self, acl_redis_server: RedisServer
    ) -> None:
        """A key outside the user's patterns names the key and the patterns to grant; a
        command the user lacks names its grant; a command refused inside a script names
        the script and every grant it needs, not the script's SHA."""
        outsider = [part if not part.startswith("~") else "~other:*" for part in readme_acl_rule()]
        timeless = [part for part in readme_acl_rule() if part != "+time"]
        no_get = [part for part in readme_acl_rule() if part != "+get"]
        server = f"redis://{{user}}:***@127.0.0.1:{acl_redis_server.port}"
        cases = [
            (
                outsider,
                lambda backend: backend.rate_limiter().current("k"),
                "the user may not access the key 'aa:ratelimit:k'; grant a key pattern that "
                "covers it: ~<key_prefix>* for the stores and ~{<key_prefix>* for "
                "get_or_load's leases, as in the README's ACL rule",
            ),
            (
                no_get,
                lambda backend: backend.rate_limiter().current("k"),
                "the user may not run GET; grant +get",
            ),
            (
                timeless,
                lambda backend: backend.policies().get_or_load(AgentId.new(), _never_loaded, 60),
                "the user may run scripts, but not every command that the driver's "
                "'get_or_lease' script calls (GET, PTTL, TIME, SET); grant +get +pttl +time "
                "+set, as in the README's ACL rule",
            ),
        ]
        for number, (rule, call, grant) in enumerate(cases):
            user = f"aa-lacking-{number}"
            url = _set_user(acl_redis_server, user, rule)
            backend = RedisBackend.connect(acl_redis_server.backend_config(url=url))
            try:
                with pytest.raises(BackendError) as caught:
                    await call(backend)
            finally:
                await backend.aclose()
            assert str(caught.value) == (
                f"permission denied by redis at {server.format(user=user)}: {grant}"
            )

    async def test_wrong_password_is_a_refused_login(self, acl_redis_server: RedisServer) -> None:
        """A bad password is a BackendError about the login, without the password in it."""
        url = acl_redis_server.url_for(user=README_USER, password=SECRET)
        _set_user(acl_redis_server, README_USER, readme_acl_rule())
        backend = RedisBackend.connect(RedisStorageConfig(url=url))
        try:
            with pytest.raises(BackendError, match="refused the login") as caught:
                await backend.rate_limiter().current("k")
            assert SECRET not in str(caught.value)
        finally:
            await backend.aclose()

    async def test_describe_says_what_it_may_not_read(self, acl_redis_server: RedisServer) -> None:
        """With the README rule (no INFO, no ACL WHOAMI), describe() says those facts are not
        permitted, and warns of no eviction policy it could not read."""
        url = _set_user(acl_redis_server, README_USER, readme_acl_rule())
        backend = RedisBackend.connect(acl_redis_server.backend_config(url=url))
        try:
            info = await backend.describe()
        finally:
            await backend.aclose()
        facts = dict(info.facts)
        denied_info = "not permitted (INFO is denied to this user)"
        assert [facts[name] for name in ("version", "mode", "maxmemory_policy")] == [
            denied_info
        ] * 3
        assert facts["user"] == "not permitted (ACL WHOAMI is denied to this user)"
        assert info.warnings == ()


class TestCheckUnderTheReadmeRule:
    def test_passes_and_says_what_it_may_not_read(
        self, acl_redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`aa-storage check` as a user with exactly the README's rule passes, says which
        facts it may not read, and prints no "unknown" and no warning it cannot back."""
        url = _set_user(acl_redis_server, README_USER, readme_acl_rule())
        config = tmp_path / "acl.toml"
        config.write_text(f'[storage]\nbackend = "redis"\n[storage.redis]\nurl = "{url}"\n')
        assert main(["check", "--config", str(config)]) == 0
        out, err = capsys.readouterr()
        assert err == ""
        *report, traffic = out.partition("\n[redis]\n")[2].partition("\n\n")[0].splitlines()
        assert re.fullmatch(r"  traffic: \d+ commands in \d+ socket writes .*", traffic)
        assert report == [
            f"  server: redis://{README_USER}:***@127.0.0.1:{acl_redis_server.port}",
            "  topology: standalone",
            "  version: not permitted (INFO is denied to this user)",
            "  mode: not permitted (INFO is denied to this user)",
            "  tls: off",
            "  user: not permitted (ACL WHOAMI is denied to this user)",
            "  key_prefix: aa:",
            "  maxmemory_policy: not permitted (INFO is denied to this user)",
            "  scripts: by SHA (EVALSHA)",
            "  near_cache: off",
            "  telemetry: on, but no SDK is set up behind the OpenTelemetry API: nothing is "
            "emitted",
        ]
        assert "unknown" not in out
        assert "WARNING" not in out

    def test_fails_on_get_or_load_when_the_rule_lacks_time(
        self, acl_redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A rule without ``+time`` lets every other operation through, but leases need the
        server's clock: check fails at get_or_load, in one line that names it."""
        rule = [part for part in readme_acl_rule() if part != "+time"]
        assert len(rule) == len(readme_acl_rule()) - 1
        url = _set_user(acl_redis_server, "aa-timeless", rule)
        config = tmp_path / "acl.toml"
        config.write_text(f'[storage]\nbackend = "redis"\n[storage.redis]\nurl = "{url}"\n')
        assert main(["check", "--config", str(config)]) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err.startswith("aa-storage: BackendError: policy_store get_or_load via redis: ")
        assert "permission denied" in err
        assert "grant +get +pttl +time +set" in err
        assert err.count("\n") == 1


# --- passwords that need percent-encoding ---

EVERY_SPECIAL = "#/?@:%[] !\"$&'()*+,;=<>\\^`{|}~\t\n-_.ü€🔑"
password_chars = st.one_of(
    st.sampled_from(string.printable + "/#?@:%[]"),
    st.characters(min_codepoint=0x80, exclude_categories=["Cs"]),
)


async def _logs_in(server: RedisServer, password: str) -> str:
    """Log in as a user with ``password`` (percent-encoded in the URL) and count once;
    returns the backend's repr."""
    rule = [f">{password}" if part == ">CHANGE-ME" else part for part in readme_acl_rule()]
    with server.client() as admin:
        admin.execute_command("ACL", "SETUSER", "aa-odd", "reset", *rule)
    url = f"redis://aa-odd:{quote(password, safe='')}@127.0.0.1:{server.port}"
    backend = RedisBackend.connect(load_config(redis_section(url)).drivers["redis"])
    try:
        assert await backend.rate_limiter().increment("odd", 1, 60) >= 1
        return repr(backend)
    finally:
        await backend.aclose()


def redis_section(url: str) -> dict[str, Any]:
    return {"storage": {"backend": "redis", "redis": {"url": url}}}


class TestEncodedPasswords:
    @pytest.mark.asyncio
    async def test_every_special_character(self, acl_redis_server: RedisServer) -> None:
        """A password holding every URL delimiter, space, a tab, a line break and non-ASCII
        logs in when percent-encoded, and the backend's repr shows none of it."""
        shown = await _logs_in(acl_redis_server, EVERY_SPECIAL)
        assert EVERY_SPECIAL not in shown
        assert quote(EVERY_SPECIAL, safe="") not in shown
        assert "aa-odd:***@" in shown

    @settings(max_examples=25, deadline=None)
    @given(password=st.text(password_chars, min_size=1, max_size=20))
    def test_any_password(self, acl_redis_server: RedisServer, password: str) -> None:
        """Any password, percent-encoded with urllib.parse.quote, logs in."""
        asyncio.run(_logs_in(acl_redis_server, password))

    def test_check_never_shows_it(
        self, acl_redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`aa-storage check` with a percent-encoded password passes and prints the password
        neither encoded nor decoded."""
        asyncio.run(_logs_in(acl_redis_server, EVERY_SPECIAL))
        encoded = quote(EVERY_SPECIAL, safe="")
        config = tmp_path / "odd.toml"
        config.write_text(
            '[storage]\nbackend = "redis"\n[storage.redis]\n'
            f'url = "redis://aa-odd:{encoded}@127.0.0.1:{acl_redis_server.port}"\n'
        )
        assert main(["check", "--config", str(config)]) == 0
        out, err = capsys.readouterr()
        for secret in (EVERY_SPECIAL, encoded, encoded[:12], "€🔑"):
            assert secret not in out + err


# --- tenants ---

keys = st.sampled_from(["a", "b", "{x}"])
ids = st.sampled_from(["11" * 16, "22" * 16])
operations = st.lists(
    st.tuples(
        st.sampled_from([0, 1]),
        st.sampled_from(
            [
                "increment",
                "current",
                "reset",
                "save",
                "load",
                "delete",
                "cache",
                "get",
                "invalidate",
            ]
        ),
        keys,
        ids,
        st.integers(0, 100),
    ),
    min_size=1,
    max_size=25,
)


async def _apply(backend: Any, operation: str, key: str, hex_id: str, amount: int) -> Any:
    sessions, counter, policies = backend.sessions(), backend.rate_limiter(), backend.policies()
    session, agent = SessionId.from_hex(hex_id), AgentId.from_hex(hex_id)
    calls = {
        "increment": lambda: counter.increment(key, amount, 600),
        "current": lambda: counter.current(key),
        "reset": lambda: counter.reset(key),
        "save": lambda: sessions.save(SessionRecord(session, agent, amount)),
        "load": lambda: sessions.load(session),
        "delete": lambda: sessions.delete(session),
        "cache": lambda: policies.cache_policy(agent, PolicyDocument(amount, key, []), 600),
        "get": lambda: policies.get_policy(agent),
        "invalidate": lambda: policies.invalidate(agent),
    }
    try:
        return await calls[operation]()
    except StorageError as exc:
        return type(exc)


@settings(max_examples=40, deadline=None)
@given(steps=operations)
def test_tenants_never_see_each_other(redis_server: RedisServer, steps: list[Any]) -> None:
    """Two backends with different key prefixes on one server behave exactly like two
    separate in-memory stores: nothing one does is visible to the other."""

    async def run() -> None:
        redis_server.flushall()
        tenants = [
            RedisBackend.connect(RedisStorageConfig(url=redis_server.url, key_prefix=prefix))
            for prefix in ("tenant1:", "tenant2:")
        ]
        models = [MemoryBackend(), MemoryBackend()]
        try:
            for tenant, *step in steps:
                expected = await _apply(models[tenant], *step)
                assert await _apply(tenants[tenant], *step) == expected, step
        finally:
            for backend in tenants:
                await backend.aclose()

    asyncio.run(run())


# --- secrets ---


def _texts_of(exc: BaseException) -> Iterator[str]:
    """Every text an exception and its chain could show."""
    seen: BaseException | None = exc
    while seen is not None:
        yield str(seen)
        yield repr(seen)
        yield from (str(arg) for arg in seen.args)
        seen = seen.__cause__ or seen.__context__


class TestSecrets:
    async def _failing_calls(self, url: str, **settings: Any) -> list[BaseException]:
        backend = RedisBackend.connect(
            RedisStorageConfig(url=url, connect_timeout=0.5, socket_timeout=0.5, **settings)
        )
        failures: list[BaseException] = []
        try:
            for call in (
                backend.rate_limiter().increment("k", 1, 60),
                backend.sessions().load(SessionId.new()),
                backend.policies().get_policy(AgentId.new()),
            ):
                try:
                    await call
                except StorageError as exc:
                    failures.append(exc)
            assert SECRET not in repr(backend)
        finally:
            await backend.aclose()
        return failures

    @pytest.mark.asyncio
    async def test_password_never_shown_on_failures(
        self,
        tls_redis_server: RedisServer,
        acl_redis_server: RedisServer,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Unreachable server, refused login and failed TLS: the password is in no error or log."""
        caplog.set_level(logging.DEBUG)
        (closed_port,) = free_ports(1)
        failures = await self._failing_calls(f"redis://user:{SECRET}@127.0.0.1:{closed_port}")
        failures += await self._failing_calls(acl_redis_server.url_for("aa-driver", SECRET))
        tls = tls_redis_server.tls_url.replace("rediss://", f"rediss://user:{SECRET}@")
        failures += await self._failing_calls(tls, ca_file=tls_redis_server.other_ca_path)
        assert len(failures) == 9
        for failure in failures:
            assert isinstance(failure, BackendError)
            for text in _texts_of(failure):
                assert SECRET not in text
        assert SECRET not in caplog.text

    def test_password_never_shown_by_bad_config(self, caplog: pytest.LogCaptureFixture) -> None:
        """A bad config around a password-bearing URL never quotes the password."""
        caplog.set_level(logging.DEBUG)
        for section in (
            {"url": f"http://user:{SECRET}@h:1"},
            {"url": f"redis://user:{SECRET}@h:1", "pool_size": 0},
            {"url": f"redis://user:{SECRET}@h:notaport"},
            {"url": f"redis://h:1/0?password={SECRET}"},
        ):
            with pytest.raises(ConfigError) as caught:
                load_config({"storage": {"backend": "redis", "redis": section}})
            for text in _texts_of(caught.value):
                assert SECRET not in text
        assert SECRET not in caplog.text

    def test_cli_never_prints_the_password(
        self,
        acl_redis_server: RedisServer,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """aa-storage check, failing or passing, prints the user but never the password."""
        good = tmp_path / "good.toml"
        good.write_text(
            f'[storage]\nbackend = "redis"\n[storage.redis]\nurl = "{acl_redis_server.url}"\n'
        )
        assert main(["check", "--config", str(good)]) == 0
        bad = tmp_path / "bad.toml"
        bad.write_text(
            '[storage]\nbackend = "redis"\n[storage.redis]\n'
            f'url = "{acl_redis_server.url_for("nobody", SECRET)}"\n'
        )
        assert main(["check", "--config", str(bad)]) == 1
        output = capsys.readouterr()
        assert ADMIN_PASSWORD not in output.out + output.err
        assert SECRET not in output.out + output.err
        assert "redis://:***@127.0.0.1" in output.out
