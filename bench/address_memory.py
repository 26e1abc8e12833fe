"""Memory and lookup cost of the watched-address index against a plain ``set``.

    python -m bench.address_memory [--sizes 1000000,10000000] [--lookups 1000000]
                                   [--key-size 20]

``--key-size`` is the family's key width: 20 for EVM addresses, 34 for UTXO scripts
(:mod:`chains.bitcoin.script`: the scriptPubKey zero-padded).

Each (size, implementation) runs in a fresh subprocess so its RSS delta is clean:
VmRSS is read before and after inserting N random keys (generated in
small chunks, so only the structure itself stays resident), VmHWM gives the
peak (the index briefly holds old and new tables while it grows). Lookups use
fresh ``bytes`` objects in random order, as block scanning does, so every
lookup pays for hashing and for the cache misses into the structure; the
figure includes the loop (~20-30 ns).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator

from watcher.core.addresses import AddressIndex

KEY_SIZE = 20
"""Default key width (EVM); ``--key-size`` overrides it."""
CHUNK = 65536
BUILD_SEED = 1
MISS_SEED = 2


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _keys(n: int, seed: int, size: int = KEY_SIZE) -> Iterator[bytes]:
    rng = random.Random(seed)
    left = n
    while left:
        c = min(CHUNK, left)
        buf = rng.randbytes(size * c)
        for off in range(0, size * c, size):
            yield buf[off:off + size]
        left -= c


def _time_lookups(target: AddressIndex | set[bytes], keys: list[bytes]) -> tuple[float, int]:
    found = 0
    t = time.perf_counter()
    for k in keys:
        if k in target:
            found += 1
    return (time.perf_counter() - t) / len(keys) * 1e9, found


def child(impl: str, n: int, lookups: int, size: int = KEY_SIZE) -> dict[str, object]:
    """Builds one structure of ``n`` keys and measures it (run in its own process)."""
    index: AddressIndex | None = None
    plain: set[bytes] | None = None
    rss0 = _status("VmRSS")
    t = time.perf_counter()
    if impl == "index":
        index = AddressIndex(size)
        add = index.add
        for k in _keys(n, BUILD_SEED, size):
            add(k)
    else:
        plain = set()
        add_plain = plain.add
        for k in _keys(n, BUILD_SEED, size):
            add_plain(k)
    build = time.perf_counter() - t
    rss1 = _status("VmRSS")
    hwm = _status("VmHWM")

    t = time.perf_counter()
    for _ in _keys(n, BUILD_SEED, size):
        pass
    gen = time.perf_counter() - t

    m = min(lookups, n)
    # Hits in random order, as fresh bytes objects laid out in lookup order: the
    # looked-up key is warm and its hash not cached, like a just-parsed address.
    picked = [k for k, _ in zip(_keys(n, BUILD_SEED, size), range(m), strict=False)]
    random.Random(3).shuffle(picked)
    hits = [bytes(bytearray(k)) for k in picked]
    del picked
    misses = list(_keys(lookups, MISS_SEED, size))
    if index is not None:
        target: AddressIndex | set[bytes] = index
        own = index.memory_bytes()
    else:
        assert plain is not None
        target = plain
        own = sys.getsizeof(plain) + sum(map(sys.getsizeof, plain))
    hit_ns, hit_found = _time_lookups(target, hits)
    miss_ns, miss_found = _time_lookups(target, misses)
    if len(target) != n or hit_found != m or miss_found:
        raise RuntimeError(f"wrong answers: size={len(target)} hits={hit_found}/{m} misses={miss_found}")
    return {
        "impl": impl, "n": n, "key_size": size, "rss": rss1 - rss0, "peak": hwm - rss0, "own": own,
        "build": build, "gen": gen, "hit_ns": hit_ns, "miss_ns": miss_ns,
    }


def run(sizes: list[int], impls: list[str], lookups: int,
        key_size: int = KEY_SIZE) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for n in sizes:
        for impl in impls:
            out = subprocess.run(
                [sys.executable, "-m", "bench.address_memory", "--child", impl, str(n),
                 "--lookups", str(lookups), "--key-size", str(key_size)],
                check=True, capture_output=True, text=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(_fmt(row), flush=True)
    return rows


HEADER = (f"{'impl':<6} {'N':>11} {'RSS MB':>8} {'peak MB':>8} {'B/addr':>7} {'own MB':>8} "
          f"{'build s':>8} {'(gen s)':>8} {'hit ns':>7} {'miss ns':>8}")


def _fmt(r: dict[str, object]) -> str:
    n = int(str(r["n"]))
    rss = float(str(r["rss"]))
    mb = 1024 * 1024
    return (f"{r['impl']!s:<6} {n:>11,} {rss / mb:>8.1f} {float(str(r['peak'])) / mb:>8.1f} {rss / n:>7.1f} "
            f"{float(str(r['own'])) / mb:>8.1f} {float(str(r['build'])):>8.2f} {float(str(r['gen'])):>8.2f} "
            f"{float(str(r['hit_ns'])):>7.0f} {float(str(r['miss_ns'])):>8.0f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000000,10000000", help="comma-separated key counts")
    p.add_argument("--impls", default="index,set", help="comma-separated: index, set")
    p.add_argument("--lookups", type=int, default=1_000_000, help="hit and miss lookups per run")
    p.add_argument("--key-size", type=int, default=KEY_SIZE,
                   help="key width in bytes: 20 (EVM), 34 (UTXO scripts)")
    p.add_argument("--child", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        impl, n = a.child[0], int(a.child[1])
        if impl not in ("index", "set"):
            p.error(f"unknown impl {impl!r}")
        print(json.dumps(child(impl, n, a.lookups, a.key_size)))
        return
    impls = [s for s in a.impls.split(",") if s]
    sizes = [int(s.replace("_", "")) for s in a.sizes.split(",") if s]
    print(f"python {sys.version.split()[0]}, bytes hash {sys.hash_info.algorithm}, "
          f"{a.key_size}-byte keys, {a.lookups:,} hit + {a.lookups:,} miss lookups per run; "
          "hit/miss ns include the loop")
    print(HEADER, flush=True)
    run(sizes, impls, a.lookups, a.key_size)


if __name__ == "__main__":
    main()
