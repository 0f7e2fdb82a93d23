"""``[storage.redis]``: defaults, validation errors that name the field, TLS upgrade, redaction."""

from __future__ import annotations

import inspect
import logging
import re
import string
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aa_storage import InvalidConfigError, load_config, open_storage
from aa_storage_redis import RedisBackend, RedisStorageConfig, build_pool

SECRET = "s3cr3t-pw"


def redis_section(**settings: Any) -> dict[str, Any]:
    return {"storage": {"backend": "redis", "redis": settings}}


class TestDefaults:
    def test_missing_section_means_defaults(self) -> None:
        """backend = "redis" with no [storage.redis] section gives the default settings."""
        config = load_config({"storage": {"backend": "redis"}})
        assert config.drivers["redis"] == RedisStorageConfig()
        redis_default_port = inspect.signature(redis.Redis).parameters["port"].default
        assert RedisStorageConfig().url == f"redis://127.0.0.1:{redis_default_port}"

    def test_defaults_are_bounded(self) -> None:
        """Every timeout has a finite default, and the prefix is aa:."""
        config = RedisStorageConfig()
        assert (config.pool_size, config.key_prefix, config.tls) == (2, "aa:", False)
        assert 0 < config.connect_timeout <= 5
        assert 0 < config.socket_timeout <= 5
        assert 0 < config.max_pending <= 100_000

    def test_pool_timeout_is_gone_and_says_what_replaced_it(self) -> None:
        """A config that still sets pool_timeout is an error naming what bounds a call now."""
        with pytest.raises(InvalidConfigError) as caught:
            load_config(redis_section(pool_size=0, pool_timeout=1.0))
        assert caught.value.problems == [
            "storage.redis.pool_size: must lie in [1, 64], got 0",
            "storage.redis.pool_timeout: removed: callers no longer wait for a free connection, "
            "since every call shares the multiplexed connections; connect_timeout + "
            "socket_timeout bound each call, and max_pending bounds how many may wait",
        ]

    def test_toml_file_is_structured(self, tmp_path: Path) -> None:
        """A TOML file's [storage.redis] section becomes a RedisStorageConfig."""
        path = tmp_path / "agent-assembly.toml"
        path.write_text(
            '[storage]\nbackend = "redis"\n[storage.redis]\n'
            'url = "redis://10.0.0.5:7000/2"\npool_size = 3\nkey_prefix = "t1:"\n'
            "connect_timeout = 2\nsocket_timeout = 0.25\nretries = 0\n"
        )
        config = load_config(path).drivers["redis"]
        assert config == RedisStorageConfig(
            url="redis://10.0.0.5:7000/2",
            pool_size=3,
            key_prefix="t1:",
            connect_timeout=2.0,
            socket_timeout=0.25,
            retries=0,
        )


