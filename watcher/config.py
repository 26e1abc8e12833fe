"""Configuration: one YAML file, overridable by environment, validated at start.

Every error names the key path (``chains.eth.endpoints[0].url``) and the reason,
and is raised before anything connects anywhere.

Environment overrides: ``WATCHER__<PATH>`` with ``__`` between keys, the value
read as YAML, e.g. ``WATCHER__KAFKA__BOOTSTRAP_SERVERS=broker:9092`` or
``WATCHER__CHAINS__ETH__ENDPOINTS='[{name: a, url: "http://n:8545"}]'``.
Secrets (``sasl_password``) are meant to arrive this way, never in the file.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from watcher.errors import ConfigError
from watcher.types import AssetSymbol, ChainId

ENV_PREFIX = "WATCHER__"
_CHAIN_ID_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_SYMBOL_RE = re.compile(r"^[A-Za-z0-9.\-_]{1,20}$")
_HEX_ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")


class Family(StrEnum):
    EVM = "evm"
    BITCOIN = "bitcoin"


class FinalityMode(StrEnum):
    DEPTH = "depth"
    FINALIZED = "finalized"


class TraceMode(StrEnum):
    AUTO = "auto"
    ON = "on"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    url: str
    username: str | None = None
    """HTTP basic auth, read from the environment or a secret file, never from the YAML."""
    password: str | None = None

    def __repr__(self) -> str:
        # URLs often carry API keys in the path or query; only the name is safe to print.
        return f"Endpoint(name={self.name!r})"


@dataclass(frozen=True, slots=True)
class MempoolConfig:
    enabled: bool
    poll_interval_ms: int
    drop_after_s: int
    """A seen transaction gone from the mempool this long (and not mined) is reverted."""


@dataclass(frozen=True, slots=True)
class Token:
    contract: str
    symbol: AssetSymbol
    decimals: int


@dataclass(frozen=True, slots=True)
class Tier:
    below: int | None
    """Exclusive upper bound of the amount in base units; None for the last tier."""
    required: int


@dataclass(frozen=True, slots=True)
class ConfirmationRule:
    tiers: tuple[Tier, ...]

    def required_for(self, amount: int) -> int:
        for tier in self.tiers:
            if tier.below is None or amount < tier.below:
                return tier.required
        return self.tiers[-1].required

    @property
    def max_required(self) -> int:
        return max(t.required for t in self.tiers)


@dataclass(frozen=True, slots=True)
class ChainConfig:
    id: ChainId
    family: Family
    chain_id: int | None
    network: str | None
    endpoints: tuple[Endpoint, ...]
    poll_interval_ms: int
    start_block: int | None
    """None means: start at the node's head when there is no checkpoint."""
    reorg_window: int
    finality_mode: FinalityMode
    finality_depth: int
    native_symbol: AssetSymbol
    native_decimals: int
    tokens: tuple[Token, ...]
    confirmations: Mapping[str, ConfirmationRule]
    default_confirmations: ConfirmationRule
    traces: TraceMode
    batch_size: int
    blocks_per_request: int
    """Blocks per JSON-RPC batch POST: small keeps each answer's parse in CPU cache (2 measured
    2x cheaper per block than 25); raise max_concurrency instead to hide a remote node's latency."""
    max_concurrency: int
    rpc_timeout_ms: int
    rpc_max_attempts: int
    lag_tolerance_blocks: int
    dust_threshold: int = 0
    """Outputs below this many base units are ignored (and counted); UTXO chains only."""
    mempool: MempoolConfig = MempoolConfig(enabled=False, poll_interval_ms=1000,
                                           drop_after_s=86_400)
    confirm_quorum: int = 1
    """Endpoints that must report a deposit's block hash at its height in their canonical
    chain before ``deposit.confirmed`` (1: the followed endpoint alone, no extra request)."""

    def rule_for(self, asset: str) -> ConfirmationRule:
        return self.confirmations.get(asset, self.default_confirmations)


