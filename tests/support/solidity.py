"""Test contracts on a real anvil, and reading the watcher's output from real Kafka.

* :func:`compile_contracts` compiles ``tests/integration/contracts/*.sol`` with solcjs
  (npm ``solc``) at test time; the ABI and bytecode are cached under
  ``$WATCHER_DEV_HOME/solc-cache`` (default ``~/.cache/watcher-dev``) keyed by a hash of
  the compiler, the settings and the sources, so a second session does not compile again.
* :class:`Chain` deploys and drives them on anvil with web3 (the dev accounts are
  unlocked: ``eth_sendTransaction``), mines blocks and reorganises the chain.
* :class:`TopicReader` reads a topic from the beginning with a ``read_committed``
  consumer, as the contract tells downstream consumers to.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from prometheus_client.parser import text_string_to_metric_families
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.contract import AsyncContract
from web3.types import RPCEndpoint, TxParams, Wei

CONTRACTS_DIR = Path(__file__).resolve().parents[1] / "integration" / "contracts"
DEFAULT_SOURCES = ("TestToken.sol", "Forwarder.sol", "NftLike.sol")
SOLC_SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
}
RECEIPT_TIMEOUT_S = 20.0


def dev_home() -> Path:
    return Path(os.environ.get("WATCHER_DEV_HOME") or Path.home() / ".cache" / "watcher-dev")


def solcjs() -> Path:
    env = os.environ.get("SOLCJS")
    if env:
        return Path(env)
    return dev_home() / "npm" / "node_modules" / ".bin" / "solcjs"


# ---------------------------------------------------------------- compiling


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str


def _solc_version(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60,
                         check=True)
    return out.stdout.strip()


def _standard_json(binary: Path, request: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([str(binary), "--standard-json"], input=json.dumps(request).encode(),
                          capture_output=True, timeout=300, check=False)
    text = proc.stdout.decode()
    # solcjs may print notes (e.g. about SMT solvers) before the JSON document.
    start = 0 if text.startswith("{") else text.find("\n{") + 1
    if proc.returncode != 0 or (start == 0 and not text.startswith("{")):
        raise RuntimeError(f"solcjs failed (exit {proc.returncode}): "
                           f"{proc.stderr.decode()[-2000:]} {text[-2000:]}")
    doc: dict[str, Any] = json.loads(text[start:])
    return doc


def compile_contracts(sources: Sequence[str] = DEFAULT_SOURCES,
                      contracts_dir: Path = CONTRACTS_DIR) -> dict[str, Artifact]:
    """Every contract of ``sources`` by name; compiled once per distinct input."""
    binary = solcjs()
    if not binary.exists():
        raise FileNotFoundError(f"solcjs not found at {binary} (python3 deploy/local/devstack.py "
                                "install, or set SOLCJS)")
    request = {
        "language": "Solidity",
        "sources": {name: {"content": (contracts_dir / name).read_text(encoding="utf-8")}
                    for name in sources},
        "settings": SOLC_SETTINGS,
    }
    key_material = json.dumps({"solc": str(binary.resolve()), "request": request},
                              sort_keys=True).encode()
    key = hashlib.sha256(key_material).hexdigest()[:32]
    try:
        cache_dir = dev_home() / "solc-cache"
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache_dir = Path(tempfile.gettempdir()) / "watcher-solc-cache"
        cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / f"{key}.json"
    if cached.exists():
        raw = json.loads(cached.read_text(encoding="utf-8"))
    else:
        out = _standard_json(binary, request)
        errors = [e for e in out.get("errors", []) if e.get("severity") == "error"]
        if errors:
            raise RuntimeError("solc errors:\n" + "\n".join(
                str(e.get("formattedMessage", e)) for e in errors))
        raw = {
            "solc": _solc_version(binary),
            "contracts": {name: {"abi": c["abi"], "bytecode": c["evm"]["bytecode"]["object"]}
                          for per_file in out["contracts"].values()
                          for name, c in per_file.items()},
        }
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(raw), encoding="utf-8")
        tmp.replace(cached)  # atomic: a concurrent session sees the whole file or none
    return {name: Artifact(name, c["abi"], "0x" + c["bytecode"].removeprefix("0x"))
            for name, c in raw["contracts"].items()}


# ---------------------------------------------------------------- the chain


@dataclass(frozen=True)
class Sent:
    """A transaction as mined right after it was sent (anvil automines)."""

    txid: str
    """Lower-case 0x hex, as the watcher writes it."""
    block_number: int
    block_hash: str
    receipt: dict[str, Any]


def _hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return str(value).lower()


class Chain:
    """One anvil, driven through web3's async API."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.w3 = AsyncWeb3(AsyncHTTPProvider(url, request_kwargs={"timeout": 30}))
        self.accounts: list[ChecksumAddress] = []
        self.artifacts: dict[str, Artifact] = {}

    async def setup(self) -> None:
        self.accounts = list(await self.w3.eth.accounts)
        self.artifacts = await asyncio.to_thread(compile_contracts)

    @property
    def payer(self) -> ChecksumAddress:
        return self.accounts[0]

    # ------------------------------------------------------------ raw RPC

    async def rpc(self, method: str, *params: Any) -> Any:
        answer = await self.w3.provider.make_request(RPCEndpoint(method), list(params))
        if "error" in answer:
            raise RuntimeError(f"{method}{list(params)!r}: {answer['error']}")
        return answer.get("result")

    async def height(self) -> int:
        return int(await self.w3.eth.block_number)

    async def block_hash_at(self, number: int) -> str | None:
        block = await self.rpc("eth_getBlockByNumber", hex(number), False)
        return None if block is None else str(block["hash"]).lower()

    async def mine(self, blocks: int = 1) -> None:
        await self.rpc("anvil_mine", hex(blocks))

    async def receipt(self, txid: str) -> dict[str, Any] | None:
        result = await self.rpc("eth_getTransactionReceipt", txid)
        return None if result is None else dict(result)

    async def raw_transaction(self, txid: str) -> str:
        raw = await self.rpc("eth_getRawTransactionByHash", txid)
        if raw is None:
            raise RuntimeError(f"anvil does not know transaction {txid}")
        return str(raw)

    async def reorg(self, depth: int, txs: Sequence[tuple[str, int]] = ()) -> None:
        """``anvil_reorg``: drops the top ``depth`` blocks and mines ``depth`` new ones.

        ``txs`` are (raw signed transaction, block offset) pairs put into the new blocks
        (offset 0 = the first new block). Removed transactions not given here are gone:
        anvil does not put them back into its pool.
        """
        await self.rpc("anvil_reorg", depth, [[raw, offset] for raw, offset in txs])

    # ------------------------------------------------------------ sending

    async def wait_mined(self, txid: str) -> Sent:
        deadline = time.monotonic() + RECEIPT_TIMEOUT_S
        while True:
            receipt = await self.receipt(txid)
            if receipt is not None:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"transaction {txid} not mined within {RECEIPT_TIMEOUT_S}s")
            await asyncio.sleep(0.01)  # polling: anvil answers send before its block is in
        if receipt.get("status") != "0x1":
            raise AssertionError(f"transaction {txid} failed: {receipt}")
        return Sent(txid.lower(), int(receipt["blockNumber"], 16),
                    str(receipt["blockHash"]).lower(), receipt)

    async def send(self, tx: TxParams) -> Sent:
        params: TxParams = {"from": self.payer, **tx}
        txid = await self.w3.eth.send_transaction(params)
        return await self.wait_mined(_hex(txid))

    async def send_eth(self, to: str, value: int) -> Sent:
        return await self.send({"to": to_checksum_address(to), "value": Wei(value)})

    async def deploy(self, name: str, *args: Any) -> AsyncContract:
        art = self.artifacts[name]
        factory = self.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        txid = await factory.constructor(*args).transact({"from": self.payer})
        sent = await self.wait_mined(_hex(txid))
        address = sent.receipt.get("contractAddress")
        if not address:
            raise AssertionError(f"deploying {name}: no contract address in {sent.receipt}")
        return self.w3.eth.contract(address=to_checksum_address(address), abi=art.abi)

    async def call(self, contract: AsyncContract, fn: str, *args: Any, value: int = 0) -> Sent:
        """A state-changing call of ``contract.fn(*args)`` from the payer, mined."""
        params: TxParams = {"from": self.payer}
        if value:
            params["value"] = Wei(value)
        txid = await contract.functions[fn](*args).transact(params)
        return await self.wait_mined(_hex(txid))

    async def mint(self, token: AsyncContract, to: str, amount: int) -> Sent:
        return await self.call(token, "mint", to_checksum_address(to), amount)

    async def token_transfer(self, token: AsyncContract, to: str, amount: int) -> Sent:
        return await self.call(token, "transfer", to_checksum_address(to), amount)

    async def forward(self, forwarder: AsyncContract, to: str, value: int) -> Sent:
        return await self.call(forwarder, "forward", to_checksum_address(to), value=value)

    async def forward_via(self, first: AsyncContract, second: AsyncContract, to: str,
                          value: int) -> Sent:
        return await self.call(first, "forwardVia", second.address, to_checksum_address(to),
                               value=value)

    async def forward_with_token(self, forwarder: AsyncContract, to: str, value: int,
                                 token: AsyncContract, amount: int) -> Sent:
        return await self.call(forwarder, "forwardWithToken", to_checksum_address(to),
                               token.address, amount, value=value)