class TestValidation:
    @pytest.mark.parametrize(
        ("settings", "problem"),
        [
            (
                {"pool_sise": 3},
                "storage.redis.pool_sise: unknown key; did you mean pool_size?",
            ),
            ({"pool_size": 0}, "storage.redis.pool_size: must lie in [1, 64], got 0"),
            ({"pool_size": "10"}, "storage.redis.pool_size: expected int, got str"),
            ({"pool_size": 2.5}, "storage.redis.pool_size: expected int, got float"),
            ({"tls": "yes"}, "storage.redis.tls: expected bool, got str"),
            (
                {"url": "http://127.0.0.1:1"},
                "storage.redis.url: the scheme must be one of redis://, rediss://, "
                "redis+cluster://, "
                "rediss+cluster://, redis+sentinel://, rediss+sentinel://, got 'http'",
            ),
            ({"url": "redis://"}, "storage.redis.url: the URL names no host"),
            (
                {"url": "redis://h:1/abc"},
                "storage.redis.url: the database must be a number, as in /0",
            ),
            (
                {"url": "redis://h:1/0?socket_timeout=5"},
                "storage.redis.url: query parameters are not supported in "
                "'redis://h:1/0?socket_timeout=5'; use the [storage.redis] settings, "
                "and user:password@ for credentials",
            ),
            (
                {"socket_timeout": -1},
                "storage.redis.socket_timeout: must be a positive number of seconds, got -1.0",
            ),
            (
                {"connect_timeout": float("inf")},
                "storage.redis.connect_timeout: must be a positive number of seconds, got inf",
            ),
            ({"retries": -1}, "storage.redis.retries: must lie in [0, 10], got -1"),
            (
                {"lease_ttl": 0},
                "storage.redis.lease_ttl: must be a positive number of seconds, got 0.0",
            ),
            (
                {"lease_ttl": 3601},
                "storage.redis.lease_ttl: must be at most 3600 seconds, got 3601.0",
            ),
            (
                {"lease_wait": float("nan")},
                "storage.redis.lease_wait: must be a positive number of seconds, got nan",
            ),
            ({"lease_wait": "2s"}, "storage.redis.lease_wait: expected float, got str"),
            (
                {"url": "redis+cluster://h:1", "key_prefix": "a}b:"},
                "storage.redis.key_prefix: on a cluster, a '}' must close a '{' hash tag: "
                "otherwise a policy's get_or_load lease would hash to another slot than the "
                "policy",
            ),
            ({"key_prefix": ""}, "storage.redis.key_prefix: must not be empty"),
            (
                {"ca_file": "/no/such/ca.pem"},
                "storage.redis.ca_file: no such file '/no/such/ca.pem'",
            ),
        ],
    )
    def test_bad_values_name_their_field(self, settings: dict[str, Any], problem: str) -> None:
        """Each bad value is a ConfigError whose line names the field by its path."""
        with pytest.raises(InvalidConfigError) as caught:
            load_config(redis_section(**settings))
        assert caught.value.problems == [problem]

    def test_every_problem_is_reported_at_once(self) -> None:
        """Several bad values give one line each, in one error."""
        with pytest.raises(InvalidConfigError) as caught:
            load_config(redis_section(pool_size="x", retries="y", colour="blue"))
        assert sorted(caught.value.problems) == [
            "storage.redis.colour: unknown key",
            "storage.redis.pool_size: expected int, got str",
            "storage.redis.retries: expected int, got str",
        ]

    def test_problems_come_in_file_order(self, tmp_path: Path) -> None:
        """Problems are listed in the order of their keys in the file, neither alphabetical
        nor in the order of the config's fields."""
        path = tmp_path / "agent-assembly.toml"
        path.write_text(
            '[storage]\nbackend = "redis"\n[storage.redis]\n'
            'socket_timeout = "slow"\nzeta = 1\npool_size = "x"\ncolour = "blue"\ntls = 1\n'
        )
        with pytest.raises(InvalidConfigError) as caught:
            load_config(path)
        assert caught.value.problems == [
            "storage.redis.socket_timeout: expected float, got str",
            "storage.redis.zeta: unknown key",
            "storage.redis.pool_size: expected int, got str",
            "storage.redis.colour: unknown key",
            "storage.redis.tls: expected bool, got int",
        ]
        path.write_text(
            '[storage]\nbackend = "redis"\n[storage.redis]\n'
            "retries = 11\nsocket_timeout = 0\npool_size = 0\n"
        )
        with pytest.raises(InvalidConfigError) as caught:
            load_config(path)
        assert [problem.partition(":")[0] for problem in caught.value.problems] == [
            "storage.redis.retries",
            "storage.redis.socket_timeout",
            "storage.redis.pool_size",
        ]

    def test_key_file_needs_cert_file(self, tmp_path: Path) -> None:
        """A client key without a client certificate is refused."""
        key = tmp_path / "client.key"
        key.write_text("x")
        with pytest.raises(InvalidConfigError, match="key_file: needs cert_file too"):
            load_config(redis_section(key_file=str(key)))


class TestTls:
    def test_tls_upgrades_the_scheme(self) -> None:
        """tls = true turns redis:// into rediss://."""
        config = RedisStorageConfig(url="redis://cache:7000", tls=True)
        assert (config.effective_url, config.uses_tls) == ("rediss://cache:7000", True)

    def test_rediss_url_means_tls(self) -> None:
        """A rediss:// URL uses TLS even when tls is false."""
        assert RedisStorageConfig(url="rediss://cache:7000").uses_tls


class TestRedaction:
    URL = f"redis://driver:{SECRET}@cache.internal:7000/0"

    def test_repr_hides_the_password(self) -> None:
        """The config's repr shows user and host but *** for the password."""
        text = repr(RedisStorageConfig(url=self.URL))
        assert "url='redis://driver:***@cache.internal:7000/0'" in text
        assert SECRET not in text

    def test_backend_and_storage_reprs_hide_the_password(self) -> None:
        """Nothing built from a password-bearing config shows the password in repr or str."""
        storage = open_storage(redis_section(url=self.URL))
        for thing in (storage, storage.config, storage.backends["redis"], storage.sessions):
            assert SECRET not in repr(thing)
            assert SECRET not in str(thing)

    def test_bad_url_errors_hide_the_password(self) -> None:
        """A rejected URL's error names the problem and never its password."""
        with pytest.raises(InvalidConfigError) as caught:
            load_config(redis_section(url=f"http://u:{SECRET}@h:1"))
        assert SECRET not in str(caught.value)
        assert str(caught.value).endswith("got 'http'")


