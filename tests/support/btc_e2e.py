"""What the Bitcoin end-to-end tests share: a btcd of their own, a watcher config for it,
the in-process App, and the contract checks over the committed stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from tests.support.services import BtcdService, ServiceManager, devstack
from tests.support.solidity import Event, TopicReader, http_get, topic_names
from watcher.app import App
from watcher.config import WatcherConfig
from watcher.events import event_id
from watcher.types import BlockHash, DepositEventType, DepositId

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "watcher" / "schemas" /
                     "deposit-event.v1.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
ORDER = {"deposit.seen": -1, "deposit.pending": 0, "deposit.confirmed": 1,
         "deposit.reverted": 2}
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
WAIT_S = 30.0
CHAIN = "btc"


@contextlib.contextmanager
def own_btcd(services: ServiceManager, state_dir: Path,
             extra_args: tuple[str, ...] = ()) -> Iterator[BtcdService]:
    """A btcd regtest of the caller's own (reorgs must not disturb other modules), with
    ``extra_args`` (policy flags) on its command line."""
    node = services.btcd(state_dir=state_dir, extra_args=extra_args)
    try:
        yield node
    finally:
        devstack().stop(state_dir, "btcd")


def btc_config(*, bootstrap_servers: str, uid: str, node: BtcdService, secrets_dir: Path,
               start_block: int, metrics_port: int, confirmations: Any,
               reorg_window: int = 16, finality_depth: int = 12,
               poll_interval_ms: int = 100, dust_threshold: int = 546,
               mempool: dict[str, Any] | None = None) -> dict[str, Any]:
    """A raw config for chain ``btc`` on ``node`` with its own topics. The RPC credentials
    are written to files in ``secrets_dir`` (the config names them, relative to it)."""
    (secrets_dir / "btc-user").write_text(node.rpc_user + "\n")
    (secrets_dir / "btc-password").write_text(node.rpc_password + "\n")
    return {
        "kafka": {"bootstrap_servers": bootstrap_servers, "topics": topic_names(uid),
                  "transactional_id_prefix": f"e2e-{uid}", "client_id": f"e2e-{uid}",
                  "transaction_timeout_ms": 20_000},
        "chains": {CHAIN: {
            "family": "bitcoin", "network": "regtest",
            "endpoints": [{"name": "btcd", "url": node.rpc_url,
                           "username_file": "btc-user", "password_file": "btc-password"}],
            "poll_interval_ms": poll_interval_ms, "start_block": start_block,
            "reorg_window": reorg_window,
            "finality": {"mode": "depth", "depth": finality_depth},
            "native_asset": {"symbol": "BTC", "decimals": 8},
            "dust_threshold": dust_threshold,
            "confirmations": {"BTC": confirmations},
            "rpc_timeout_ms": 5000, "rpc_max_attempts": 3,
            "mempool": mempool or {"enabled": False},
        }},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "logging": {"level": "info", "json": True},
    }


def new_uid() -> str:
    return uuid.uuid4().hex[:10]


@dataclass
class Running:
    cfg: WatcherConfig
    reader: TopicReader
    metrics: str
    app: App
    task: asyncio.Task[int]

    def alive(self) -> None:
        task = self.task
        if task.done():
            exc = task.exception() if not task.cancelled() else None
            raise AssertionError(f"the watcher stopped by itself: "
                                 f"{task.result() if exc is None else repr(exc)}") from exc

    async def wait(self, predicate: Callable[[list[Event]], bool], what: str,
                   timeout_s: float = WAIT_S) -> list[Event]:
        return await self.reader.wait_for(predicate, what, timeout_s, alive=self.alive)

    async def wait_event(self, type_: str, did: str, block_hash: str | None = None,
                         timeout_s: float = WAIT_S) -> Event:
        def pick(events: list[Event]) -> list[Event]:
            return [e for e in events if e["type"] == type_ and e["deposit_id"] == did
                    and (block_hash is None or e["block_hash"] == block_hash)]
        await self.wait(lambda evs: bool(pick(evs)),
                        f"{type_} of {did}" + (f" in block {block_hash}" if block_hash else ""),
                        timeout_s)
        return pick(self.reader.events)[0]

    async def wait_processed(self, node: BtcdService, timeout_s: float = WAIT_S) -> int:
        """Until the watcher has committed the node's current tip (by hash)."""
        follower = self.app.followers[CHAIN]

        async def done() -> bool:
            height = int(node.rpc("getblockcount"))
            state = follower.state
            tip = state.tip if state is not None else None
            return (tip is not None and tip.number == height
                    and tip.hash == node.rpc("getblockhash", height))
        await poll_until(done, "the watcher to commit the node's tip", timeout_s, self.alive)
        return int(node.rpc("getblockcount"))

    async def wait_watched(self, *addresses: str) -> None:
        codec_index = self.app.indexes[CHAIN]
        from chains.bitcoin.address import UtxoAddressCodec

        codec = UtxoAddressCodec("regtest")
        keys = [codec.parse(a)[1] for a in addresses]

        async def done() -> bool:
            return all(k in codec_index for k in keys)
        await poll_until(done, f"{len(keys)} addresses to be watched", WAIT_S, self.alive)


