"""Unit tests of redaction: no password may reach anything a person reads."""

from __future__ import annotations

import string
from urllib.parse import quote

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aa_storage.redaction import MASK, redact_url, redact_value, redacted_settings

# Any text a password may hold: printable ASCII, the URL delimiters, and non-ASCII.
passwords = st.text(
    alphabet=st.one_of(
        st.sampled_from(string.printable + "/#?@:%[]"),
        st.characters(min_codepoint=0x80, exclude_categories=["Cs"]),
    ),
    min_size=1,
    max_size=30,
)


class TestRedactUrl:
    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("redis://user:secret@host:1/0", "redis://user:***@host:1/0"),
            ("redis://:secret@host", "redis://:***@host"),
            ("rediss://u:s3cr%40t@h:6380/2", "rediss://u:***@h:6380/2"),
            ("redis://user:p@ss@host/0", "redis://user:***@host/0"),
            ("redis://u:pw@[::1]:7000/0", "redis://u:***@[::1]:7000/0"),
            ("redis://u:pw@h:1/0?ssl_cert_reqs=none", "redis://u:***@h:1/0?ssl_cert_reqs=none"),
        ],
    )
    def test_password_is_masked(self, url: str, shown: str) -> None:
        """The password is replaced by *** and everything else is kept."""
        assert redact_url(url) == shown

    @pytest.mark.parametrize(
        "url",
        ["redis://user@host:7000/0", "redis://host:7000", "rediss://h/2", "unix:///tmp/r.sock"],
    )
    def test_url_without_password_is_unchanged(self, url: str) -> None:
        """A URL without a password (with or without a user) comes back unchanged."""
        assert redact_url(url) == url

    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("redis://user:secret@[::1", "redis://user:***@[::1"),
            ("redis://app:Hunter2#x@host:7000", "redis://app:***@host:7000"),
            ("redis://app:16599#Zq9@redis.internal", "redis://app:***@redis.internal"),
            ("redis://app:a/b?c@host/0", "redis://app:***@host/0"),
            ("redis://pa/ss@host", "redis://***@host"),
            ("redis://host/0?note=a#b@c", "redis://***@c"),
        ],
    )
    def test_url_a_parser_misreads_is_masked_by_its_last_at(self, url: str, shown: str) -> None:
        """Where a URL parser would misread the URL (an unencoded # / ? or @, brackets), all
        between the user's ':' and the last '@' is masked, or all before that '@'."""
        assert redact_url(url) == shown

    @pytest.mark.parametrize("text", ["http://[::1", "not a url", ""])
    def test_unparseable_or_plain_text_without_at_is_unchanged(self, text: str) -> None:
        """Text that holds no @ cannot hold userinfo and comes back unchanged."""
        assert redact_url(text) == text

    @settings(max_examples=300, deadline=None)
    @given(password=passwords)
    def test_no_password_survives(self, password: str) -> None:
        """Whatever the password (any printable or non-ASCII text, with / # ? @ : and %),
        the redacted URL shows the user and host but not it."""
        shown = redact_url(f"redis://user:{password}@host:7000/0")
        assert shown == "redis://user:***@host:7000/0"

    @settings(max_examples=300, deadline=None)
    @given(password=passwords)
    def test_no_encoded_password_survives(self, password: str) -> None:
        """A percent-encoded password is masked too: neither its encoded nor its decoded
        form is shown."""
        shown = redact_url(f"rediss://user:{quote(password, safe='')}@host:7000/0")
        assert shown == "rediss://user:***@host:7000/0"

    def test_password_in_query_is_masked(self) -> None:
        """A password passed as a query argument, which redis-py honours, is masked too."""
        shown = redact_url("redis://host:7000/0?password=hunter2")
        assert "hunter2" not in shown


@attrs.frozen
class SecretiveConfig:
    url: str = "redis://app:pw1@cache:7000/0"
    password: str | None = "pw2"
    auth_token: str = "pw3"
    client_secret: str = "pw4"
    replica_url: str = "redis://replica:7000"
    pool_size: int = 10
    label: str = "plain text"
    tls: bool = True
    spare_password: str | None = None


class TestRedactedSettings:
    def test_attrs_config(self) -> None:
        """Fields named like secrets are masked, URLs lose their password, the rest is kept."""
        assert redacted_settings(SecretiveConfig()) == {
            "url": "redis://app:***@cache:7000/0",
            "password": MASK,
            "auth_token": MASK,
            "client_secret": MASK,
            "replica_url": "redis://replica:7000",
            "pool_size": 10,
            "label": "plain text",
            "tls": True,
            "spare_password": None,
        }

    def test_no_secret_survives(self) -> None:
        """No secret of the config appears anywhere in the redacted settings' text."""
        shown = repr(redacted_settings(SecretiveConfig()))
        assert [secret for secret in ("pw1", "pw2", "pw3", "pw4") if secret in shown] == []

    def test_mapping(self) -> None:
        """A mapping is redacted like an attrs config, and secret names match in any case."""
        settings_map = {"Password": "x", "AUTH_TOKEN": 5, "url": "redis://:p@h", "n": 1}
        assert redacted_settings(settings_map) == {
            "Password": MASK,
            "AUTH_TOKEN": MASK,
            "url": "redis://:***@h",
            "n": 1,
        }

    def test_unset_secret_shows_as_none(self) -> None:
        """A secret field that is not set shows as None, so the reader sees it is unset."""
        assert redact_value("password", None) is None

    def test_secret_of_any_type_is_masked(self) -> None:
        """A secret field is masked whatever its type."""
        assert [redact_value("token", value) for value in (b"t", 42, ["t"])] == [MASK] * 3

    def test_redis_config_url(self) -> None:
        """The redis driver's config shows its URL without the password."""
        from aa_storage_redis.config import RedisStorageConfig

        shown = redacted_settings(RedisStorageConfig(url="redis://u:hunter2@h:1/0"))
        assert shown["url"] == "redis://u:***@h:1/0"
        assert "hunter2" not in repr(shown)
