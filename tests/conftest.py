"""Fixtures shared by test modules (each may still define its own of the same name)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.in_process_cluster import (
    DEADLINE_S,
    InProcessNode,
    in_process_cluster,
    leader_of,
    wait_until,
)


@pytest.fixture
async def members(tmp_path: Path) -> AsyncIterator[list[InProcessNode]]:
    """A 3-node in-process cluster (`tests.in_process_cluster`) with a leader elected."""
    async with in_process_cluster(tmp_path, 3) as started:
        await wait_until(lambda: leader_of(started) is not None, "a leader")
        yield started


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session whose requests give up after `DEADLINE_S`."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as session:
        yield session
