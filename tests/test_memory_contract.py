"""The memory driver passes the contract suite on a fake clock."""

from __future__ import annotations

import pytest

from aa_storage.memory import MemoryBackend
from aa_storage.testing import ContractSuite, FakeClock


class TestMemoryContract(ContractSuite):
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def backend(self, clock: FakeClock) -> MemoryBackend:
        return MemoryBackend(clock=clock)
