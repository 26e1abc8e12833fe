"""The local traffic generator (`make up` runs it) pays, registers and reorganises as it says."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.services import AnvilFactory, KafkaService
from tests.support.solidity import TopicReader

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local" / "traffic.py"


def test_traffic_pays_registers_and_reorganises(anvil_factory: AnvilFactory, kafka: KafkaService) -> None:
    anvil = anvil_factory()
    topic = f"traffic.{uuid.uuid4().hex[:8]}.registrations"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--interval", "0", "--rounds", "25",
                           "--anvil", anvil.url, "--kafka", kafka.bootstrap_servers,
                           "--registrations-topic", topic],
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("traffic: paid ") for line in lines) == 24
    assert sum(line.startswith("traffic: registered ") for line in lines) == 2
    assert lines[-1] == "traffic: reorganised the last 2 blocks"
    # 24 payments, one block each; the reorg replaced the last two blocks, keeping the height.
    assert int(anvil.rpc("eth_blockNumber"), 16) == 24

    async def registrations() -> list[dict[str, object]]:
        reader = TopicReader(kafka.bootstrap_servers, topic)
        await reader.start()
        try:
            return await reader.read_to_end()
        finally:
            await reader.stop()

    regs = asyncio.run(registrations())
    assert sorted(str(r["label"]) for r in regs) == ["traffic-customer-10", "traffic-customer-20"]
    assert all(r["chain"] == "eth" and json.dumps(r["address"]).startswith('"0x') for r in regs)
