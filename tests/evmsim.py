"""A simulated EVM node behind a JSON-RPC transport, with forks and injectable lies.

:class:`EvmSim` keeps every block it ever made (fetchable by hash) and a canonical
list by height, with transactions, receipts, ERC-20 ``Transfer`` logs and each block's
``logsBloom`` computed from its logs. :class:`FaultyNode` answers JSON-RPC bodies for
one endpoint the way real nodes misbehave, at random: HTTP 502, a body that is not
JSON, a timeout, a short batch, ``null`` for a known block, the wrong block for a
hash, empty logs where the bloom matches, a missing receipt, a stale head, and an
outage after which it serves another chain for a while. Batches are answered in
shuffled order (legal JSON-RPC, so never a fault).

Test data written for this project; no recorded data from elsewhere.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from chains.evm import parse, verify

TOKEN = "0x" + "ab" * 20
"""Allow-listed in ``tests/component/conftest.chain_config`` as USDC (6 decimals)."""
OTHER_TOKEN = "0x" + "cd" * 20
"""Not allow-listed: its transfers are never deposits."""


def h(*parts: object) -> str:
    return "0x" + hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def word(address: str) -> str:
    return "0x" + "00" * 12 + address[2:]


@dataclass(frozen=True)
class SimTx:
    hash: str
    sender: str
    to: str
    value: int
    ok: bool = True
    token_transfers: tuple[tuple[str, str, int], ...] = ()
    """(contract, recipient, amount) of each ERC-20 Transfer log the tx emits."""


@dataclass
class EvmSim:
    chain_id: int = 31337
    salt: str = "main"
    blocks: dict[str, dict[str, Any]] = field(default_factory=dict)
    receipts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    txs: dict[str, list[SimTx]] = field(default_factory=dict)
    canonical: list[str] = field(default_factory=list)
    forks: int = 0

    def __post_init__(self) -> None:
        if not self.canonical:
            self.mine([])

    @property
    def height(self) -> int:
        return len(self.canonical) - 1

    def mine(self, txs: Sequence[SimTx]) -> dict[str, Any]:
        number = len(self.canonical)
        parent = self.canonical[-1] if self.canonical else "0x" + "00" * 32
        bh = h(self.salt, self.forks, parent, number)
        receipts: list[dict[str, Any]] = []
        pairs: list[tuple[bytes, list[bytes]]] = []
        log_index = 0
        for i, tx in enumerate(txs):
            logs = []
            if tx.ok:
                for contract, to, amount in tx.token_transfers:
                    topics = [parse.TRANSFER_TOPIC, word(tx.sender), word(to)]
                    logs.append({"address": contract, "topics": topics,
                                 "data": "0x" + f"{amount:064x}", "blockHash": bh,
                                 "blockNumber": hex(number), "transactionHash": tx.hash,
                                 "transactionIndex": hex(i), "logIndex": hex(log_index),
                                 "removed": False})
                    pairs.append((bytes.fromhex(contract[2:]),
                                  [bytes.fromhex(t[2:]) for t in topics]))
                    log_index += 1
            receipts.append({"transactionHash": tx.hash, "transactionIndex": hex(i),
                             "blockHash": bh, "blockNumber": hex(number),
                             "status": "0x1" if tx.ok else "0x0", "logs": logs})
        bloom = verify.bloom_of(pairs)
        block = {
            "number": hex(number), "hash": bh, "parentHash": parent,
            "timestamp": hex(1_700_000_000 + number), "logsBloom": "0x" + f"{bloom:0512x}",
            "transactions": [{"hash": tx.hash, "blockHash": bh, "blockNumber": hex(number),
                              "transactionIndex": hex(i), "from": tx.sender, "to": tx.to,
                              "value": hex(tx.value), "input": "0x"}
                             for i, tx in enumerate(txs)],
        }
        self.blocks[bh] = block
        self.receipts[bh] = receipts
        self.txs[bh] = list(txs)
        self.canonical.append(bh)
        return block

    def fork_at(self, number: int) -> list[SimTx]:
        """Drops canonical blocks from ``number`` up; returns their transactions."""
        dropped = [tx for bh in self.canonical[number:] for tx in self.txs[bh]]
        del self.canonical[number:]
        self.forks += 1
        return dropped

    # ------------------------------------------------------------ honest answers

    def _header(self, block: dict[str, Any] | None, full: bool) -> dict[str, Any] | None:
        if block is None or full:
            return block
        return {**block, "transactions": [t["hash"] for t in block["transactions"]]}

    def _by_number(self, tag: object) -> dict[str, Any] | None:
        if tag == "latest":
            return self.blocks[self.canonical[-1]]
        if not isinstance(tag, str) or not tag.startswith("0x"):
            return None
        n = int(tag, 16)
        return self.blocks[self.canonical[n]] if n <= self.height else None

    def _receipt(self, txid: str) -> dict[str, Any] | None:
        for bh in reversed(self.canonical):
            for r in self.receipts[bh]:
                if r["transactionHash"] == txid:
                    return r
        return None

    def result(self, method: str, params: list[Any]) -> Any:
        """The honest result; raises KeyError for a method it does not know."""
        if method == "eth_chainId":
            return hex(self.chain_id)
        if method == "eth_getBlockByNumber":
            return self._header(self._by_number(params[0]), bool(params[1]))
        if method == "eth_getBlockByHash":
            return self._header(self.blocks.get(params[0]), bool(params[1]))
        if method == "eth_getLogs":
            flt = params[0]
            wanted = {a.lower() for a in flt["address"]}
            return [log for r in self.receipts.get(flt["blockHash"], []) for log in r["logs"]
                    if log["address"] in wanted and log["topics"][0] == flt["topics"][0]]
        if method == "eth_getBlockReceipts":
            return self.receipts.get(params[0])
        if method == "eth_getTransactionReceipt":
            return self._receipt(params[0])
        raise KeyError(method)

    def truth(self, chain: str, start: int, watched: set[str]) -> set[tuple[str, str, int]]:
        """(deposit_id, block_hash, amount) of every deposit on the canonical chain."""
        out: set[tuple[str, str, int]] = set()
        for bh in self.canonical[start:]:
            for tx in self.txs[bh]:
                if not tx.ok:
                    continue
                if tx.value and tx.to in watched:
                    out.add((f"{chain}:{tx.hash}:tx", bh, tx.value))
            for r in self.receipts[bh]:
                for log in r["logs"]:
                    to = "0x" + log["topics"][2][26:]
                    if log["address"] == TOKEN and to in watched and int(log["data"], 16):
                        out.add((f"{chain}:{r['transactionHash']}:log:{int(log['logIndex'], 16)}",
                                 bh, int(log["data"], 16)))
        return out


FAULTS = ("http_502", "not_json", "timeout", "short_batch", "null_block", "wrong_block",
          "empty_logs", "missing_receipt", "stale_head", "wrong_chain_after_outage")


class FaultyNode:
    """One endpoint's transport over ``sim``: a :data:`chains.evm.rpc.Transport`."""

    def __init__(self, sim: EvmSim, rng: random.Random, rate: float,
                 faults: Sequence[str] = FAULTS) -> None:
        self.sim = sim
        self.other = EvmSim(chain_id=1, salt="other-chain")
        self.rng = rng
        self.rate = rate
        self.faults = tuple(faults)
        self.outage = 0
        self.wrong_chain = 0
        self.injected: dict[str, int] = {}
        self.requests = 0
        self.methods: dict[str, int] = {}
        self.without: set[str] = set()
        """Methods this node does not offer (answered "method not found")."""

    def _inject(self, name: str) -> None:
        self.injected[name] = self.injected.get(name, 0) + 1

    async def __call__(self, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        self.requests += 1
        payload = orjson.loads(body)
        if self.outage > 0:
            self.outage -= 1
            if self.outage == 0:
                self.wrong_chain = self.rng.randint(3, 12)
            return 502, b"bad gateway"
        source = self.sim
        if self.wrong_chain > 0:
            self.wrong_chain -= 1
            source = self.other
        calls = payload if isinstance(payload, list) else [payload]
        fault = None
        if self.rate and self.rng.random() < self.rate:
            applicable = [f for f in self.faults if _applies(f, calls)]
            if applicable:
                # Lies about content weigh more than outages: they are rarer per request.
                fault = self.rng.choices(applicable, [1 if f in _TRANSPORT else 4
                                                      for f in applicable])[0]
        if fault == "http_502":
            self._inject(fault)
            return 502, b"<html>bad gateway</html>"
        if fault == "not_json":
            self._inject(fault)
            return 200, b"<html>cloudflare</html>"
        if fault == "timeout":
            self._inject(fault)
            raise TimeoutError
        if fault == "wrong_chain_after_outage":
            self._inject(fault)
            self.outage = self.rng.randint(1, 4)
            return 502, b"bad gateway"
        answers = [self._answer(source, c, fault) for c in calls]
        if isinstance(payload, list):
            if fault == "short_batch" and len(answers) > 1:
                self._inject(fault)
                answers.pop(self.rng.randrange(len(answers)))
            self.rng.shuffle(answers)
            return 200, orjson.dumps(answers)
        return 200, orjson.dumps(answers[0])

    def _answer(self, sim: EvmSim, call: dict[str, Any], fault: str | None) -> dict[str, Any]:
        method, params = call["method"], call["params"]
        self.methods[method] = self.methods.get(method, 0) + 1
        out: dict[str, Any] = {"jsonrpc": "2.0", "id": call["id"]}
        try:
            if method in self.without:
                raise KeyError(method)
            result = sim.result(method, params)
        except KeyError:
            out["error"] = {"code": -32601, "message": "Method not found"}
            return out
        if fault == "null_block" and method in ("eth_getBlockByHash", "eth_getBlockByNumber") \
                and result is not None and params[0] != "latest":
            self._inject(fault)
            result = None
        elif fault == "wrong_block" and method == "eth_getBlockByHash" and result is not None:
            others = [b for b in sim.blocks if b != params[0]]
            if others:
                self._inject(fault)
                result = sim._header(sim.blocks[self.rng.choice(others)], bool(params[1]))
        elif fault == "empty_logs" and method == "eth_getLogs" and result:
            self._inject(fault)
            result = []
        elif fault == "missing_receipt" and method == "eth_getTransactionReceipt":
            self._inject(fault)
            result = None
        elif fault == "missing_receipt" and method == "eth_getBlockReceipts" and result:
            self._inject(fault)
            result = result[:-1]
        elif fault == "stale_head" and method == "eth_getBlockByNumber" and params[0] == "latest":
            self._inject(fault)
            stale = sim.canonical[max(0, sim.height - self.rng.randint(1, 4))]
            result = sim._header(sim.blocks[stale], bool(params[1]))
        out["result"] = result
        return out


_TRANSPORT = frozenset({"http_502", "not_json", "timeout", "wrong_chain_after_outage"})
_FAULT_METHODS = {
    "short_batch": None,
    "null_block": {"eth_getBlockByHash", "eth_getBlockByNumber"},
    "wrong_block": {"eth_getBlockByHash"},
    "empty_logs": {"eth_getLogs"},
    "missing_receipt": {"eth_getTransactionReceipt", "eth_getBlockReceipts"},
    "stale_head": {"eth_getBlockByNumber"},
}


def _applies(fault: str, calls: list[dict[str, Any]]) -> bool:
    """Whether ``fault`` can change the answer to ``calls`` (so that each fault is drawn
    about as often as the requests it concerns)."""
    if fault == "short_batch":
        return len(calls) > 1
    methods = _FAULT_METHODS.get(fault, ...)
    if methods is ...:
        return True  # transport-level: any request
    return any(c.get("method") in methods for c in calls)  # type: ignore[operator]


def random_txs(rng: random.Random, height: int, watched: Sequence[str],
               strangers: Sequence[str], n: int) -> list[SimTx]:
    """A block's worth of transactions: native and token transfers, some to watched
    addresses, some failed, some of a token that is not allow-listed."""
    txs = []
    for i in range(n):
        txid = h("tx", height, i, rng.random())
        sender = rng.choice(strangers)
        to = rng.choice([*watched, *strangers])
        kind = rng.random()
        if kind < 0.5:
            txs.append(SimTx(txid, sender, to, rng.randint(1, 3 * 10**19), ok=rng.random() > 0.1))
        else:
            transfers = tuple(
                (rng.choice([TOKEN, TOKEN, OTHER_TOKEN]), rng.choice([*watched, *strangers]),
                 rng.randint(0, 10**9))
                for _ in range(rng.randint(1, 3)))
            txs.append(SimTx(txid, sender, rng.choice([TOKEN, OTHER_TOKEN]), 0,
                             ok=rng.random() > 0.1, token_transfers=transfers))
    return txs