@dataclass(frozen=True, slots=True)
class Topics:
    deposits: str = "payments.deposits"
    withdrawals: str = "payments.withdrawals"
    withdrawal_requests: str = "payments.withdrawal-requests"
    address_registrations: str = "payments.address-registrations"
    dead_letter: str = "payments.dead-letter"
    checkpoints: str = "watcher.checkpoints"
    """Prefix of the per-chain checkpoint topics ``<checkpoints>.<chain id>``; a topic of
    exactly this name is the one-partition layout of earlier versions, read only to migrate."""
    address_snapshots: str = "watcher.address-snapshots"
    leadership: str = "watcher.leadership"


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    bootstrap_servers: str
    topics: Topics
    transactional_id_prefix: str
    client_id: str
    security_protocol: str
    sasl_mechanism: str | None
    sasl_username: str | None
    sasl_password: str | None = field(repr=False)
    ssl_cafile: str | None
    transaction_timeout_ms: int


@dataclass(frozen=True, slots=True)
class LeadershipConfig:
    enabled: bool = False
    """Off: every replica follows its chains (run one replica). On: replicas of a chain elect
    one leader through Kafka and the others stand by (run two for a fast takeover)."""
    session_timeout_ms: int = 10_000
    """How long a dead leader keeps the role before a standby takes over."""


@dataclass(frozen=True, slots=True)
class WatcherConfig:
    kafka: KafkaConfig
    chains: Mapping[ChainId, ChainConfig]
    metrics_host: str
    metrics_port: int
    addresses_file: Path | None
    log_level: str
    log_json: bool
    leadership: LeadershipConfig = field(default_factory=LeadershipConfig)
    shutdown_grace_s: int = 30
    """Seconds from SIGTERM to exit: the in-flight step may finish (its Kafka transaction
    committed) until shortly before; then it is cancelled and its transaction aborted."""
    withdrawals: WithdrawalsConfig | None = None