def log_index_of(sent: Sent, token: str) -> int:
    """Block-level index of the (single) Transfer log of ``token`` in ``sent``'s receipt."""
    logs = [lg for lg in sent.receipt["logs"] if str(lg["address"]).lower() == token.lower()]
    if len(logs) != 1:
        raise AssertionError(f"expected one log of {token} in {sent.txid}, got {logs}")
    return int(logs[0]["logIndex"], 16)


# ---------------------------------------------------------------- Kafka

Event = dict[str, Any]


class TopicReader:
    """Every committed record of a topic from the beginning (``read_committed``)."""

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        self.topic = topic
        self.events: list[Event] = []
        self.keys: list[bytes | None] = []
        self.partitions: list[int] = []
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
            isolation_level="read_committed", auto_offset_reset="earliest",
            client_id="e2e-reader")

    async def start(self, timeout_s: float = 30.0) -> None:
        await self._consumer.start()
        deadline = time.monotonic() + timeout_s
        while True:
            # A fresh metadata answer: the consumer's own cache may predate the topic.
            cluster = await self._consumer._client.fetch_all_metadata()
            parts = cluster.partitions_for_topic(self.topic)
            if parts:
                break
            if time.monotonic() > deadline:
                await self._consumer.stop()
                raise AssertionError(f"topic {self.topic} does not exist after {timeout_s}s")
            await asyncio.sleep(0.2)  # polling: metadata has no event to wait on
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)

    async def stop(self) -> None:
        await self._consumer.stop()

    async def poll(self, timeout_ms: int = 200) -> list[Event]:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms)
        new: list[Event] = []
        for tp in sorted(batches, key=lambda t: t.partition):
            for msg in batches[tp]:
                doc = json.loads(msg.value) if msg.value is not None else None
                if not isinstance(doc, dict):
                    raise AssertionError(f"{self.topic}[{tp.partition}]@{msg.offset}: "
                                         f"not a JSON object: {msg.value!r}")
                doc["_partition"] = tp.partition
                doc["_offset"] = msg.offset
                new.append(doc)
                self.keys.append(msg.key)
        self.events.extend(new)
        return new

    async def wait_for(self, predicate: Callable[[list[Event]], bool], what: str,
                       timeout_s: float = 30.0,
                       describe: Callable[[list[Event]], str] | None = None,
                       alive: Callable[[], None] | None = None) -> list[Event]:
        """Reads until ``predicate(all events so far)`` holds; fails naming ``what``.

        ``alive`` is called on every round and may raise (e.g. when the watcher died).
        """
        deadline = time.monotonic() + timeout_s
        while not predicate(self.events):
            if alive is not None:
                alive()
            if time.monotonic() > deadline:
                seen = describe(self.events) if describe else summary(self.events)
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; "
                                     f"{self.topic} holds:\n{seen}")
            await self.poll()
        return self.events

    async def read_to_end(self, timeout_s: float = 30.0) -> list[Event]:
        """Reads up to the last stable offset of every partition as of now."""
        tps = sorted(self._consumer.assignment(), key=lambda t: t.partition)
        ends = await self._consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while True:
            behind = [tp for tp in tps if await self._consumer.position(tp) < ends[tp]]
            if not behind:
                return self.events
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.topic}: could not read to the end in {timeout_s}s "
                                     f"({behind} behind {ends})")
            await self.poll()


