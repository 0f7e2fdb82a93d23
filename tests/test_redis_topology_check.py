"""``aa-storage check`` on a cluster and on a sentinel set: the shape, and its warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from aa_storage.cli import main
from cluster import LocalCluster
from sentinel import SERVICE, SentinelSet
from servers import free_ports
from test_redis_cli import config_file


def check(tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``aa-storage check`` on ``url``, which must pass; return what it printed."""
    status = main(["check", "--config", config_file(tmp_path, url)])
    out = capsys.readouterr().out
    assert status == 0, out
    return out


class TestClusterCheck:
    def test_shows_primaries_replicas_and_full_coverage(
        self, redis_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = check(tmp_path, redis_cluster.url, capsys)
        assert "  topology: cluster" in out
        assert "  primaries: 3" in out
        assert "  replicas: 3 up of 3" in out
        assert "  slots_covered: 16384 of 16384" in out
        assert "WARNING" not in out

    def test_warns_when_slots_have_no_primary(
        self,
        fresh_redis_cluster: LocalCluster,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Three slots dropped from every node's view: the check counts and says so."""
        cluster = fresh_redis_cluster
        for node in cluster.nodes:
            with node.client() as client:
                # Keys in the other slots keep working, so the check itself can pass.
                client.config_set("cluster-require-full-coverage", "no")
                client.execute_command("CLUSTER", "DELSLOTS", 0, 1, 2)
        out = check(tmp_path, cluster.url, capsys)
        assert "  slots_covered: 16381 of 16384" in out
        assert "WARNING: 3 slots have no primary" in out


class TestSentinelCheck:
    def test_shows_service_primary_sentinels_and_replicas(
        self, sentinel_set: SentinelSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = check(tmp_path, sentinel_set.url, capsys)
        assert "  topology: sentinel" in out
        assert f"  service: {SERVICE}" in out
        assert f"  primary: 127.0.0.1:{sentinel_set.current_primary().port}" in out
        assert "  sentinels_answering: 3 of 3" in out
        assert "  replicas: 2 up of 2" in out
        assert "WARNING" not in out

    def test_warns_when_fewer_than_three_sentinels_answer(
        self, sentinel_set: SentinelSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        [dead_port] = free_ports(1)
        live = sentinel_set.url.removeprefix("redis+sentinel://").split("/")[0].split(",")
        url = f"redis+sentinel://127.0.0.1:{dead_port},{live[0]},{live[1]}/{SERVICE}"
        out = check(tmp_path, url, capsys)
        assert "  sentinels_answering: 2 of 3" in out
        assert "WARNING: only 2 sentinels answer" in out