ENCODING_HINT = (
    "percent-encode the user name and password: urllib.parse.quote(password, safe='') "
    "turns # into %23, / into %2F, ? into %3F, @ into %40 and % into %25"
)
SPECIALS = "#/?@"
# Any text a password may hold: printable ASCII, the URL delimiters, and non-ASCII.
password_chars = st.one_of(
    st.sampled_from(string.printable + "/#?@:%[]"),
    st.characters(min_codepoint=0x80, exclude_categories=["Cs"]),
)
unencoded_passwords = st.builds(
    lambda head, special, tail: head + special + tail,
    st.text(password_chars, max_size=15),
    st.sampled_from(SPECIALS),
    st.text(password_chars, max_size=15),
)


def _url_problem(url: str, caplog: pytest.LogCaptureFixture) -> tuple[str, str]:
    """The one problem load_config reports for ``url``, and everything it shows (message,
    repr, problems, and the log)."""
    with pytest.raises(InvalidConfigError) as caught:
        load_config(redis_section(url=url))
    [problem] = caught.value.problems
    shown = "\n".join([str(caught.value), repr(caught.value), problem, caplog.text])
    return problem, shown


def _fragments(password: str) -> set[str]:
    return {password[i : i + 3] for i in range(len(password) - 2)} | {password}


