"""Local traffic for the dev stack: ETH, token and BTC deposits, registrations, a reorg now and then.

Started in the background by `make up` (stopped by `make down`), so `watcher tail -c
config/local.yaml` shows events flowing within seconds. Each round (every few seconds):

* ETH: pays a watched address on anvil (one block per payment);
* every third round, a token: transfers TKN, the demo ERC-20 that config/local.yaml
  allow-lists at ``0x7357…0001`` (put there at start with ``anvil_setCode`` when missing,
  so its address never depends on the chain's history);
* every other round, BTC: mines a block on btcd (confirming the previous payment), then
  pays a watched regtest address from the dev-only mining key (``deposit.seen`` from the
  mempool, confirmed by the next block);
* every tenth round a new address is registered through ``payments.address-registrations``
  (ETH and BTC in turn) and paid once the watcher had time to read it;
* every 25th round the last two anvil blocks are reorganised with ``anvil_reorg``: their
  deposits are reverted (reported as reversals after credit if confirmed already).

    .venv/bin/python deploy/local/traffic.py [--interval 3] [--rounds N] [--no-btc]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import sys
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.types import RPCEndpoint, Wei

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import devstack  # noqa: E402

# The dev-only helpers shared with the tests: the solc wrapper and the regtest signer.
from tests.support.btc_wallet import RegtestWallet, regtest_payee  # noqa: E402
from tests.support.solidity import compile_contracts  # noqa: E402

ANVIL = "http://127.0.0.1:8545"
BTCD = "http://127.0.0.1:18334"
KAFKA = "127.0.0.1:9092"
REGISTRATIONS = "payments.address-registrations"
CREDENTIALS = REPO_ROOT / "config" / "local"
"""btcd-rpc-user and btcd-rpc-password: the DEV-ONLY credentials of the local btcd."""
WATCHED = ["0xa0Ee7A142d267C1f36714E4a8F75612F20a79720", "0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f"]
"""config/local-addresses.yaml: watched from the start."""
WATCHED_BTC = regtest_payee("p2wpkh", "demo-customer-btc-1")
"""config/local-addresses.yaml: bcrt1q9de3p6zn7xe6k0fp9zlcc9yutkpzdl23pgv38s, watched from the start."""
BTCD_HOME = REPO_ROOT / ".stack" / "btcd"
"""Where `make up` keeps btcd's chain across restarts (devstack.save_btcd_chain)."""
TOKEN = "0x7357000000000000000000000000000000000001"
"""config/local.yaml allow-lists TKN (6 decimals) at this address."""
TOKEN_DECIMALS = 6


class Btcd:
    """The btcd JSON-RPC calls the wallet needs, through devstack's client (stdlib,
    blocking: called in a thread); an RPC error raises devstack.DevStackError."""

    def __init__(self, url: str, user: str, password: str) -> None:
        self.url = url
        self._auth = (user, password)

    def rpc(self, method: str, *params: Any, timeout: float = 60.0) -> Any:
        return devstack.json_rpc(self.url, method, params, auth=self._auth, timeout=timeout)


async def register(producer: AIOKafkaProducer, topic: str, chain: str, address: str,
                   label: str) -> None:
    value = orjson.dumps({"chain": chain, "address": address, "label": label})
    await producer.send_and_wait(topic, value=value, key=f"{chain}:{address}".encode())


async def ensure_token(w3: AsyncWeb3[Any], payer: str) -> Any:
    """The demo ERC-20 at TOKEN, its code put there if missing, the payer funded."""
    art = (await asyncio.to_thread(compile_contracts, ("TestToken.sol",)))["TestToken"]
    token = w3.eth.contract(address=AsyncWeb3.to_checksum_address(TOKEN), abi=art.abi)
    if len(await w3.eth.get_code(token.address)) == 0:
        factory = w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        txid = await factory.constructor("Demo Token", "TKN", TOKEN_DECIMALS).transact({"from": payer})
        deployed = (await w3.eth.wait_for_transaction_receipt(txid))["contractAddress"]
        if deployed is None:
            raise RuntimeError(f"deploying the demo token: no contract address in {txid!r}'s receipt")
        runtime = await w3.eth.get_code(deployed)
        await w3.provider.make_request(RPCEndpoint("anvil_setCode"), [TOKEN, "0x" + bytes(runtime).hex()])
        print(f"traffic: demo token TKN placed at {TOKEN}", flush=True)
    if await token.functions.balanceOf(payer).call() < 10**6 * 10**TOKEN_DECIMALS:
        txid = await token.functions.mint(payer, 10**9 * 10**TOKEN_DECIMALS).transact({"from": payer})
        await w3.eth.wait_for_transaction_receipt(txid)
    return token


