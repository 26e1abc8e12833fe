"""The static watched-address file, for setups without a registration service.

YAML, one list per configured chain; an entry is the address text or a
mapping with ``address`` and an optional ``label``::

    eth:
      - "0x52908400098527886E0F7030069857D2E4169EE7"
      - {address: "0x8617e340b3d01fa5f11f306f4090fd50e238070d", label: "customer 42"}
    btc:
      - bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq

Every error is a :class:`ConfigError` naming the entry (``addresses_file.eth[3]``)
and the reason; nothing is added to any index unless the whole file is valid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from watcher.core.addresses import AddressIndex
from watcher.errors import ConfigError, InvalidAddress
from watcher.metrics import WATCHED_ADDRESSES
from watcher.ports import AddressCodec
from watcher.types import Address, AddressKey

KEY = "addresses_file"
MAX_LABEL_CHARS = 256


@dataclass(frozen=True, slots=True)
class FileEntry:
    address: Address
    key: AddressKey
    label: str | None


def parse_addresses(raw: Any, codecs: Mapping[str, AddressCodec]) -> dict[str, list[FileEntry]]:
    """Validates the parsed YAML document; raises :class:`ConfigError` naming the entry."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(KEY, "must be a mapping of chain id to a list of addresses")
    out: dict[str, list[FileEntry]] = {}
    for chain, section in raw.items():
        ckey = f"{KEY}.{chain}"
        if not isinstance(chain, str) or chain not in codecs:
            known = ", ".join(sorted(codecs)) or "none"
            raise ConfigError(ckey, f"unknown chain; configured: {known}")
        items = [] if section is None else section
        if not isinstance(items, list):
            raise ConfigError(ckey, "must be a list of addresses")
        codec = codecs[chain]
        entries: list[FileEntry] = []
        first_seen: dict[bytes, int] = {}
        for i, item in enumerate(items):
            ikey = f"{ckey}[{i}]"
            label: str | None = None
            if isinstance(item, str):
                text = item
            elif isinstance(item, dict):
                unknown = sorted(str(k) for k in item if k not in {"address", "label"})
                if unknown:
                    raise ConfigError(ikey, f"unknown key {unknown[0]!r}; allowed: address, label")
                text_raw = item.get("address")
                if not isinstance(text_raw, str) or not text_raw:
                    raise ConfigError(ikey, "address is required and must be a string")
                text = text_raw
                label_raw = item.get("label")
                if label_raw is not None:
                    if not isinstance(label_raw, str):
                        raise ConfigError(ikey, "label must be a string")
                    if len(label_raw) > MAX_LABEL_CHARS:
                        raise ConfigError(ikey, f"label is longer than {MAX_LABEL_CHARS} characters")
                    label = label_raw
            else:
                raise ConfigError(ikey, "must be an address string or {address, label}")
            try:
                canonical, index_key = codec.parse(text)
            except InvalidAddress as exc:
                raise ConfigError(ikey, f"invalid address {text[:100]!r}: {exc}") from None
            if index_key in first_seen:
                raise ConfigError(ikey, f"address {canonical} is already listed at "
                                        f"{ckey}[{first_seen[index_key]}]")
            first_seen[index_key] = i
            entries.append(FileEntry(canonical, index_key, label))
        out[chain] = entries
    return out


_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_addresses_file(path: Path,
                        codecs: Mapping[str, AddressCodec]) -> dict[str, list[FileEntry]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(KEY, f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(KEY, f"{path} is not UTF-8 text") from exc
    try:
        # libyaml's parser where PyYAML has it (the same safe constructors and resolvers, so
        # the same values): the pure-Python one took ~0.1 s of CPU a start for 1,000 addresses.
        raw = yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise ConfigError(KEY, f"{path} is not valid YAML: {exc}") from exc
    return parse_addresses(raw, codecs)


def load_addresses_file(path: Path, codecs: Mapping[str, AddressCodec],
                        indexes: Mapping[str, AddressIndex]) -> dict[str, int]:
    """Reads, validates, then adds every entry to its chain's index.

    Returns how many addresses each chain's file section held. Nothing is added
    when any entry is wrong.
    """
    usable = {chain: codec for chain, codec in codecs.items() if chain in indexes}
    parsed = read_addresses_file(path, usable)
    counts: dict[str, int] = {}
    for chain, entries in parsed.items():
        index = indexes[chain]
        for i, entry in enumerate(entries):
            try:
                index.add(entry.key, entry.label)
            except (ValueError, TypeError) as exc:  # the codec's key does not fit the index
                raise ConfigError(f"{KEY}.{chain}[{i}]", f"cannot be indexed: {exc}") from exc
        counts[chain] = len(entries)
        WATCHED_ADDRESSES.labels(chain).set(len(index))
    return counts
