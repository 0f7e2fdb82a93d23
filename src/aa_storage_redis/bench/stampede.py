"""The stampede case of ``aa-storage bench``: callers in several processes miss one
cold key at once, and the loader must run exactly once.

Each process is started with ``spawn``, opens its own backend, and waits at a
barrier with the others, so every caller misses the same cold key together.
The loader counts its runs in a Redis counter (through the driver's rate
limiter), then takes ``LOAD_SECS``, so that callers keep arriving while it runs.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import time
import uuid
from multiprocessing.synchronize import Barrier
from typing import Any

import attrs

from aa_storage import AgentId, PolicyDecision, PolicyDocument, PolicyRule, StorageError
from aa_storage_redis.backend import RedisBackend
from aa_storage_redis.config import RedisStorageConfig

PROCESSES = 4
CALLERS = 100
LOAD_SECS = 0.2
POLICY = PolicyDocument(
    1, "aa-storage bench stampede", [PolicyRule("tool:*", PolicyDecision.ALLOW)]
)
_TTL_SECS = 600
# Far above what starting the processes and one load take on a loaded machine.
_PATIENCE_SECS = 120.0


@attrs.frozen
class Stampede:
    """What one stampede did: the callers, the loader's runs, and how many callers
    got the loaded policy."""

    processes: int
    callers: int
    loader_runs: int
    right_answers: int

    def line(self) -> str:
        """The bench's one line about it."""
        verdict = "as it must" if self.loader_runs == 1 else "it must run once"
        return (
            f"stampede: {self.callers} get_or_load callers in {self.processes} processes on a "
            f"cold key: the loader ran {self.loader_runs} time(s), {verdict}; "
            f"{self.right_answers} of {self.callers} callers got its policy"
        )


def stampede(
    config: RedisStorageConfig, processes: int = PROCESSES, callers: int = CALLERS
) -> Stampede:
    """Run ``callers`` concurrent ``get_or_load`` calls, spread over ``processes``
    processes, on one cold key under a fresh prefix; every key it makes is deleted."""
    config = attrs.evolve(config, key_prefix=f"{config.key_prefix}bench-{uuid.uuid4().hex[:12]}:")
    agent, counter = AgentId.new(), "stampede-loader-runs"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    answers = context.Queue()
    shares = [callers // processes + (index < callers % processes) for index in range(processes)]
    workers = [
        context.Process(
            target=_worker, args=(config, agent.hex, counter, share, barrier, answers), daemon=True
        )
        for share in shares
    ]
    for worker in workers:
        worker.start()
    try:
        right = sum(_answer(answers, workers) for _ in workers)
        runs = asyncio.run(_count_and_clean_up(config, agent, counter))
    except BaseException:
        # Interrupted or failed: the workers' answers no longer matter, and waiting
        # for them would hold Ctrl-C up for seconds.
        for worker in workers:
            worker.kill()
        raise
    finally:
        for worker in workers:
            worker.join(_PATIENCE_SECS)
            if worker.is_alive():
                worker.kill()
    return Stampede(processes, callers, runs, right)


def _answer(answers: Any, workers: list[Any]) -> int:
    """The next worker's count of right answers; its failure as a ``StorageError``."""
    deadline = time.monotonic() + _PATIENCE_SECS
    while True:
        try:
            answer: int | str = answers.get(timeout=0.1)
        except queue.Empty:
            if any(worker.exitcode not in (None, 0) for worker in workers):
                raise StorageError("a stampede process died; see its error above") from None
            if time.monotonic() > deadline:
                raise StorageError(f"the stampede took over {_PATIENCE_SECS:g}s") from None
            continue
        if isinstance(answer, str):
            raise StorageError(f"a stampede process failed: {answer}")
        return answer


def _worker(
    config: RedisStorageConfig,
    agent_hex: str,
    counter: str,
    callers: int,
    barrier: Barrier,
    answers: Any,
) -> None:
    try:
        right = asyncio.run(
            _callers(config, AgentId.from_hex(agent_hex), counter, callers, barrier)
        )
    except StorageError as exc:
        answers.put(f"{type(exc).__name__}: {exc}")
    else:
        answers.put(right)


async def _callers(
    config: RedisStorageConfig, agent: AgentId, counter: str, callers: int, barrier: Barrier
) -> int:
    """How many of ``callers`` concurrent calls got the loader's policy."""
    backend = RedisBackend.connect(config)
    try:
        await backend.rate_limiter().current(counter)  # connected before the start

        async def loader(agent_id: AgentId) -> PolicyDocument:
            await backend.rate_limiter().increment(counter, 1, _TTL_SECS)
            await asyncio.sleep(LOAD_SECS)
            return POLICY

        await asyncio.get_running_loop().run_in_executor(None, barrier.wait, _PATIENCE_SECS)
        policies = backend.policies()
        got = await asyncio.gather(
            *(policies.get_or_load(agent, loader, _TTL_SECS) for _ in range(callers))
        )
        return sum(policy == POLICY for policy in got)
    finally:
        await backend.aclose()


async def _count_and_clean_up(config: RedisStorageConfig, agent: AgentId, counter: str) -> int:
    backend = RedisBackend.connect(config)
    try:
        runs = await backend.rate_limiter().current(counter)
        keys = backend.keys
        for key in (keys.rate_limit(counter), keys.policy(agent), keys.policy_lease(agent)):
            await backend.pool.execute("DEL", key, key=key, read=False)
        return runs
    finally:
        await backend.aclose()