async def save_btc_chain(rpc: devstack.Rpc) -> None:
    """btcd forgets its regtest chain at a restart; `make up` keeps it in BTCD_HOME, saved
    at `make down` and here after each block mined, so a kill -9 of the stack loses at most
    one round's block and payment."""
    if not (BTCD_HOME / devstack.BTCD_CHAIN_FILE).exists():
        return  # a btcd that `make up` did not start: nothing of it to keep
    try:
        await asyncio.to_thread(devstack.save_btcd_chain, rpc, BTCD_HOME)
    except (OSError, RuntimeError) as exc:
        print(f"traffic: saving btcd's chain failed ({exc}); the last save is kept", flush=True)


def btc_payee(n: int, seed: float) -> tuple[str, bytes]:
    p = regtest_payee("p2wpkh", f"traffic-{n}-{seed}")
    return p.address, p.script


async def main(interval: float, rounds: int | None, anvil: str = ANVIL, kafka: str = KAFKA,
               registrations: str = REGISTRATIONS, btcd: str | None = BTCD) -> int:
    w3 = AsyncWeb3(AsyncHTTPProvider(anvil, request_kwargs={"timeout": 10}))
    payer = (await w3.eth.accounts)[0]
    token = await ensure_token(w3, payer)
    wallet = None
    if btcd is not None:
        node = Btcd(btcd, (CREDENTIALS / "btcd-rpc-user").read_text().strip(),
                    (CREDENTIALS / "btcd-rpc-password").read_text().strip())
        wallet = RegtestWallet(node)
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", enable_idempotence=True)
    await producer.start()
    rng = random.Random(7)
    targets = list(WATCHED)
    btc_targets = [(WATCHED_BTC.address, WATCHED_BTC.script)]
    n = 0
    try:
        while rounds is None or n < rounds:
            n += 1
            fresh_eth = fresh_btc = False
            if n % 10 == 0:
                seed = hashlib.sha256(f"traffic-{n}-{rng.random()}".encode()).hexdigest()[:40]
                if wallet is not None and n % 20 == 0:
                    address, script = btc_payee(n, rng.random())
                    await register(producer, registrations, "btc", address, f"traffic-customer-{n}")
                    btc_targets.append((address, script))
                    fresh_btc = True
                else:
                    address = AsyncWeb3.to_checksum_address("0x" + seed)
                    await register(producer, registrations, "eth", address, f"traffic-customer-{n}")
                    targets.append(address)
                    fresh_eth = True
                print(f"traffic: registered {address}", flush=True)
            # A fresh registration is paid from the next round on (the watcher reads it first).
            eth_to = rng.choice(targets[:-1] if fresh_eth else targets)
            if n % 25 == 0:
                await w3.provider.make_request(RPCEndpoint("anvil_reorg"), [2, []])
                print("traffic: reorganised the last 2 blocks", flush=True)
            elif n % 3 == 0:
                units = rng.randrange(1, 500) * 10**TOKEN_DECIMALS
                txid = await token.functions.transfer(eth_to, units).transact({"from": payer})
                print(f"traffic: paid {units} TKN units to {eth_to} in 0x{bytes(txid).hex()}", flush=True)
            else:
                wei = rng.randrange(10**15, 3 * 10**18)
                txid = await w3.eth.send_transaction({"from": payer, "to": eth_to, "value": Wei(wei)})
                print(f"traffic: paid {wei} wei to {eth_to} in 0x{bytes(txid).hex()}", flush=True)
            if wallet is not None and n % 2 == 1:
                await asyncio.to_thread(wallet.node.rpc, "generate", 1)
                address, script = rng.choice(btc_targets[:-1] if fresh_btc else btc_targets)
                sats = rng.randrange(10_000, 50_000_000)
                btc_txid = await asyncio.to_thread(wallet.pay, [(script, sats)])
                print(f"traffic: paid {sats} sat to {address} in {btc_txid}", flush=True)
                await save_btc_chain(wallet.node.rpc)
            await asyncio.sleep(interval)
    finally:
        await producer.stop()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between rounds")
    parser.add_argument("--rounds", type=int, default=None, help="stop after N rounds")
    parser.add_argument("--anvil", default=ANVIL)
    parser.add_argument("--btcd", default=BTCD)
    parser.add_argument("--no-btc", action="store_true", help="ETH and token traffic only")
    parser.add_argument("--kafka", default=KAFKA)
    parser.add_argument("--registrations-topic", default=REGISTRATIONS)
    args = parser.parse_args()
    try:
        sys.exit(asyncio.run(main(args.interval, args.rounds, args.anvil, args.kafka,
                                  args.registrations_topic, None if args.no_btc else args.btcd)))
    except KeyboardInterrupt:
        sys.exit(0)
