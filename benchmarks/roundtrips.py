"""Latency and throughput of the hot-path operations, side by side with naive versions.

Starts its own redis-server on a free loopback port (and a proxy that adds a
delay to every reply, to show what a round trip costs), runs each operation
the driver's way and the naive two-round-trip way the Rust driver uses, and
prints one table. Run it with:

    .venv/bin/python benchmarks/roundtrips.py [--count 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from aa_storage import AgentId, PolicyDocument, SessionId, SessionRecord
from aa_storage.memory import MemoryBackend
from aa_storage_redis import SESSION_TTL_SECS, RedisBackend, RedisStorageConfig
from faultproxy import FaultProxy
from servers import RedisServer

Operation = Callable[[int], Awaitable[object]]


async def sequential(operation: Operation, count: int) -> list[float]:
    """Per-call latencies in microseconds, one call at a time."""
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        await operation(i)
        latencies.append((time.perf_counter() - started) * 1e6)
    return latencies


async def throughput(operation: Operation, count: int, concurrency: int = 64) -> float:
    """Calls per second with ``concurrency`` callers in one event loop."""

    async def caller(offset: int) -> None:
        for i in range(offset, count, concurrency):
            await operation(i)

    started = time.perf_counter()
    await asyncio.gather(*(caller(offset) for offset in range(concurrency)))
    return count / (time.perf_counter() - started)


def operations(
    backend: RedisBackend | MemoryBackend, raw: aioredis.Redis | None
) -> dict[str, Operation]:
    record = SessionRecord(SessionId.new(), AgentId.new(), time.time_ns())
    agent = AgentId.new()
    policy = PolicyDocument(1, "bench", [])
    found: dict[str, Operation] = {
        "session save": lambda i: backend.sessions().save(record),
        "session load": lambda i: backend.sessions().load(record.session_id),
        "increment": lambda i: backend.rate_limiter().increment("bench", 1, 600),
        "cache_policy": lambda i: backend.policies().cache_policy(agent, policy, 300),
        "get_policy": lambda i: backend.policies().get_policy(agent),
    }
    if raw is None:
        return found
    key = f"aa:session:{record.session_id.hex}"

    async def naive_save(i: int) -> None:  # the Rust driver: HSET, then EXPIRE
        await raw.hset(key, mapping={"agent_id": record.agent_id.bytes, "started_at_ns": 1})
        await raw.expire(key, SESSION_TTL_SECS)

    async def naive_increment(i: int) -> int:  # INCRBY, then EXPIRE on the first hit
        total = int(await raw.incrby("aa:ratelimit:naive", 1))
        if total == 1:
            await raw.expire("aa:ratelimit:naive", 600)
        return total

    found["session save, naive 2 RTT"] = naive_save
    found["increment, naive INCRBY"] = naive_increment
    return found


async def measure(label: str, url: str | None, count: int) -> dict[str, tuple[float, float, float]]:
    if url is None:
        backend: RedisBackend | MemoryBackend = MemoryBackend()
        raw = None
    else:
        backend = RedisBackend.connect(
            RedisStorageConfig(url=url, pool_size=64, socket_timeout=5.0)
        )
        raw = aioredis.Redis.from_url(url, max_connections=64)
    results = {}
    try:
        for name, operation in operations(backend, raw).items():
            await sequential(operation, 50)  # warm: connections, scripts
            latencies = await sequential(operation, count)
            rate = await throughput(operation, count * 2)
            p99 = statistics.quantiles(latencies, n=100)[98]
            results[name] = (statistics.median(latencies), p99, rate)
    finally:
        await backend.aclose()
        if raw is not None:
            await raw.aclose()
    print(f"  measured {label}", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=2000, help="calls per operation")
    parser.add_argument(
        "--delay-ms", type=float, default=1.0, help="delay the proxy adds per reply"
    )
    args = parser.parse_args()
    with RedisServer() as server, FaultProxy("127.0.0.1", server.port) as proxy:
        proxy.latency(args.delay_ms / 1000)
        columns = {
            "memory": asyncio.run(measure("memory", None, args.count)),
            "redis loopback": asyncio.run(measure("redis loopback", server.url, args.count)),
            f"redis +{args.delay_ms:g} ms/reply": asyncio.run(
                measure("redis via delay proxy", proxy.url, max(args.count // 10, 100))
            ),
        }
    names = list(columns["redis loopback"])
    header = f"{'operation':<28}" + "".join(f"{column:>36}" for column in columns)
    print(header)
    print(f"{'':<28}" + f"{'p50 us':>12}{'p99 us':>12}{'ops/s':>12}" * len(columns))
    for name in names:
        cells = ""
        for results in columns.values():
            if name in results:
                p50, p99, rate = results[name]
                cells += f"{p50:>12.1f}{p99:>12.1f}{rate:>12.0f}"
            else:
                cells += f"{'-':>12}{'-':>12}{'-':>12}"
        print(f"{name:<28}{cells}")


if __name__ == "__main__":
    main()
