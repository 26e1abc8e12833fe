"""Local traffic for the dev stack: registrations, ETH deposits and a reorg now and then.

Started in the background by `make up` (stopped by `make down`), so `watcher tail -c
config/local.yaml` shows events flowing within seconds. Every few seconds it pays a
watched address on anvil and mines a block; every tenth round it registers a new address
through ``payments.address-registrations`` (and pays it once the watcher had time to read
it); every 25th round it reorganises the last two blocks with ``anvil_reorg``, so the
deposits in them are reverted and, if confirmed already, reported as reversals after
credit. Token and BTC deposits come with the slices that add them to the local config.

    .venv/bin/python deploy/local/traffic.py [--interval 3] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import sys

import orjson
from aiokafka import AIOKafkaProducer
from web3 import AsyncHTTPProvider, AsyncWeb3

ANVIL = "http://127.0.0.1:8545"
KAFKA = "127.0.0.1:9092"
REGISTRATIONS = "payments.address-registrations"
WATCHED = ["0xa0Ee7A142d267C1f36714E4a8F75612F20a79720", "0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f"]
"""config/local-addresses.yaml: watched from the start."""


async def register(producer: AIOKafkaProducer, topic: str, address: str, label: str) -> None:
    value = orjson.dumps({"chain": "eth", "address": address, "label": label})
    await producer.send_and_wait(topic, value=value, key=f"eth:{address}".encode())


async def main(interval: float, rounds: int | None, anvil: str = ANVIL, kafka: str = KAFKA,
               registrations: str = REGISTRATIONS) -> int:
    w3 = AsyncWeb3(AsyncHTTPProvider(anvil, request_kwargs={"timeout": 10}))
    payer = (await w3.eth.accounts)[0]
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", enable_idempotence=True)
    await producer.start()
    rng = random.Random(7)
    targets = list(WATCHED)
    n = 0
    try:
        while rounds is None or n < rounds:
            n += 1
            if n % 10 == 0:
                seed = hashlib.sha256(f"traffic-{n}-{rng.random()}".encode()).hexdigest()[:40]
                address = AsyncWeb3.to_checksum_address("0x" + seed)
                await register(producer, registrations, address, f"traffic-customer-{n}")
                targets.append(address)
                print(f"traffic: registered {address}", flush=True)
            if n % 25 == 0:
                await w3.provider.make_request("anvil_reorg", [2, []])  # type: ignore[arg-type]
                print("traffic: reorganised the last 2 blocks", flush=True)
            else:
                to = rng.choice(targets[:-1] if n % 10 == 0 and len(targets) > 1 else targets)
                wei = rng.randrange(10**15, 3 * 10**18)
                txid = await w3.eth.send_transaction({"from": payer, "to": to, "value": wei})
                print(f"traffic: paid {wei} wei to {to} in 0x{bytes(txid).hex()}", flush=True)
            await asyncio.sleep(interval)
    finally:
        await producer.stop()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between rounds")
    parser.add_argument("--rounds", type=int, default=None, help="stop after N rounds")
    parser.add_argument("--anvil", default=ANVIL)
    parser.add_argument("--kafka", default=KAFKA)
    parser.add_argument("--registrations-topic", default=REGISTRATIONS)
    args = parser.parse_args()
    try:
        sys.exit(asyncio.run(main(args.interval, args.rounds, args.anvil, args.kafka,
                                  args.registrations_topic)))
    except KeyboardInterrupt:
        sys.exit(0)
