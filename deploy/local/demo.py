"""Sends a demo ETH deposit on the local anvil and prints the watcher's events from Kafka.

Run by `make up` once the stack and the watcher are ready. The receiving address is
listed in config/local-addresses.yaml, so the watcher watches it from the start.
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson
from aiokafka import AIOKafkaConsumer
from web3 import Web3

ANVIL = "http://127.0.0.1:8545"
KAFKA = "127.0.0.1:9092"
TOPIC = "payments.deposits"
TO = "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720"   # anvil dev account 9, labelled demo-customer-9


async def main() -> int:
    w3 = Web3(Web3.HTTPProvider(ANVIL))
    sender = w3.eth.accounts[0]
    txid = w3.eth.send_transaction({"from": sender, "to": TO, "value": Web3.to_wei(1.5, "ether")})
    print(f"demo: sent 1.5 ETH to {TO} in {txid.hex()}; mining 3 more blocks")
    for _ in range(3):
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
    consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=KAFKA, isolation_level="read_committed",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    deadline = time.monotonic() + 60
    want = "0x" + txid.hex().removeprefix("0x")
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for r in records:
                    ev = orjson.loads(r.value)
                    print(f"event: {ev['type']:<18} {ev['deposit_id']}  {ev['amount']} {ev['asset']} "
                          f"conf {ev['confirmations']}/{ev['required_confirmations']} "
                          f"label={ev.get('label')}")
                    if ev["txid"] == want and ev["type"] == "deposit.confirmed":
                        print("demo: the deposit is confirmed — events flow end to end")
                        return 0
        print("demo: no deposit.confirmed within 60 s; see .stack/logs/watcher.log", file=sys.stderr)
        return 1
    finally:
        await consumer.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
