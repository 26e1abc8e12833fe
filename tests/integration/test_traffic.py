"""The local traffic generator (`make up` runs it) pays ETH, TKN and BTC, registers and
reorganises as it says."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.services import AnvilFactory, BtcdService, KafkaService
from tests.support.solidity import TopicReader

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local" / "traffic.py"


def test_traffic_pays_registers_and_reorganises(anvil_factory: AnvilFactory, kafka: KafkaService,
                                                btcd: BtcdService) -> None:
    anvil = anvil_factory()
    topic = f"traffic.{uuid.uuid4().hex[:8]}.registrations"
    btc_height = int(btcd.rpc("getblockcount"))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--interval", "0", "--rounds", "25",
                           "--anvil", anvil.url, "--kafka", kafka.bootstrap_servers,
                           "--btcd", btcd.rpc_url, "--registrations-topic", topic],
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "traffic: demo token TKN placed at 0x7357000000000000000000000000000000000001"
    paid = [line for line in lines if line.startswith("traffic: paid ")]
    # Rounds 1..25: the 25th reorganises; of the others every third pays TKN; every odd one
    # mines a block on btcd and pays BTC.
    assert sum(" wei to " in line for line in paid) == 16
    assert sum(" TKN units to " in line for line in paid) == 8
    assert sum(" sat to " in line for line in paid) == 13
    assert sum(line.startswith("traffic: registered ") for line in lines) == 2
    assert lines[-2] == "traffic: reorganised the last 2 blocks"
    # Deploy and mint, then 24 payments, one block each; the reorg replaced the last two
    # blocks, keeping the height.
    assert int(anvil.rpc("eth_blockNumber"), 16) == 26
    assert anvil.rpc("eth_getCode", "0x7357000000000000000000000000000000000001", "latest") not in ("0x", "")
    assert int(btcd.rpc("getblockcount")) >= btc_height + 13
    # The last BTC payment waits in the mempool (the next round's block would confirm it).
    last_btc = [line for line in paid if " sat to " in line][-1].rsplit(" ", 1)[1]
    assert last_btc in btcd.rpc("getrawmempool")

    async def registrations() -> list[dict[str, object]]:
        reader = TopicReader(kafka.bootstrap_servers, topic)
        await reader.start()
        try:
            return await reader.read_to_end()
        finally:
            await reader.stop()

    regs = asyncio.run(registrations())
    regs.sort(key=lambda r: str(r["label"]))
    assert [(r["chain"], r["label"]) for r in regs] == [("eth", "traffic-customer-10"),
                                                        ("btc", "traffic-customer-20")]
    assert str(regs[0]["address"]).startswith("0x")
    assert str(regs[1]["address"]).startswith("bcrt1q")