# ---------------------------------------------------------------- loading


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> WatcherConfig:
    """Reads, overrides and validates; raises :class:`ConfigError` naming the key."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read {p}: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("<file>", f"{p} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError("<root>", "must be a mapping")
    env = os.environ if environ is None else environ
    apply_env_overrides(raw, env)
    return parse(raw, base_dir=p.parent, environ=env)


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__") if part]
        if not path:
            continue
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(".".join(path), f"environment {name} is not valid YAML: {exc}") from exc
        node: dict[str, Any] = raw
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            if not isinstance(child, dict):
                raise ConfigError(".".join(path[: i + 1]), f"environment {name} overrides a non-mapping")
            node = child
        node[path[-1]] = parsed


def parse(raw: Mapping[str, Any], base_dir: Path = Path(),
          environ: Mapping[str, str] | None = None) -> WatcherConfig:
    """Validates a raw mapping; ``environ`` (default: the process's) and ``base_dir`` (for
    relative paths) are where endpoint credentials are read from."""
    env = os.environ if environ is None else environ
    r = _Reader(raw, "")
    r.only({"kafka", "chains", "metrics", "addresses_file", "logging", "leadership",
            "shutdown_grace_s", "withdrawals"})
    kafka = _parse_kafka(r.section("kafka"))
    chains_raw = r.section("chains")
    if not chains_raw.raw:
        raise ConfigError("chains", "at least one chain is required")
    chains: dict[ChainId, ChainConfig] = {}
    for cid in chains_raw.raw:
        if not isinstance(cid, str) or not _CHAIN_ID_RE.match(cid):
            raise ConfigError(f"chains.{cid}", "chain id must match [a-z][a-z0-9_-]{0,31}")
        chains[ChainId(cid)] = _parse_chain(ChainId(cid), chains_raw.section(cid), base_dir, env)
    metrics = r.section("metrics", required=False)
    metrics.only({"host", "port"})
    logging_ = r.section("logging", required=False)
    logging_.only({"level", "json"})
    level = logging_.text("level", "info").lower()
    if level not in {"debug", "info", "warning", "error"}:
        raise ConfigError("logging.level", "must be one of debug, info, warning, error")
    addresses_file = r.opt_text("addresses_file")
    return WatcherConfig(
        kafka=kafka,
        chains=chains,
        metrics_host=metrics.text("host", "127.0.0.1"),
        metrics_port=metrics.integer("port", 9308, lo=1, hi=65535),
        addresses_file=(base_dir / addresses_file) if addresses_file else None,
        log_level=level,
        log_json=logging_.flag("json", True),
        shutdown_grace_s=r.integer("shutdown_grace_s", 30, lo=2, hi=3600),
        leadership=_parse_leadership(r.section("leadership", required=False)),
        withdrawals=parse_withdrawals(r.raw.get("withdrawals"), chains),
    )


def _parse_leadership(r: _Reader) -> LeadershipConfig:
    r.only({"enabled", "session_timeout_ms"})
    return LeadershipConfig(
        enabled=r.flag("enabled", False),
        # The broker bounds it (group.min/max.session.timeout.ms: 6 s to 30 min by default).
        session_timeout_ms=r.integer("session_timeout_ms", 10_000, lo=6_000, hi=300_000),
    )


def _parse_kafka(r: _Reader) -> KafkaConfig:
    r.only({"bootstrap_servers", "topics", "transactional_id_prefix", "client_id",
            "security_protocol", "sasl_mechanism", "sasl_username", "sasl_password",
            "ssl_cafile", "transaction_timeout_ms"})
    topics_r = r.section("topics", required=False)
    defaults = Topics()
    names = {f: topics_r.text(f, getattr(defaults, f)) for f in Topics.__dataclass_fields__}
    topics_r.only(set(names))
    for f, name in names.items():
        if not re.match(r"^[A-Za-z0-9._-]{1,249}$", name):
            raise ConfigError(f"kafka.topics.{f}", "not a valid Kafka topic name")
    protocol = r.text("security_protocol", "PLAINTEXT").upper()
    if protocol not in {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}:
        raise ConfigError("kafka.security_protocol",
                          "must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    mechanism = r.opt_text("sasl_mechanism")
    if protocol.startswith("SASL") and mechanism is None:
        raise ConfigError("kafka.sasl_mechanism", f"required with security_protocol {protocol}")
    return KafkaConfig(
        bootstrap_servers=r.text("bootstrap_servers"),
        topics=Topics(**names),
        transactional_id_prefix=r.text("transactional_id_prefix", "watcher"),
        client_id=r.text("client_id", "watcher"),
        security_protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username=r.opt_text("sasl_username"),
        sasl_password=r.opt_text("sasl_password"),
        ssl_cafile=r.opt_text("ssl_cafile"),
        transaction_timeout_ms=r.integer("transaction_timeout_ms", 60_000, lo=1_000, hi=900_000),
    )


def _parse_chain(cid: ChainId, r: _Reader, base_dir: Path, environ: Mapping[str, str]
                 ) -> ChainConfig:
    r.only({"family", "chain_id", "network", "endpoints", "poll_interval_ms", "start_block",
            "reorg_window", "finality", "native_asset", "tokens", "confirmations", "traces",
            "batch_size", "blocks_per_request", "max_concurrency", "rpc_timeout_ms", "rpc_max_attempts",
            "lag_tolerance_blocks", "dust_threshold", "mempool", "confirm_quorum"})
    family_text = r.text("family")
    try:
        family = Family(family_text)
    except ValueError:
        raise ConfigError(r.key("family"), f"unknown family {family_text!r}; known: evm, bitcoin") from None
    chain_id = r.opt_integer("chain_id", lo=1)
    if family is Family.EVM and chain_id is None:
        raise ConfigError(r.key("chain_id"), "required for an evm chain (checked against the node)")
    network = r.opt_text("network")
    if family is Family.BITCOIN:
        known = _bitcoin_networks()
        if network is None:
            raise ConfigError(r.key("network"),
                              f"required for a bitcoin chain; one of {', '.join(known)}")
        if network not in known:
            raise ConfigError(r.key("network"),
                              f"unknown network {network!r}; one of {', '.join(known)}")
    elif network is not None:
        raise ConfigError(r.key("network"), "only for a bitcoin chain (an evm chain has chain_id)")

    endpoints_raw = r.items("endpoints")
    if not endpoints_raw:
        raise ConfigError(r.key("endpoints"), "at least one endpoint is required")
    endpoints: list[Endpoint] = []
    for i, item in enumerate(endpoints_raw):
        er = _Reader(item, r.key(f"endpoints[{i}]"))
        er.only({"name", "url", *_CREDENTIAL_KEYS})
        url = er.text("url")
        try:
            parts = urlsplit(url)
            host = parts.hostname
            _ = parts.port  # a port that is not a number in 0-65535 raises here, not at start
        except ValueError:
            # Never echo the text: a malformed URL may still hold a password.
            raise ConfigError(er.key("url"), "must be an http(s) URL with a host") from None
        if parts.scheme not in {"http", "https"} or not host:
            raise ConfigError(er.key("url"), "must be an http(s) URL with a host")
        if "@" in parts.netloc:
            raise ConfigError(er.key("url"),
                              "must not embed credentials (user:password@); use username_env "
                              "or username_file and password_env or password_file")
        name = er.text("name", f"endpoint{i}")
        if not re.match(r"^[A-Za-z0-9_.-]{1,40}$", name):
            raise ConfigError(er.key("name"), "1-40 characters of [A-Za-z0-9_.-] (used as a metric label)")
        username = _secret(er, "username", base_dir, environ)
        password = _secret(er, "password", base_dir, environ)
        if (username is None) != (password is None):
            missing = "password" if password is None else "username"
            raise ConfigError(er.key(f"{missing}_env"),
                              f"{missing}_env or {missing}_file is required with the other credential")
        endpoints.append(Endpoint(name=name, url=url, username=username, password=password))
    if len({e.name for e in endpoints}) != len(endpoints):
        raise ConfigError(r.key("endpoints"), "endpoint names must be unique")
    confirm_quorum = r.integer("confirm_quorum", 1, lo=1)
    if confirm_quorum > len(endpoints):
        raise ConfigError(r.key("confirm_quorum"),
                          f"{confirm_quorum} is more than the {len(endpoints)} endpoint(s) "
                          "that could agree")

    start = r.raw.get("start_block", "latest")
    if start == "latest":
        start_block: int | None = None
    elif isinstance(start, int) and not isinstance(start, bool) and start >= 0:
        start_block = start
    else:
        raise ConfigError(r.key("start_block"), "a block number >= 0 or 'latest'")

    fin = r.section("finality", required=False)
    fin.only({"mode", "depth"})
    mode_text = fin.text("mode", "depth")
    try:
        finality_mode = FinalityMode(mode_text)
    except ValueError:
        raise ConfigError(fin.key("mode"), "must be 'depth' or 'finalized'") from None
    finality_depth = fin.integer("depth", 64, lo=1, hi=100_000)

    native = r.section("native_asset")
    native.only({"symbol", "decimals"})
    native_symbol = _symbol(native, "symbol")
    native_decimals = native.integer("decimals", lo=0, hi=36)

    tokens: list[Token] = []
    for i, item in enumerate(r.items("tokens", required=False)):
        tr = _Reader(item, r.key(f"tokens[{i}]"))
        tr.only({"contract", "symbol", "decimals"})
        contract = tr.text("contract")
        if family is Family.EVM and not _HEX_ADDRESS_RE.match(contract):
            raise ConfigError(tr.key("contract"), "must be a 0x-prefixed 20-byte hex address")
        tokens.append(Token(contract=contract, symbol=_symbol(tr, "symbol"),
                            decimals=tr.integer("decimals", lo=0, hi=36)))
    symbols = [native_symbol, *(t.symbol for t in tokens)]
    if len(set(symbols)) != len(symbols):
        raise ConfigError(r.key("tokens"), "asset symbols must be unique on a chain")
    if len({t.contract.lower() for t in tokens}) != len(tokens):
        raise ConfigError(r.key("tokens"), "a token contract is listed twice")

    conf = r.section("confirmations", required=False)
    rules: dict[str, ConfirmationRule] = {}
    default_rule = ConfirmationRule((Tier(None, 12),))
    for asset in conf.raw:
        rule = _parse_rule(conf, str(asset))
        if asset == "default":
            default_rule = rule
        elif asset not in symbols:
            raise ConfigError(conf.key(str(asset)), f"unknown asset; configured: {', '.join(symbols)}")
        else:
            rules[str(asset)] = rule

    reorg_window = r.integer("reorg_window", 128, lo=2, hi=100_000)
    deepest = max(rules.get(s, default_rule).max_required for s in symbols)
    if reorg_window < deepest:
        raise ConfigError(r.key("reorg_window"),
                          f"{reorg_window} is smaller than the deepest confirmation rule ({deepest}); "
                          "a reorg of a pending deposit could not be seen")

    traces_text = r.text("traces", "auto")
    try:
        traces = TraceMode(traces_text)
    except ValueError:
        raise ConfigError(r.key("traces"), "must be auto, on or off") from None

    dust_threshold = r.integer("dust_threshold", 546 if family is Family.BITCOIN else 0,
                               lo=0, hi=21_000_000 * 100_000_000)
    mp = r.section("mempool", required=False)
    mp.only({"enabled", "poll_interval_ms", "drop_after_s"})
    mempool = MempoolConfig(enabled=mp.flag("enabled", False),
                            poll_interval_ms=mp.integer("poll_interval_ms", 1000, lo=50, hi=600_000),
                            drop_after_s=mp.integer("drop_after_s", 86_400, lo=1, hi=30 * 86_400))
    if mempool.enabled and family is not Family.BITCOIN:
        raise ConfigError(mp.key("enabled"), "mempool watching is for bitcoin chains only")

    return ChainConfig(
        id=cid,
        family=family,
        chain_id=chain_id,
        network=network,
        endpoints=tuple(endpoints),
        poll_interval_ms=r.integer("poll_interval_ms", 1000, lo=10, hi=600_000),
        start_block=start_block,
        reorg_window=reorg_window,
        finality_mode=finality_mode,
        finality_depth=finality_depth,
        native_symbol=native_symbol,
        native_decimals=native_decimals,
        tokens=tuple(tokens),
        confirmations=rules,
        default_confirmations=default_rule,
        traces=traces,
        batch_size=r.integer("batch_size", 200, lo=1, hi=1_000),
        blocks_per_request=r.integer("blocks_per_request", 2, lo=1, hi=100),
        max_concurrency=r.integer("max_concurrency", 4, lo=1, hi=64),
        rpc_timeout_ms=r.integer("rpc_timeout_ms", 10_000, lo=100, hi=300_000),
        rpc_max_attempts=r.integer("rpc_max_attempts", 5, lo=1, hi=100),
        lag_tolerance_blocks=r.integer("lag_tolerance_blocks", 0, lo=0, hi=10_000),
        dust_threshold=dust_threshold,
        mempool=mempool,
        confirm_quorum=confirm_quorum,
    )


_CREDENTIAL_KEYS = ("username_env", "username_file", "password_env", "password_file")


def _bitcoin_networks() -> tuple[str, ...]:
    from chains.bitcoin.networks import NETWORKS

    return tuple(sorted(NETWORKS))


def _secret(er: _Reader, what: str, base_dir: Path, environ: Mapping[str, str]) -> str | None:
    """A credential from ``<what>_env`` (an environment variable's name) or ``<what>_file``
    (a mounted secret, relative to the config file); None when neither is given. The value
    itself never appears in an error."""
    env_name = er.opt_text(f"{what}_env")
    file_name = er.opt_text(f"{what}_file")
    if env_name is not None and file_name is not None:
        raise ConfigError(er.key(f"{what}_env"), f"give {what}_env or {what}_file, not both")
    if env_name is not None:
        value = environ.get(env_name)
        if not value:
            raise ConfigError(er.key(f"{what}_env"),
                              f"environment variable {env_name} is not set or empty")
        return value
    if file_name is not None:
        path = base_dir / file_name
        try:
            value = path.read_text(encoding="utf-8").strip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(er.key(f"{what}_file"), f"cannot read {path}: {reason}") from None
        if not value:
            raise ConfigError(er.key(f"{what}_file"), f"{path} is empty")
        return value
    return None


def _parse_rule(conf: _Reader, asset: str) -> ConfirmationRule:
    key = conf.key(asset)
    value = conf.raw[asset]
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(key, "required confirmations must be >= 1")
        return ConfirmationRule((Tier(None, value),))
    if not isinstance(value, list) or not value:
        raise ConfigError(key, "an integer, or a list of tiers {below: <amount>, required: <n>}")
    tiers: list[Tier] = []
    for i, item in enumerate(value):
        tr = _Reader(item, f"{key}[{i}]")
        tr.only({"below", "required"})
        below_raw = tr.raw.get("below")
        below = None if below_raw is None else _amount(below_raw, tr.key("below"))
        tiers.append(Tier(below, tr.integer("required", lo=1, hi=100_000)))
    for i, tier in enumerate(tiers[:-1]):
        if tier.below is None:
            raise ConfigError(f"{key}[{i}].below", "only the last tier may omit 'below'")
    bounds = [t.below for t in tiers if t.below is not None]
    if bounds != sorted(set(bounds)):
        raise ConfigError(key, "tier bounds must be strictly increasing")
    if tiers[-1].below is not None:
        raise ConfigError(f"{key}[{len(tiers) - 1}]", "the last tier must omit 'below' to cover any amount")
    return ConfirmationRule(tuple(tiers))


def _amount(value: object, key: str) -> int:
    """Amounts are integers in base units, given as int or decimal string; never a float."""
    if isinstance(value, (bool, float)):
        raise ConfigError(key, "amounts are integers in base units (write big ones as strings)")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and value.isdigit():
        n = int(value)
    else:
        raise ConfigError(key, "amounts are integers in base units (write big ones as strings)")
    if n <= 0:
        raise ConfigError(key, "must be > 0")
    return n


def _symbol(r: _Reader, name: str) -> AssetSymbol:
    s = r.text(name)
    if not _SYMBOL_RE.match(s):
        raise ConfigError(r.key(name), "1-20 characters of [A-Za-z0-9._-]")
    return AssetSymbol(s)


class _Reader:
    """Typed access to one mapping of the raw config, naming the full key in errors."""

    def __init__(self, raw: object, prefix: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(prefix or "<root>", "must be a mapping")
        self.raw: dict[Any, Any] = raw
        self.prefix = prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def only(self, allowed: set[str]) -> None:
        for k in self.raw:
            if k not in allowed:
                raise ConfigError(self.key(str(k)), f"unknown key; allowed: {', '.join(sorted(allowed))}")

    def section(self, name: str, required: bool = True) -> _Reader:
        if name not in self.raw:
            if required:
                raise ConfigError(self.key(name), "missing")
            return _Reader({}, self.key(name))
        return _Reader(self.raw[name], self.key(name))

    def items(self, name: str, required: bool = True) -> list[Any]:
        value = self.raw.get(name)
        if value is None:
            if required:
                raise ConfigError(self.key(name), "missing")
            return []
        if not isinstance(value, list):
            raise ConfigError(self.key(name), "must be a list")
        return value

    _MISSING: Any = object()

    def text(self, name: str, default: Any = _MISSING) -> str:
        value = self.raw.get(name, default)
        if value is self._MISSING or value is None:
            raise ConfigError(self.key(name), "missing")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ConfigError(self.key(name), "must be a string")
        text = str(value)
        if not text:
            raise ConfigError(self.key(name), "must not be empty")
        return text

    def opt_text(self, name: str) -> str | None:
        if self.raw.get(name) is None:
            return None
        return self.text(name)

    def integer(self, name: str, default: Any = _MISSING, lo: int | None = None,
            hi: int | None = None) -> int:
        value = self.raw.get(name, default)
        if value is self._MISSING or value is None:
            raise ConfigError(self.key(name), "missing")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.key(name), f"must be an integer, got {value!r}")
        if lo is not None and value < lo:
            raise ConfigError(self.key(name), f"must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise ConfigError(self.key(name), f"must be <= {hi}, got {value}")
        return value

    def opt_integer(self, name: str, lo: int | None = None) -> int | None:
        if self.raw.get(name) is None:
            return None
        return self.integer(name, lo=lo)

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw.get(name, default)
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), "must be true or false")
        return value


# ---------------------------------------------------------------- withdrawals

MAX_FEE_RATE = 10_000
"""Highest ``max_fee_rate`` (sat/vB) a UTXO chain's withdrawals may be configured with."""


@dataclass(frozen=True, slots=True)
class WithdrawalAssetLimits:
    per_request_limit: int
    daily_limit: int
    """Rolling 24 hours, in base units."""
    low_balance: int = 0
    """The hot wallet's balance below which the low-balance alert fires (0: never)."""


@dataclass(frozen=True, slots=True)
class HotKeySource:
    """Where the hot key is read from; the configuration names the place, never holds the key."""

    file: Path | None
    env: str | None


@dataclass(frozen=True, slots=True)
class ChainWithdrawals:
    chain: ChainId
    confirmations: int
    stuck_blocks: int
    max_fee: int
    """EVM: max fee per gas in wei. Bitcoin: max fee rate in sat/vB."""
    max_tip: int
    """EVM: max priority fee per gas in wei. Bitcoin: 0."""
    min_fee: int
    """Bitcoin: the fee-rate floor in sat/vB. EVM: 0."""
    token_gas_limit: int
    hot_key: HotKeySource
    assets: Mapping[AssetSymbol, WithdrawalAssetLimits]
    """The allow-list: only these assets may be withdrawn on the chain."""
    input_confirmations: int = 0
    """UTXO: confirmations of a received hot-wallet output before it may be spent. EVM: 0."""
    spend_own_change: bool = False
    """UTXO: the hot wallet's own change may be spent from its first confirmation."""
    batch: BatchConfig | None = None
    """UTXO: several requests paid by one transaction; None (the default): one each."""


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """``withdrawals.chains.<utxo>.batch``: gather up to ``max_outputs`` requests, waiting
    at most ``max_wait_blocks`` blocks for more before paying those gathered."""

    max_outputs: int
    max_wait_blocks: int


@dataclass(frozen=True, slots=True)
class WithdrawalsConfig:
    requesters: Mapping[str, bytes]
    """Requesting service name -> raw 32-byte Ed25519 public key."""
    chains: Mapping[ChainId, ChainWithdrawals]


def parse_withdrawals(raw: object, chains: Mapping[ChainId, ChainConfig]) -> WithdrawalsConfig | None:
    """The optional ``withdrawals`` section; None when absent (deposits only)."""
    if raw is None:
        return None
    r = _Reader(raw, "withdrawals")
    r.only({"requesters", "chains"})
    req = r.section("requesters")
    if not req.raw:
        raise ConfigError(req.prefix, "at least one requesting service's public key is required")
    requesters: dict[str, bytes] = {}
    for name in req.raw:
        text = req.text(str(name))
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(req.key(str(name)), "must be a base64 Ed25519 public key") from None
        if len(key) != 32:
            raise ConfigError(req.key(str(name)), f"an Ed25519 public key has 32 bytes, got {len(key)}")
        requesters[str(name)] = key
    chains_r = r.section("chains")
    out: dict[ChainId, ChainWithdrawals] = {}
    for cid in chains_r.raw:
        chain = chains.get(ChainId(str(cid)))
        if chain is None:
            raise ConfigError(chains_r.key(str(cid)), "not a configured chain")
        out[chain.id] = _parse_chain_withdrawals(chain, chains_r.section(str(cid)))
    return WithdrawalsConfig(requesters=requesters, chains=out)


def _required_amount(r: _Reader, name: str) -> int:
    if r.raw.get(name) is None:
        raise ConfigError(r.key(name), "missing")
    return _amount(r.raw[name], r.key(name))


def _parse_chain_withdrawals(chain: ChainConfig, r: _Reader) -> ChainWithdrawals:
    evm = chain.family is Family.EVM
    fee_keys = ({"max_fee_per_gas", "max_priority_fee_per_gas", "token_gas_limit"} if evm
                else {"max_fee_rate", "min_fee_rate", "input_confirmations", "spend_own_change",
                      "batch"})
    r.only({"confirmations", "stuck_blocks", "hot_key", "assets"} | fee_keys)
    if evm:
        max_fee = _required_amount(r, "max_fee_per_gas")
        max_tip = _required_amount(r, "max_priority_fee_per_gas")
        if max_tip > max_fee:
            raise ConfigError(r.key("max_priority_fee_per_gas"), "must not exceed max_fee_per_gas")
        min_fee = 0
    else:
        max_fee = _required_amount(r, "max_fee_rate")
        min_fee = _amount(r.raw.get("min_fee_rate", 1), r.key("min_fee_rate"))
        max_tip = 0
        if min_fee > max_fee:
            raise ConfigError(r.key("min_fee_rate"), "must not exceed max_fee_rate")
        if max_fee > MAX_FEE_RATE:
            # sat/vB: a cap this high is a unit mistake (sat/kvB, or BTC), never a policy.
            raise ConfigError(r.key("max_fee_rate"), f"is in sat/vB and must be at most {MAX_FEE_RATE}")
    key_r = r.section("hot_key")
    key_r.only({"file", "env"})
    key_file, key_env = key_r.opt_text("file"), key_r.opt_text("env")
    if (key_file is None) == (key_env is None):
        raise ConfigError(key_r.prefix, "exactly one of file (a mounted secret) or env (a variable name)")
    if key_env is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key_env):
        raise ConfigError(key_r.key("env"), "must be an environment variable name (the key itself "
                                            "never goes in the configuration)")
    known = {chain.native_symbol, *(t.symbol for t in chain.tokens)}
    assets_r = r.section("assets")
    if not assets_r.raw:
        raise ConfigError(assets_r.prefix, "at least one asset must be allowed")
    assets: dict[AssetSymbol, WithdrawalAssetLimits] = {}
    for sym in assets_r.raw:
        ar = assets_r.section(str(sym))
        if sym not in known:
            raise ConfigError(ar.prefix, f"unknown asset; configured: {', '.join(sorted(known))}")
        ar.only({"per_request_limit", "daily_limit", "low_balance"})
        per = _required_amount(ar, "per_request_limit")
        daily = _required_amount(ar, "daily_limit")
        if daily < per:
            raise ConfigError(ar.key("daily_limit"), "must be at least per_request_limit")
        low = 0 if ar.raw.get("low_balance") is None else _amount(ar.raw["low_balance"],
                                                                    ar.key("low_balance"))
        assets[AssetSymbol(str(sym))] = WithdrawalAssetLimits(per, daily, low)
    confirmations = r.integer("confirmations", chain.default_confirmations.max_required, lo=1,
                              hi=chain.reorg_window)
    input_confirmations = 0 if evm else r.integer("input_confirmations", confirmations, lo=1,
                                                   hi=chain.reorg_window)
    return ChainWithdrawals(
        chain=chain.id,
        confirmations=confirmations,
        stuck_blocks=r.integer("stuck_blocks", 10, lo=1, hi=100_000),
        max_fee=max_fee,
        max_tip=max_tip,
        min_fee=min_fee,
        token_gas_limit=r.integer("token_gas_limit", 100_000, lo=21_000, hi=10_000_000) if evm else 0,
        hot_key=HotKeySource(file=Path(key_file) if key_file else None, env=key_env),
        assets=assets,
        input_confirmations=input_confirmations,
        spend_own_change=False if evm else r.flag("spend_own_change", True),
        batch=None if evm else _parse_batch(r),
    )


def _parse_batch(r: _Reader) -> BatchConfig | None:
    """Off unless ``batch`` is given (``{}`` takes the defaults; ``enabled: false`` is off)."""
    if r.raw.get("batch") is None:
        return None
    b = r.section("batch")
    b.only({"enabled", "max_outputs", "max_wait_blocks"})
    if not b.flag("enabled", True):
        return None
    # 2 .. 100 outputs: one is no batch, and a bounded transaction keeps a bump cheap.
    return BatchConfig(max_outputs=b.integer("max_outputs", 10, lo=2, hi=100),
                       max_wait_blocks=b.integer("max_wait_blocks", 1, lo=0, hi=100))
