"""Generate and record the benchmark chain (a real anvil chain), once, cached on disk.

Run (from the repository root)::

    nice .venv/bin/python -m bench.chaingen                # 2,000 blocks x ~170 txs (default)
    nice .venv/bin/python -m bench.chaingen --blocks 200   # a small chain for quick tests
    .venv/bin/python -m bench.chaingen --print-dir         # only print where the data is

A second run finds the finished data and does nothing.  What it makes, under
``bench/.data/chain-<blocks>x<txs>/`` (``chain_dir()``):

* ``corpus.jsonl.gz``  one JSON line per block 0..head: ``{"number", "header"
  (eth_getBlockByNumber false), "block" (eth_getBlockByHash true), "receipts"
  (eth_getBlockReceipts), "logs" (eth_getLogs by blockHash)}``, exactly as anvil
  answered them; ``bench/replay_server.py`` serves it.
* ``meta.json``  chain id, head, token address, first payload block, counts, timings.
* ``watched.json``  the 1,000 watched addresses (JSON list of lowercase hex).
* ``expected.json``  every deposit to a watched address (native and ERC-20), to check
  a watcher's output against.
* ``anvil-state.json``  anvil ``--dump-state`` of the chain; ``start_anvil_from_data()``
  (or ``anvil --load-state <it>``) serves the same chain from anvil again.

The chain: block 1 deploys ``bench/contracts/BenchToken.sol`` (compiled with solcjs at
run time, output cached under ``bench/.data/solc/``), block 2 mints tokens to the
senders, then ``--blocks`` payload blocks of about ``--txs`` transactions each
(uniform +-15), 30% ERC-20 ``transfer`` and 70% plain ETH transfers (a quarter of them
legacy-typed, the rest EIP-1559), sent with ``eth_sendTransaction`` from anvil's
unlocked dev accounts (one sender per transaction in a block) in JSON-RPC batches and
mined with ``evm_mine`` at 12-second timestamps.  About 2% of recipients are watched
addresses; the rest are fresh random addresses.  Everything is seeded (``--seed``).
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import orjson
from eth_utils.crypto import keccak

BENCH_DIR = Path(__file__).resolve().parent
DATA_ROOT = BENCH_DIR / ".data"
CONTRACT_SOURCE = BENCH_DIR / "contracts" / "BenchToken.sol"
NPM_BIN = Path.home() / ".cache" / "watcher-dev" / "npm" / "node_modules" / ".bin"

DEFAULT_BLOCKS = 2000
DEFAULT_TXS = 170
TOKEN_SHARE = 0.30
WATCHED_COUNT = 1000
WATCHED_SHARE = 0.02
SENDERS = 256
GENESIS_TIMESTAMP = 1_700_000_000
BLOCK_INTERVAL = 12
TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
_SEL_TRANSFER = keccak(text="transfer(address,uint256)")[:4]
_SEL_MINT_BATCH = keccak(text="mintBatch(address[],uint256)")[:4]

Json = Any


class RpcError(RuntimeError):
    pass


# --------------------------------------------------------------------------- helpers


def find_tool(name: str, env_var: str) -> str:
    """Path of a dev tool: $<env_var>, then PATH, then the watcher-dev npm cache."""
    env = os.environ.get(env_var)
    if env:
        return env
    found = shutil.which(name)
    if found:
        return found
    cached = NPM_BIN / name
    if cached.exists():
        return str(cached)
    raise FileNotFoundError(f"{name} not found: set {env_var}, put it on PATH or install it under {NPM_BIN}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chain_dir(blocks: int = DEFAULT_BLOCKS, txs: int = DEFAULT_TXS, data_root: Path = DATA_ROOT) -> Path:
    """Directory of the finished chain data for these parameters (may not exist yet)."""
    return data_root / f"chain-{blocks}x{txs}"


def is_complete(directory: Path) -> bool:
    return (directory / "meta.json").exists() and (directory / "corpus.jsonl.gz").exists()


def load_meta(directory: Path) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads((directory / "meta.json").read_text()))


def load_watched(directory: Path) -> list[str]:
    return cast(list[str], json.loads((directory / "watched.json").read_text()))


def iter_corpus(directory: Path) -> Iterator[dict[str, Any]]:
    """Yield the recorded blocks in order: dicts with number, header, block, receipts, logs."""
    with gzip.open(directory / "corpus.jsonl.gz", "rb") as fh:
        for line in fh:
            if line.strip():
                yield cast(dict[str, Any], orjson.loads(line))


class Rpc:
    """Small synchronous JSON-RPC client over one keep-alive HTTP connection."""

    def __init__(self, url: str, timeout: float = 300.0) -> None:
        rest = url.split("://", 1)[1]
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.partition(":")
        self.path = "/" + path
        self.conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
        self._id = 0

    def close(self) -> None:
        self.conn.close()

    def _post(self, payload: Json) -> Json:
        body = orjson.dumps(payload)
        self.conn.request("POST", self.path, body=body, headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RpcError(f"HTTP {resp.status}: {data[:300]!r}")
        return orjson.loads(data)

    def call(self, method: str, *params: Json) -> Json:
        self._id += 1
        reply = self._post({"jsonrpc": "2.0", "id": self._id, "method": method, "params": list(params)})
        if "error" in reply:
            raise RpcError(f"{method}: {reply['error']}")
        return reply["result"]

    def batch(self, calls: Sequence[tuple[str, Sequence[Json]]]) -> list[Json]:
        """Send calls as one batch; return results in call order; raise on any error."""
        if not calls:
            return []
        first = self._id + 1
        payload = [
            {"jsonrpc": "2.0", "id": first + i, "method": m, "params": list(p)}
            for i, (m, p) in enumerate(calls)
        ]
        self._id += len(calls)
        replies = self._post(payload)
        if not isinstance(replies, list):
            raise RpcError(f"batch answered with {str(replies)[:300]}")
        by_id = {r.get("id"): r for r in replies}
        out = []
        for i, (m, _) in enumerate(calls):
            r = by_id.get(first + i)
            if r is None:
                raise RpcError(f"batch: no answer for call {i} ({m})")
            if "error" in r:
                raise RpcError(f"{m}: {r['error']}")
            out.append(r["result"])
        return out


def wait_rpc(url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before answering on {url}")
        rpc = Rpc(url, timeout=5)
        try:
            rpc.call("eth_chainId")
            return
        except (OSError, RpcError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        finally:
            rpc.close()


class Anvil:
    """An anvil process on a free loopback port; stopped with SIGINT so --dump-state is written."""

    def __init__(self, args: Sequence[str], port: int | None = None, ready_timeout: float = 600.0) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            find_tool("anvil", "ANVIL"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--silent",
            *args,
        ]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        try:
            wait_rpc(self.url, timeout=ready_timeout, proc=self.proc)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 600.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Anvil:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_anvil_from_data(directory: Path | None = None, port: int | None = None) -> Anvil:
    """Start anvil serving the recorded chain (``--load-state``); use as a context manager.

    anvil needs some seconds to load the state of a full-size chain.
    """
    directory = directory or chain_dir()
    state = directory / "anvil-state.json"
    if not state.exists():
        raise FileNotFoundError(f"{state} missing: run python -m bench.chaingen first")
    return Anvil(["--load-state", str(state), "--no-mining"], port=port)


# --------------------------------------------------------------------------- contract


def compile_token(data_root: Path = DATA_ROOT) -> tuple[list[Any], str]:
    """Compile BenchToken.sol with solcjs (cached by source hash); return (abi, creation bytecode hex)."""
    source = CONTRACT_SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    cache = data_root / "solc" / f"BenchToken-{digest}.json"
    if cache.exists():
        cached = json.loads(cache.read_text())
        return cached["abi"], cached["bin"]
    solcjs = find_tool("solcjs", "SOLCJS")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                solcjs,
                "--bin",
                "--abi",
                "--optimize",
                "--base-path",
                str(CONTRACT_SOURCE.parent),
                "-o",
                tmp,
                str(CONTRACT_SOURCE),
            ],
            check=True,
        )
        out = Path(tmp)
        abi = json.loads(next(out.glob("*BenchToken.abi")).read_text())
        bytecode = next(out.glob("*BenchToken.bin")).read_text().strip()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"abi": abi, "bin": bytecode, "solc": "solcjs", "source_sha256": digest}))
    return abi, bytecode


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _addr_word(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


def encode_transfer(to: str, amount: int) -> str:
    return "0x" + (_SEL_TRANSFER + _addr_word(to) + _word(amount)).hex()


def encode_mint_batch(holders: Sequence[str], amount: int) -> str:
    body = _word(64) + _word(amount) + _word(len(holders)) + b"".join(_addr_word(a) for a in holders)
    return "0x" + (_SEL_MINT_BATCH + body).hex()


# --------------------------------------------------------------------------- generation


@dataclass
class GenStats:
    payload_txs: int = 0
    token_txs: int = 0
    watched_txs: int = 0
    send_seconds: float = 0.0
    mine_seconds: float = 0.0


def _mine(rpc: Rpc, timestamp: int, expected_txs: int) -> str:
    rpc.call("evm_mine", timestamp)
    block = rpc.call("eth_getBlockByNumber", "latest", False)
    if len(block["transactions"]) != expected_txs:
        raise RuntimeError(
            f"block {int(block['number'], 16)} has {len(block['transactions'])} txs, expected {expected_txs}"
        )
    return cast(str, block["number"])


def generate(
    rpc: Rpc, blocks: int, txs: int, seed: int, watched: list[str], log: bool = True
) -> dict[str, Any]:
    rng = random.Random(seed)
    accounts = [a.lower() for a in rpc.call("eth_accounts")]
    deployer, senders = accounts[0], accounts[1:]
    if len(senders) < txs + 15:
        raise RuntimeError(f"need at least {txs + 15} senders, anvil gave {len(senders)}")
    nonces = dict.fromkeys(accounts, 0)
    _, bytecode = compile_token()

    ts = GENESIS_TIMESTAMP
    # Block 1: deploy the token.
    deploy_hash = rpc.call(
        "eth_sendTransaction", {"from": deployer, "data": "0x" + bytecode, "gas": hex(3_000_000)}
    )
    nonces[deployer] += 1
    ts += BLOCK_INTERVAL
    _mine(rpc, ts, 1)
    receipt = rpc.call("eth_getTransactionReceipt", deploy_hash)
    if receipt is None or receipt["status"] != "0x1" or not receipt.get("contractAddress"):
        raise RuntimeError(f"token deployment failed: {receipt}")
    token = cast(str, receipt["contractAddress"]).lower()
    # Block 2: mint to every sender.
    rpc.call(
        "eth_sendTransaction",
        {"from": deployer, "to": token, "data": encode_mint_batch(senders, 10**30), "gas": hex(12_000_000)},
    )
    nonces[deployer] += 1
    ts += BLOCK_INTERVAL
    _mine(rpc, ts, 1)
    first_payload = 3

    stats = GenStats()
    t_start = time.monotonic()
    for i in range(blocks):
        n = rng.randint(txs - 15, txs + 15)
        n_token = round(n * TOKEN_SHARE)
        kinds = [True] * n_token + [False] * (n - n_token)
        rng.shuffle(kinds)
        block_senders = rng.sample(senders, n)
        calls: list[tuple[str, Sequence[Json]]] = []
        for is_token, sender in zip(kinds, block_senders, strict=True):
            if rng.random() < WATCHED_SHARE:
                to = rng.choice(watched)
                stats.watched_txs += 1
            else:
                to = "0x" + rng.randbytes(20).hex()
            tx: dict[str, str] = {"from": sender, "nonce": hex(nonces[sender])}
            nonces[sender] += 1
            if is_token:
                tx |= {
                    "to": token,
                    "data": encode_transfer(to, rng.randint(1, 10**21)),
                    "gas": hex(60_000),
                    "value": "0x0",
                }
                stats.token_txs += 1
            else:
                tx |= {"to": to, "value": hex(rng.randint(10**12, 10**18)), "gas": hex(21_000)}
            if rng.random() < 0.25:
                tx["gasPrice"] = hex(3 * 10**9)
            else:
                tx["maxFeePerGas"] = hex(3 * 10**9)
                tx["maxPriorityFeePerGas"] = hex(rng.randint(1, 10**9))
            calls.append(("eth_sendTransaction", [tx]))
        t0 = time.monotonic()
        rpc.batch(calls)
        t1 = time.monotonic()
        ts += BLOCK_INTERVAL
        _mine(rpc, ts, n)
        stats.send_seconds += t1 - t0
        stats.mine_seconds += time.monotonic() - t1
        stats.payload_txs += n
        if log and (i + 1) % 100 == 0:
            el = time.monotonic() - t_start
            print(
                f"chaingen: {i + 1}/{blocks} blocks, {stats.payload_txs} txs, {el:.1f}s "
                f"({(i + 1) / el:.1f} blocks/s)",
                flush=True,
            )
    return {
        "token": token,
        "deployer": deployer,
        "senders": len(senders),
        "first_payload_block": first_payload,
        "payload_blocks": blocks,
        "payload_txs": stats.payload_txs,
        "token_txs": stats.token_txs,
        "watched_recipient_txs": stats.watched_txs,
        "send_seconds": round(stats.send_seconds, 2),
        "mine_seconds": round(stats.mine_seconds, 2),
    }


# --------------------------------------------------------------------------- recording


def record(rpc: Rpc, out: Path, head: int, chunk: int = 8, log: bool = True) -> dict[str, Any]:
    """Write blocks 0..head as gzip'd JSON lines; return counts."""
    n_txs = n_logs = 0
    t_start = time.monotonic()
    with gzip.open(out, "wb", compresslevel=6) as fh:
        for lo in range(0, head + 1, chunk):
            numbers = list(range(lo, min(head, lo + chunk - 1) + 1))
            headers = rpc.batch([("eth_getBlockByNumber", [hex(n), False]) for n in numbers])
            calls: list[tuple[str, Sequence[Json]]] = []
            for h in headers:
                calls += [
                    ("eth_getBlockByHash", [h["hash"], True]),
                    ("eth_getBlockReceipts", [h["hash"]]),
                    ("eth_getLogs", [{"blockHash": h["hash"]}]),
                ]
            res = rpc.batch(calls)
            for k, (n, h) in enumerate(zip(numbers, headers, strict=True)):
                full, receipts, logs = res[3 * k], res[3 * k + 1], res[3 * k + 2]
                if int(h["number"], 16) != n or full["hash"] != h["hash"]:
                    raise RuntimeError(f"block {n}: inconsistent answers")
                if len(receipts) != len(full["transactions"]) or len(logs) != sum(
                    len(r["logs"]) for r in receipts
                ):
                    raise RuntimeError(f"block {n}: receipts/logs do not match the block")
                n_txs += len(full["transactions"])
                n_logs += len(logs)
                fh.write(
                    orjson.dumps(
                        {"number": n, "header": h, "block": full, "receipts": receipts, "logs": logs}
                    )
                )
                fh.write(b"\n")
            if log and (lo // chunk) % 50 == 49:
                el = time.monotonic() - t_start
                print(f"record: {numbers[-1] + 1}/{head + 1} blocks, {el:.1f}s", flush=True)
    return {
        "recorded_txs": n_txs,
        "recorded_logs": n_logs,
        "record_seconds": round(time.monotonic() - t_start, 2),
    }


def expected_deposits(directory: Path, token: str, watched: Sequence[str]) -> list[dict[str, Any]]:
    """Every successful deposit to a watched address in the recorded corpus."""
    ws = set(watched)
    out: list[dict[str, Any]] = []
    for rec in iter_corpus(directory):
        status = {r["transactionHash"]: r["status"] for r in rec["receipts"]}
        for tx in rec["block"]["transactions"]:
            to = (tx.get("to") or "").lower()
            if to in ws and int(tx["value"], 16) > 0 and status[tx["hash"]] == "0x1":
                out.append(
                    {
                        "kind": "native",
                        "block": rec["number"],
                        "blockHash": tx["blockHash"],
                        "tx": tx["hash"],
                        "to": to,
                        "value": str(int(tx["value"], 16)),
                    }
                )
        for lg in rec["logs"]:
            topics = lg["topics"]
            if lg["address"].lower() == token and len(topics) == 3 and topics[0] == TRANSFER_TOPIC:
                to = "0x" + topics[2][-40:]
                if to in ws:
                    out.append(
                        {
                            "kind": "erc20",
                            "block": rec["number"],
                            "blockHash": lg["blockHash"],
                            "tx": lg["transactionHash"],
                            "logIndex": int(lg["logIndex"], 16),
                            "token": token,
                            "to": to,
                            "value": str(int(lg["data"], 16)),
                        }
                    )
    return out


# --------------------------------------------------------------------------- driver


def ensure_chain(
    blocks: int = DEFAULT_BLOCKS,
    txs: int = DEFAULT_TXS,
    seed: int = 1,
    data_root: Path = DATA_ROOT,
    log: bool = True,
) -> Path:
    """Generate and record the chain unless it is already on disk; return its directory."""
    final = chain_dir(blocks, txs, data_root)
    if is_complete(final):
        if log:
            print(f"chaingen: {final} already complete, nothing to do", flush=True)
        return final
    data_root.mkdir(parents=True, exist_ok=True)
    with open(data_root / "chaingen.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(final):
            return final
        work = final.with_name(final.name + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        rng = random.Random(seed ^ 0x5EED)
        watched = sorted({"0x" + rng.randbytes(20).hex() for _ in range(WATCHED_COUNT)})
        (work / "watched.json").write_text(json.dumps(watched))
        t0 = time.monotonic()
        anvil = Anvil(
            [
                "--no-mining",
                "--prune-history",
                "--accounts",
                str(SENDERS + 1),
                "--balance",
                "1000000",
                "--timestamp",
                str(GENESIS_TIMESTAMP),
                "--dump-state",
                str(work / "anvil-state.json"),
            ]
        )
        try:
            rpc = Rpc(anvil.url)
            chain_id = int(rpc.call("eth_chainId"), 16)
            gen = generate(rpc, blocks, txs, seed, watched, log=log)
            gen_seconds = time.monotonic() - t0
            head = int(rpc.call("eth_blockNumber"), 16)
            rec = record(rpc, work / "corpus.jsonl.gz", head, log=log)
            rpc.close()
            t_dump = time.monotonic()
        finally:
            anvil.stop()
        if anvil.proc.returncode not in (0, -signal.SIGINT, 130) or not (work / "anvil-state.json").exists():
            raise RuntimeError(f"anvil exited with {anvil.proc.returncode} without dumping its state")
        dump_seconds = time.monotonic() - t_dump
        deposits = expected_deposits(work, gen["token"], watched)
        (work / "expected.json").write_text(json.dumps(deposits))
        meta = {
            "format": 1,
            "chain_id": chain_id,
            "head": head,
            "seed": seed,
            "blocks_param": blocks,
            "txs_param": txs,
            **gen,
            **rec,
            "expected_deposits": len(deposits),
            "expected_native": sum(1 for d in deposits if d["kind"] == "native"),
            "expected_erc20": sum(1 for d in deposits if d["kind"] == "erc20"),
            "transfer_topic": TRANSFER_TOPIC,
            "generate_seconds": round(gen_seconds, 1),
            "anvil_dump_seconds": round(dump_seconds, 1),
            "total_seconds": round(time.monotonic() - t0, 1),
            "corpus_bytes": (work / "corpus.jsonl.gz").stat().st_size,
            "anvil_state_bytes": (work / "anvil-state.json").stat().st_size,
        }
        (work / "meta.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
        if log:
            print(f"chaingen: done in {meta['total_seconds']}s -> {final}", flush=True)
            print(json.dumps(meta, indent=1), flush=True)
        return final


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=DEFAULT_BLOCKS, help="payload blocks (default 2000)")
    ap.add_argument("--txs", type=int, default=DEFAULT_TXS, help="mean transactions per block (default 170)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-root", type=Path, default=DATA_ROOT)
    ap.add_argument("--print-dir", action="store_true", help="print the data directory and exit")
    args = ap.parse_args(argv)
    if args.print_dir:
        print(chain_dir(args.blocks, args.txs, args.data_root))
        return 0
    ensure_chain(args.blocks, args.txs, args.seed, args.data_root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
