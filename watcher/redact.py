"""Masking secrets in anything shown to people: logs, ``check-config``, CLI error lines.

Two mechanisms, used together:

* **Known values.** :func:`secret_values` lists the secrets a configuration holds
  (the SASL password; an endpoint URL's user info, query values and key-like path
  segments). A :class:`Redactor` replaces each occurrence of them, whatever the text.
* **Patterns**, for secrets nobody told us about: credentials and query strings in
  any ``http(s)://`` URL and key-like path segments (``/v3/<32 hex>``),
  ``password=…``-style assignments, and 64-digit hex strings (private keys) outside
  fields that carry block hashes or txids.

Guarantee: a secret value of at least :data:`MIN_KNOWN_SECRET_LEN` characters that
was registered never survives :meth:`Redactor.scrub`. Shorter ones are still caught by
the patterns (they are not scrubbed everywhere: "watcher" as a password would
otherwise blank every logger name).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from watcher.config import WatcherConfig

MASK = "***"
MIN_KNOWN_SECRET_LEN = 8

# A path segment this long, of URL-safe characters, is an API key (Infura /v3/<32 hex>,
# Alchemy /v2/<key>, QuickNode /<token>/); route names (v3, rpc, ext, bc) are short.
_KEY_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_\-]{16,}$")
_URL_RE = re.compile(r"\bhttps?://[^\s'\"<>]+", re.IGNORECASE)
_ASSIGNMENT_RE = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|apikey|private[_-]?key|sasl_plain_password)"
    r"(\s*[=:]\s*)(['\"]?)[^\s'\",;&]+")
_HEX_KEY_RE = re.compile(r"\b(0x)?[0-9a-fA-F]{64}\b")
_HASH_FIELD_RE = re.compile(r"(^|_)(hash|txid|event_id|deposit_id|tip|head)$")
"""Fields whose 64-hex values are block hashes or txids, not keys (``block_hash``, ``txid``)."""


def mask_url(url: str) -> str:
    """The URL with user info, query values and key-like path segments replaced by ``***``.

    ``https://u:p@host:8545/v3/0123456789abcdef0123456789abcdef?apikey=k`` becomes
    ``https://***@host:8545/v3/***?apikey=***``. Scheme, host, port and short path
    segments stay, so an operator can still tell which node it is.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK
    netloc = host if ":" not in host else f"[{host}]"
    if port is not None:
        netloc = f"{netloc}:{port}"
    if parts.username is not None or parts.password is not None:
        netloc = f"{MASK}@{netloc}"
    path = "/".join(MASK if _KEY_SEGMENT_RE.match(seg) else seg for seg in parts.path.split("/"))
    query = "&".join(f"{k}={MASK}" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    if parts.query and not query:
        query = MASK
    return urlunsplit((parts.scheme, netloc, path, query, MASK if parts.fragment else ""))


def url_secrets(url: str) -> set[str]:
    """The parts of an endpoint URL that are secret: user info, query values, key segments."""
    found: set[str] = set()
    try:
        parts = urlsplit(url)
    except ValueError:
        return {url}
    if parts.username:
        found.add(parts.username)
    if parts.password:
        found.add(parts.password)
    found.update(v for _, v in parse_qsl(parts.query, keep_blank_values=True) if v)
    found.update(seg for seg in parts.path.split("/") if _KEY_SEGMENT_RE.match(seg))
    if found:
        found.add(url)
    return found


def secret_values(cfg: WatcherConfig) -> frozenset[str]:
    """Every secret value the configuration holds."""
    found: set[str] = set()
    if cfg.kafka.sasl_password:
        found.add(cfg.kafka.sasl_password)
    for chain in cfg.chains.values():
        for endpoint in chain.endpoints:
            found |= url_secrets(endpoint.url)
            # HTTP basic auth of UTXO nodes, from the environment or a secret file.
            found |= {v for v in (endpoint.username, endpoint.password) if v}
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class Redactor:
    """Scrubs text; hold one per process (see :func:`watcher.logs.configure`)."""

    known: tuple[str, ...] = ()
    """Registered secret values, longest first (a value inside another is masked after it)."""

    @classmethod
    def of(cls, values: Iterable[str]) -> Redactor:
        kept = {v for v in values if len(v) >= MIN_KNOWN_SECRET_LEN}
        return cls(tuple(sorted(kept, key=lambda v: (-len(v), v))))

    def scrub(self, text: str, field: str = "") -> str:
        """``text`` with every known secret and every secret-looking pattern masked.

        ``field`` is the name the text is logged under: hash fields keep their 64-hex values.
        """
        for value in self.known:
            if value in text:
                text = text.replace(value, MASK)
        text = _URL_RE.sub(lambda m: mask_url(m.group(0)), text)
        text = _ASSIGNMENT_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}{MASK}", text)
        if not _HASH_FIELD_RE.search(field):
            text = _HEX_KEY_RE.sub(MASK, text)
        return text


def masked_config(cfg: WatcherConfig) -> dict[str, Any]:
    """The effective configuration (file, environment and defaults) as plain YAML-able data,
    with the SASL password, endpoint credentials and the secret parts of endpoint URLs masked."""
    doc: dict[str, Any] = _plain(cfg)
    kafka = doc["kafka"]
    if kafka.get("sasl_password") is not None:
        kafka["sasl_password"] = MASK
    for chain in doc["chains"].values():
        for endpoint in chain["endpoints"]:
            endpoint["url"] = mask_url(endpoint["url"])
            for credential in ("username", "password"):
                if endpoint.get(credential) is not None:
                    endpoint[credential] = MASK
    return doc


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value
