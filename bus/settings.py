"""Settings shared by every arx process, read from ARX_* environment variables.

One place for every tunable so that a role started on another host needs only NATS_URL
(and whichever ARX_* it wants to change).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec

from bus.events import DEVICE_KINDS
from bus.roles import seed_path


DEFAULT_HOME = Path(".arx")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    # One server, or a cluster's servers separated by commas (as the nats CLI takes them).
    nats_url: str | None = None
    home: Path = DEFAULT_HOME
    # The nkey seed file this process connects with, whatever its role (default: the role's own file in
    # credentials_dir, where `arx server` writes one per role).
    credentials: Path | None = None
    # The CA that signed the servers' certificates (`arx server --tls` writes one under tls/); with it
    # every connection speaks TLS, as it does for a tls:// URL (which trusts the system's CAs without it).
    tls_ca: Path | None = None
    # Copies of the stream and the object store on a cluster (None: 3 on a cluster, 1 on one node).
    replicas: int | None = None
    # nats-server fsync interval: "always" trades publish speed for surviving an OS crash.
    sync_interval: str = "2m"
    embedded_port: int = 4222
    stream: str = "ARX_EVENTS"
    object_bucket: str = "arx-objects"
    duplicate_window_s: float = 3600.0
    # An executor that stops acking for ack_wait_s loses its trial to another executor.
    ack_wait_s: float = 30.0
    # Deliveries of one proposal before it is abandoned as harness_abort.
    max_attempts: int = 3
    log_tail_chars: int = 4000
    # LLM specialists. Prices: model -> (input, output) dollars per million tokens; unknown models cost 0.
    llm_prices: dict[str, tuple[float, float]] = {}
    # A campaign whose trials have cost this many dollars gets no more LLM proposals (None: no cap).
    cost_cap_usd: float | None = None
    # Dollars per device-hour by device kind ("cpu": per core-hour, "cuda": per GPU-hour), recorded in
    # each campaign this host starts, for its ledger; unknown kinds cost 0.
    device_prices: dict[str, float] = {}
    llm_timeout_s: float = 120.0
    # Retries inside the openai client (429, 5xx, timeouts); then up to llm_attempts rounds of those,
    # llm_backoff_s apart and doubling, before a proposal waits for the endpoint to recover.
    llm_max_retries: int = 2
    llm_attempts: int = 3
    llm_backoff_s: float = 2.0
    # How often a failed parse or apply is fed back to the model before the trial is invalid_edit.
    llm_repair_rounds: int = 2
    # 0 sends no token limit (for endpoints that refuse max_tokens).
    llm_max_tokens: int = 8192

    @property
    def pids_dir(self) -> Path:
        return self.home / "pids"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def credentials_dir(self) -> Path:
        return self.home / "credentials"

    def with_url(self, url: str) -> "Settings":
        return msgspec.structs.replace(self, nats_url=url)

    def seed(self, role: str) -> Path | None:
        """The seed file a process of this role connects with, or None to connect without one."""
        if self.credentials is not None:
            if not self.credentials.is_file():
                raise ValueError(f"ARX_CREDENTIALS={self.credentials}: no such file")
            return self.credentials
        own = seed_path(self.credentials_dir, role)
        return own if own.is_file() else None


# nats-server's own syntax: "always", or a duration such as 2m, 30s or 500ms.
_SYNC_INTERVAL = re.compile(r"^(always|(\d+(ns|us|ms|s|m|h))+)$")


def _sync_interval(raw: str) -> str:
    if not _SYNC_INTERVAL.match(raw):
        raise ValueError("must be 'always' or a duration such as 2m, 30s or 500ms")
    return raw


def _between(value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise ValueError(f"must be from {low} to {high}")
    return value


def _device_prices(raw: str) -> dict[str, float]:
    """A price per device kind: a misspelt kind would otherwise cost nothing without a word."""
    prices = msgspec.json.decode(raw, type=dict[str, float])
    if unknown := sorted(set(prices) - set(DEVICE_KINDS)):
        raise ValueError(f"unknown device kind {', '.join(unknown)} (the kinds: {', '.join(DEVICE_KINDS)})")
    return prices


_ENV = {
    "nats_url": ("NATS_URL", str),
    "home": ("ARX_HOME", Path),
    "credentials": ("ARX_CREDENTIALS", Path),
    "tls_ca": ("ARX_TLS_CA", Path),
    "replicas": ("ARX_REPLICAS", lambda raw: _between(int(raw), 1, 5)),
    "sync_interval": ("ARX_SYNC_INTERVAL", _sync_interval),
    "embedded_port": ("ARX_NATS_PORT", int),
    "stream": ("ARX_STREAM", str),
    "object_bucket": ("ARX_OBJECT_BUCKET", str),
    "duplicate_window_s": ("ARX_DUPLICATE_WINDOW_S", float),
    "ack_wait_s": ("ARX_ACK_WAIT_S", float),
    "max_attempts": ("ARX_MAX_ATTEMPTS", int),
    "log_tail_chars": ("ARX_LOG_TAIL_CHARS", int),
    "llm_prices": ("ARX_LLM_PRICES", lambda raw: msgspec.json.decode(raw, type=dict[str, tuple[float, float]])),
    "cost_cap_usd": ("ARX_COST_CAP_USD", float),
    "device_prices": ("ARX_DEVICE_PRICES", _device_prices),
    "llm_timeout_s": ("ARX_LLM_TIMEOUT_S", float),
    "llm_max_retries": ("ARX_LLM_MAX_RETRIES", int),
    "llm_attempts": ("ARX_LLM_ATTEMPTS", int),
    "llm_backoff_s": ("ARX_LLM_BACKOFF_S", float),
    "llm_repair_rounds": ("ARX_LLM_REPAIR_ROUNDS", int),
    "llm_max_tokens": ("ARX_LLM_MAX_TOKENS", int),
}


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Build Settings from the environment; a malformed value is a clear error, not a default."""
    env = os.environ if env is None else env
    values = {}
    for field, (var, convert) in _ENV.items():
        raw = env.get(var)
        if raw in (None, ""):
            continue
        try:
            values[field] = convert(raw)
        except ValueError as exc:
            raise ValueError(f"{var}={raw!r}: {exc}") from None
    # Absolute from the start: a role or a sandbox that changes its working directory must find the
    # same home, whether scripts/up.sh started the command (which exports an absolute ARX_HOME) or a person did.
    values["home"] = Path(values.get("home", DEFAULT_HOME)).absolute()
    return Settings(**values)