def summary(events: Sequence[Event], limit: int = 60) -> str:
    lines = [f"  {e.get('type')} {e.get('deposit_id')} block={e.get('block_number')} "
             f"{str(e.get('block_hash'))[:12]} conf={e.get('confirmations')}"
             for e in events[-limit:]]
    more = f"  ... and {len(events) - limit} earlier\n" if len(events) > limit else ""
    return more + ("\n".join(lines) or "  (nothing)")


async def produce(bootstrap_servers: str, topic: str,
                  records: Sequence[tuple[bytes, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all",
                                enable_idempotence=True)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


def registration(chain: str, address: str, label: str | None = None) -> tuple[bytes, bytes]:
    """An address-registrations record: key ``<chain>:<address>``, JSON value."""
    doc: dict[str, Any] = {"chain": chain, "address": address}
    if label is not None:
        doc["label"] = label
    return f"{chain}:{address}".encode(), json.dumps(doc).encode()


def new_address(seed: str) -> ChecksumAddress:
    """A fresh EIP-55 address nobody holds a key of, derived from ``seed``."""
    return to_checksum_address("0x" + hashlib.sha256(seed.encode()).hexdigest()[:40])


# ---------------------------------------------------------------- the watcher


def topic_names(uid: str) -> dict[str, str]:
    """Unique names for every topic of the config (``kafka.topics``)."""
    fields = ("deposits", "withdrawals", "withdrawal_requests", "address_registrations",
              "dead_letter", "checkpoints", "address_snapshots", "leadership")
    return {f: f"e2e.{uid}.{f}" for f in fields}


def watcher_config(*, bootstrap_servers: str, uid: str, endpoints: Sequence[tuple[str, str]],
                   start_block: int, metrics_port: int, tokens: Sequence[dict[str, Any]],
                   confirmations: dict[str, int], addresses_file: str | None = None,
                   reorg_window: int = 32, finality_depth: int = 20,
                   poll_interval_ms: int = 100) -> dict[str, Any]:
    """A raw (YAML-shaped) config for chain ``eth`` on anvil with its own topics."""
    raw: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap_servers, "topics": topic_names(uid),
                  "transactional_id_prefix": f"e2e-{uid}", "client_id": f"e2e-{uid}",
                  "transaction_timeout_ms": 20_000},
        "chains": {"eth": {
            "family": "evm", "chain_id": 31337,
            "endpoints": [{"name": name, "url": url} for name, url in endpoints],
            "poll_interval_ms": poll_interval_ms, "start_block": start_block,
            "reorg_window": reorg_window,
            "finality": {"mode": "depth", "depth": finality_depth},
            "native_asset": {"symbol": "ETH", "decimals": 18},
            "tokens": list(tokens), "confirmations": dict(confirmations), "traces": "auto",
            "rpc_timeout_ms": 3000, "rpc_max_attempts": 3,
        }},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "logging": {"level": "info", "json": True},
    }
    if addresses_file is not None:
        raw["addresses_file"] = addresses_file
    return raw


async def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s, \
            s.get(url) as resp:
        return resp.status, await resp.text()


async def wait_ready(metrics_base: str, alive: Callable[[], None], timeout_s: float = 60.0) -> None:
    """Until the watcher at ``metrics_base`` answers ``/readyz`` with 200; ``alive`` raises
    when the watcher under test died meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        alive()
        with contextlib.suppress(OSError, TimeoutError):
            if (await http_get(f"{metrics_base}/readyz", 2.0))[0] == 200:
                return
        assert loop.time() < deadline, f"/readyz did not answer 200 within {timeout_s:.0f} s"
        await asyncio.sleep(0.1)  # polling: readiness has no event to wait on


def metric_value(exposition: str, name: str, **labels: str) -> float | None:
    """The sample ``name{labels}`` of a Prometheus text exposition, or None."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def scrape(metrics_base: str, name: str, **labels: str) -> float | None:
    status, text = await http_get(f"{metrics_base}/metrics")
    if status != 200:
        raise AssertionError(f"GET {metrics_base}/metrics answered {status}: {text[:300]}")
    return metric_value(text, name, **labels)