class TestUnencodedPasswords:
    """A password with an unencoded URL delimiter makes the URL ambiguous: it is refused
    without showing any of it, and the message says how to encode it."""

    @pytest.mark.parametrize(
        ("password", "problem"),
        [
            ("Hunter2#x", "it holds a '#', which would end the URL there"),
            ("16599#Zq9", "it holds a '#', which would end the URL there"),
            ("p@ss", "it holds more than one '@'"),
            ("a/b", "a '/' or '?' comes before the '@', which would end the host there"),
            ("a?b", "a '/' or '?' comes before the '@', which would end the host there"),
            ("50%off", "a '%' before the '@' does not start a percent-encoded character"),
            ("tab\there", "it holds a control character (a tab or a line break)"),
        ],
    )
    def test_each_ambiguity_is_named(
        self, password: str, problem: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Each kind of ambiguity is one line that names it, gives the encoding hint, and
        never quotes the URL."""
        line, shown = _url_problem(f"redis://app:{password}@cache:7000/0", caplog)
        assert line == f"storage.redis.url: cannot read the URL: {problem}; {ENCODING_HINT}"
        assert password not in shown
        assert "cache" not in line

    def test_non_numeric_port_is_not_quoted(self, caplog: pytest.LogCaptureFixture) -> None:
        """A port that is not a number (where a parser may have cut a password) is refused
        without quoting it."""
        line, shown = _url_problem("redis://app:Hunter2@cache:Hunter3/0", caplog)
        assert "Hunter" not in shown
        assert line.endswith(ENCODING_HINT)

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(password=unencoded_passwords)
    def test_no_part_of_the_password_is_shown(
        self, password: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Whatever else it holds, a password with an unencoded # / ? or @ is refused, and
        neither it nor any 3-character piece of it is shown (in the message, the repr or
        the log), unless that piece is part of the fixed text every such message shares."""
        caplog.clear()
        caplog.set_level(logging.DEBUG)
        problem, shown = _url_problem(f"redis://app:{password}@cache:7000/0", caplog)
        assert problem.startswith("storage.redis.url: cannot read the URL: ")
        assert problem.endswith(ENCODING_HINT)
        leaked = {piece for piece in _fragments(password) if piece in shown}
        assert leaked <= {piece for piece in leaked if piece in FIXED_TEXT}

    @settings(max_examples=300, deadline=None)
    @given(password=st.text(password_chars, min_size=1, max_size=30))
    def test_encoded_passwords_are_accepted_and_hidden(self, password: str) -> None:
        """Any password, percent-encoded, is accepted and shown as *** in the repr."""
        url = f"redis://app:{quote(password, safe='')}@cache:7000/0"
        config = load_config(redis_section(url=url)).drivers["redis"]
        assert repr(config).startswith("RedisStorageConfig(url='redis://app:***@cache:7000/0'")


# Every message about an ambiguous URL is built from these words only.
FIXED_TEXT = "\n".join(
    [
        "invalid storage configuration: storage.redis.url: cannot read the URL: ",
        ENCODING_HINT,
        *(
            f"storage.redis.url: cannot read the URL: {problem}; {ENCODING_HINT}"
            for problem in (
                "it holds a '#', which would end the URL there",
                "it holds more than one '@'",
                "a '/' or '?' comes before the '@', which would end the host there",
                "a '%' before the '@' does not start a percent-encoded character",
                "it holds a control character (a tab or a line break)",
                "a host does not parse as host[:port] or [ipv6][:port]",
            )
        ),
        "InvalidConfigError(",
    ]
)


class TestUrlMistakes:
    """Each common slip in a URL gets one line that names it and says what to write, and
    never quotes a password."""

    @pytest.mark.parametrize(
        ("url", "problem"),
        [
            (
                f"redis:/app:{SECRET}@cache:7000",
                "'://' is missing after 'redis:'; write redis://host:port "
                "(or redis://user:password@host:port)",
            ),
            (
                "redis:/127.0.0.1:7000",
                "'://' is missing after 'redis:'; write redis://host:port "
                "(or redis://user:password@host:port)",
            ),
            (
                f"rediss+cluster:app:{SECRET}@cache:7000",
                "'://' is missing after 'rediss+cluster:'; write rediss+cluster://host:port "
                "(or rediss+cluster://user:password@host:port)",
            ),
            (
                f"app:{SECRET}@cache:7000",
                "the URL must start with one of redis://, rediss://, redis+cluster://, "
                "rediss+cluster://, redis+sentinel://, rediss+sentinel://, and '://' must "
                "follow the scheme",
            ),
            (
                f"redis:/app:{SECRET}@cache/0?x=1",
                "'://' is missing after 'redis:'; write redis://host:port "
                "(or redis://user:password@host:port)",
            ),
            (
                f"app:{SECRET}@redis://cache:7000",
                "the scheme must be one of redis://, rediss://, redis+cluster://, "
                "rediss+cluster://, redis+sentinel://, rediss+sentinel://",
            ),
            (
                "redis://127.0.0.1:99999",
                "the port of host '127.0.0.1' must be a number in [1, 65535]; check the "
                "digits after the host's ':'",
            ),
            (
                f"redis+cluster://app:{SECRET}@10.0.0.1:7000,10.0.0.2:700000",
                "the port of host '10.0.0.2' must be a number in [1, 65535]; check the "
                "digits after the host's ':'",
            ),
            (
                "redis://cache:63x9",
                "cannot read the URL: a host does not parse as host[:port] or "
                "[ipv6][:port]; write each host as host:port with a numeric port, and "
                "separate hosts with ','",
            ),
        ],
    )
    def test_says_what_is_wrong_and_what_to_write(
        self, url: str, problem: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The problem line is exactly the one for this slip, and the password is not shown."""
        line, shown = _url_problem(url, caplog)
        assert line == f"storage.redis.url: {problem}"
        assert SECRET not in shown

    @pytest.mark.parametrize(
        ("url", "warnings"),
        [
            (
                "redis+cluster://10.0.0.1,10.0.0.2:7000,10.0.0.3",
                [
                    "the URL gives cluster node 10.0.0.1 no port; assuming 6379, the default "
                    "port of a cluster node (write 10.0.0.1:PORT to choose another)",
                    "the URL gives cluster node 10.0.0.3 no port; assuming 6379, the default "
                    "port of a cluster node (write 10.0.0.3:PORT to choose another)",
                ],
            ),
            (
                "rediss+sentinel://s1:26380,s2/aa-primary",
                [
                    "the URL gives sentinel s2 no port; assuming 26379, the default port of "
                    "a sentinel (write s2:PORT to choose another)",
                ],
            ),
            ("redis+cluster://10.0.0.1:7000,10.0.0.2:7001", []),
            ("redis://127.0.0.1", []),
        ],
    )
    def test_a_node_without_a_port_says_which_port_is_assumed(
        self, url: str, warnings: list[str], caplog: pytest.LogCaptureFixture
    ) -> None:
        """A cluster node or sentinel without a port gets the default, and a warning saying
        so; a single server's 6379 is the usual one and passes without a word."""
        config = RedisStorageConfig(url=url)
        with caplog.at_level(logging.WARNING, logger="aa_storage_redis.backend"):
            RedisBackend.connect(config)
        said = [r.getMessage() for r in caplog.records if r.name == "aa_storage_redis.backend"]
        assert said == warnings


class TestCleartextWarning:
    def test_remote_cleartext_warns_once(self, caplog: pytest.LogCaptureFixture) -> None:
        """Plain redis:// to a non-loopback host logs one warning, without the password."""
        with caplog.at_level(logging.WARNING, logger="aa_storage_redis"):
            RedisBackend.connect(RedisStorageConfig(url=f"redis://:{SECRET}@10.1.2.3:7000"))
        assert [r.getMessage() for r in caplog.records] == [
            "connecting to redis://:***@10.1.2.3:7000 without TLS: "
            "traffic and the password travel in the clear"
        ]

    @pytest.mark.parametrize(
        "url", ["redis://127.0.0.1:7000", "redis://localhost:7000", "redis://[::1]:7000"]
    )
    def test_loopback_does_not_warn(self, url: str, caplog: pytest.LogCaptureFixture) -> None:
        """Plain redis:// on this machine is not worth a warning."""
        with caplog.at_level(logging.WARNING, logger="aa_storage_redis"):
            build_pool(RedisStorageConfig(url=url))
        assert caplog.records == []

    def test_tls_does_not_warn(self, caplog: pytest.LogCaptureFixture) -> None:
        """rediss:// to a remote host is not in the clear."""
        with caplog.at_level(logging.WARNING, logger="aa_storage_redis"):
            build_pool(RedisStorageConfig(url="redis://10.1.2.3:7000", tls=True))
        assert caplog.records == []


def test_problem_lines_have_no_regex_surprises() -> None:
    """The problems list is plain text; each line starts with its storage.redis path."""
    with pytest.raises(InvalidConfigError) as caught:
        load_config(redis_section(pool_size=-4, socket_timeout=0))
    assert all(re.match(r"storage\.redis\.\w+: ", line) for line in caught.value.problems)


class TestDirectConstruction:
    @pytest.mark.parametrize(
        ("settings", "message"),
        [
            ({"url": 3}, "url: expected str, got int"),
            ({"pool_size": True}, "pool_size: expected int, got bool"),
            ({"ca_file": 3}, "ca_file: expected str | None, got int"),
            ({"tls": 1}, "tls: expected bool, got int"),
        ],
    )
    def test_wrong_types_are_type_errors(self, settings: dict[str, Any], message: str) -> None:
        """Built in Python with a value of the wrong type, the config raises a TypeError."""
        with pytest.raises(TypeError, match=re.escape(message)):
            RedisStorageConfig(**settings)

    def test_every_bad_value_is_named_at_once(self) -> None:
        """Several out-of-range values give one ValueError with a line for each."""
        with pytest.raises(ValueError, match="pool_size") as caught:
            RedisStorageConfig(pool_size=0, retries=11, socket_timeout=0)
        assert str(caught.value).splitlines() == [
            "pool_size: must lie in [1, 64], got 0",
            "socket_timeout: must be a positive number of seconds, got 0",
            "retries: must lie in [0, 10], got 11",
        ]

    def test_an_int_timeout_is_a_number_of_seconds(self) -> None:
        """An int is accepted where seconds are a float."""
        assert RedisStorageConfig(connect_timeout=2).connect_timeout == 2


def test_the_url_is_parsed_once_per_config() -> None:
    """Reading ``deployment`` does not parse the URL again: it is the same object each
    time, and a config evolved to another URL has its own."""
    config = RedisStorageConfig(url="redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    assert config.deployment is config.deployment
    moved = attrs.evolve(config, url="redis://127.0.0.1:7002")
    assert moved.deployment.addresses == (("127.0.0.1", 7002),)
    assert config == RedisStorageConfig(url="redis+cluster://127.0.0.1:7000,127.0.0.1:7001")


def test_a_config_round_trips_through_asdict() -> None:
    """``attrs.asdict`` gives the settings alone, which build an equal config: what
    tests and tools hand to another process."""
    config = RedisStorageConfig(url="redis://127.0.0.1:7003", pool_size=3)
    assert config.deployment.addresses == (("127.0.0.1", 7003),)
    assert RedisStorageConfig(**attrs.asdict(config)) == config