async def poll_until(check: Callable[[], Awaitable[bool]], what: str,
                     timeout_s: float = WAIT_S, alive: Callable[[], None] | None = None) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        if alive is not None:
            alive()
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)  # polling: these states have no event to wait on


@contextlib.asynccontextmanager
async def running(cfg: WatcherConfig) -> AsyncIterator[Running]:
    """The App in a task until the block ends; ready within 60 s, stopped within 20 s."""
    reader = TopicReader(cfg.kafka.bootstrap_servers, cfg.kafka.topics.deposits)
    await reader.start()
    app = App(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop), name="app-btc")
    run = Running(cfg, reader, f"http://127.0.0.1:{cfg.metrics_port}", app, task)

    async def ready() -> bool:
        try:
            status, _ = await http_get(f"{run.metrics}/readyz", 2.0)
        except (OSError, TimeoutError):
            return False
        return status == 200
    failed = False
    try:
        await poll_until(ready, "/readyz to answer 200", 60.0, run.alive)
        yield run
    except BaseException:
        failed = True
        raise
    finally:
        stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), 20.0)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            if not failed:
                raise AssertionError("App.run did not stop within 20 s") from None
        except Exception:
            if not failed:
                raise
        finally:
            await reader.stop()


def check_stream(events: Sequence[Event], keys: Sequence[bytes | None]) -> None:
    """Contract rules over the whole committed stream: schema, ids, keys, order, partition."""
    assert len(keys) == len(events)
    seen_ids: set[str] = set()
    per_fact: dict[tuple[str, str | None], list[str]] = defaultdict(list)
    partition_of: dict[str, int] = {}
    for ev, key in zip(events, keys, strict=True):
        body = {k: v for k, v in ev.items() if not k.startswith("_")}
        errors = sorted(VALIDATOR.iter_errors(body), key=str)
        assert not errors, f"event does not match deposit-event.v1.json: {errors[0]}\n{body}"
        assert ev["schema_version"] == 1 and ev["chain"] == CHAIN
        assert RFC3339_Z.match(ev["emitted_at"]), ev["emitted_at"]
        assert key == ev["deposit_id"].encode(), f"record key {key!r} is not the deposit_id"
        assert ev["event_id"] not in seen_ids, f"duplicate event_id {ev['event_id']}: {ev}"
        seen_ids.add(ev["event_id"])
        if ev["block_hash"] is not None:
            assert ev["event_id"] == event_id(DepositEventType(ev["type"]),
                                              DepositId(ev["deposit_id"]),
                                              BlockHash(ev["block_hash"])), ev
        assert partition_of.setdefault(ev["deposit_id"], ev["_partition"]) == ev["_partition"]
        per_fact[(ev["deposit_id"], ev["block_hash"])].append(ev["type"])
    for (did, bh), types in per_fact.items():
        if bh is None:
            continue
        assert types == sorted(types, key=ORDER.__getitem__) and len(set(types)) == len(types), \
            f"{did} in {bh}: events {types} are not at most one each in pending<confirmed<reverted"
