"""The event vocabulary of arx: immutable, past-tense facts, JSON on the wire.

Rules that keep old logs readable forever:
- fields are only ever added, always with a default;
- each type carries `schema`, bumped when a field's meaning changes, with an upcaster in UPCASTERS;
- an unknown `type` is skipped and counted by the reader, never fatal.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, ClassVar, Union

import msgspec

from bus import subjects
from bus.subjects import check_token

LABELS = (
    "keep",
    "discard",
    "within_noise",
    "crash",
    "preflight_crash",
    "invalid_edit",
    "train_budget_overrun",
    "eval_budget_overrun",
    "size_blocked",
    "disqualified",
    "harness_abort",
)
FAILURE_LABELS = frozenset(LABELS) - {"keep", "discard", "within_noise"}
# A proposal's texts travel in one event and end up in a git commit and in every lineage view: a
# bigger one is refused by the agent that made it, and by the executor from a client that did not.
MAX_HYPOTHESIS_BYTES = 64 * 1024
MAX_DIFF_BYTES = 4 * 1024 * 1024
PREFLIGHT_STAGE = "preflight"  # TrialFinished.stage of a trial its preflight stopped before the full run

# Every integer in an event fits the 64-bit signed integer SQLite stores: msgspec alone would take
# up to 2**64 - 1, and an event the lineage cannot store must fail to decode, not fail a whole batch.
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


def now() -> str:
    return stamp(dt.datetime.now(dt.timezone.utc))


def stamp(moment: dt.datetime) -> str:
    """A UTC moment as events record it (occurred_at): compared as text in the lineage, so one format."""
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class ObjectRef(msgspec.Struct, frozen=True, kw_only=True):
    """Large bytes live in the object store; events carry only where and what."""

    name: str
    size: Int64
    sha256: str


class Evidence(msgspec.Struct, frozen=True, kw_only=True):
    """What an agent needs to act on an outcome: which gate, how far off, where it broke."""

    stage: str = ""
    gate: str | None = None
    measured: float | None = None
    limit: float | None = None
    frame: str | None = None
    message: str = ""


class GateVerdict(msgspec.Struct, frozen=True, kw_only=True):
    gate: str
    passed: bool
    measured: float | None = None
    limit: float | None = None
    detail: str = ""


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    aggregate: ClassVar[str] = "campaign"
    verb: ClassVar[str] = ""
    # The field whose value ends the subject, for facts written more than once per aggregate and verb:
    # "attempt" for those an executor writes once per delivery of a trial, "call" for LLM calls.
    last_token: ClassVar[str | None] = None

    # Left empty, the id is the event's subject (see bus.subjects); recorded logs keep their own ids.
    event_id: str = ""
    campaign_id: str
    occurred_at: str = msgspec.field(default_factory=now)
    producer: str = ""
    causation_id: str | None = None
    schema: Int64 = 1

    @property
    def aggregate_id(self) -> str:
        return self.campaign_id

    @property
    def subject(self) -> str:
        return subjects.subject(self.campaign_id, self.aggregate, self.aggregate_id, self.verb, self._last())

    def check_subject(self) -> None:
        """Every id in the subject must be a valid token: a malformed id never reaches the log."""
        check_token("campaign", self.campaign_id)
        check_token(self.aggregate, self.aggregate_id)
        if isinstance(last := self._last(), str):
            check_token(self.last_token, last)

    def _last(self) -> int | str | None:
        return getattr(self, self.last_token) if self.last_token else None

    def __post_init__(self) -> None:
        if not self.event_id:
            msgspec.structs.force_setattr(self, "event_id", self.subject)


class StopRules(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """When a campaign stops itself before its trial budget is spent (evaluators/stop_rules.py); None: no such rule."""

    plateau: Int64 | None = None  # this many counted outcomes in a row without a keep
    storm_percent: float | None = None  # more than this percent of the last storm_window outcomes failed
    storm_window: Int64 | None = None  # ... on harness faults, or with one failure label
    deadline_s: float | None = None  # this long after the campaign started


# The device kinds a ledger counts, budgets limit and prices name: CPU core-seconds, GPU-seconds.
DEVICE_KINDS = ("cpu", "cuda")


class Budgets(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a campaign may spend beyond its trial count (projections/ledger.py adds it up); None: no limit."""

    usd: float | None = None  # LLM dollars plus device-hours at the campaign's prices
    device_hours: dict[str, float] = {}  # by device kind: "cpu" (core-hours), "cuda" (GPU-hours)


class Prices(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The prices a campaign's ledger uses, recorded when it starts so that every audit agrees."""

    llm: dict[str, tuple[float, float]] = {}  # model -> dollars per million tokens in, out (ARX_LLM_PRICES)
    device_hour: dict[str, float] = {}  # device kind -> dollars per device-hour (ARX_DEVICE_PRICES)


class CampaignStarted(Event):
    verb: ClassVar[str] = "started"

    task: str
    metric: str
    direction: str  # "min" or "max"
    max_trials: Int64
    bundle: ObjectRef
    arm: str = "lineage"
    noise: float = 0.0
    spec: dict = {}
    stop_rules: StopRules = StopRules()
    budgets: Budgets = Budgets()
    prices: Prices = Prices()


class CampaignStopped(Event):
    verb: ClassVar[str] = "stopped"

    reason: str
    trials: Int64 = 0


class _TrialEvent(Event):
    aggregate: ClassVar[str] = "trial"

    trial_id: str

    @property
    def aggregate_id(self) -> str:
        return self.trial_id


class SpecialistJoined(Event):
    aggregate: ClassVar[str] = "specialist"
    verb: ClassVar[str] = "joined"

    specialist: str
    surface: str
    policy: str

    @property
    def aggregate_id(self) -> str:
        return self.specialist


class TrialProposed(_TrialEvent):
    verb: ClassVar[str] = "proposed"

    specialist: str
    surface: str
    parent_id: str | None
    hypothesis: str
    diff: str
    expected_delta: float | None = None
    shown_ids: list[str] = []
    # Knob values this trial sets, for policies that search a declared space (empty for free-form edits).
    params: dict[str, float] = {}
    policy: str = ""
    model: str | None = None
    tokens_in: Int64 = 0
    tokens_out: Int64 = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    # Why the agent itself found its edit invalid (it does not apply, say): the trial is proposed all the
    # same, so the attempt stays in the lineage, and the executor records this as its invalid_edit outcome.
    rejection: str | None = None
    # The budget slot the agent claimed for this trial (SlotClaimed); None for the baseline.
    slot: Int64 | None = None


class SlotClaimed(Event):
    """An agent takes one of the campaign's trial slots before it proposes. A slot's subject holds one
    claim, so agents that share a campaign cannot together propose more trials than its budget."""

    aggregate: ClassVar[str] = "slot"
    verb: ClassVar[str] = "claimed"

    slot: Int64
    trial_id: str
    specialist: str

    @property
    def aggregate_id(self) -> str:
        return str(self.slot)


def oversize(hypothesis: str, diff: str) -> str | None:
    """Which size limit a proposal's texts exceed, in words; None when they fit."""
    for what, text, limit in (("hypothesis", hypothesis, MAX_HYPOTHESIS_BYTES), ("diff", diff, MAX_DIFF_BYTES)):
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > limit:
            return f"the {what} is {size} bytes, over its limit of {limit} bytes"
    return None


class TrialStarted(_TrialEvent):
    verb: ClassVar[str] = "started"
    last_token: ClassVar[str | None] = "attempt"

    executor: str
    attempt: Int64 = 1
    # The devices the executor runs the trial on, e.g. ["cuda:0", "cuda:1"]; empty: CPUs only.
    devices: list[str] = []


class _RunFinished(_TrialEvent):
    """What the executor saw from outside the recipe when it ran a trial's tree. Never a score."""

    verb: ClassVar[str] = "finished"

    executor: str
    attempt: Int64 = 1
    commit: str = ""
    exit_code: Int64 | None = None
    signal: Int64 | None = None
    timed_out: bool = False
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    limits: dict[str, float] = {}
    log_tail: str = ""
    log: ObjectRef | None = None
    artifact: ObjectRef | None = None
    # "" for the full run; PREFLIGHT_STAGE when a preflight check stopped the trial before it.
    stage: str = ""
    # Measured from outside by the preflight, e.g. the projected artifact size against a size cap.
    measured: dict[str, float] = {}
    # The executor limit whose watchdog ended the run, other than the wall clock (timed_out): "disk_mb".
    killed_by: str | None = None
    # The most the run dir (with the log) held at one sample, in MB.
    disk_mb: float = 0.0
    # The walls the run had beyond rlimits: "fence" (the audit hook), "net" and "pid" (namespaces).
    isolation: list[str] = []
    # Device-seconds this run and its preflight checks held, by kind: "cpu" (core-seconds), "cuda"
    # (GPU-seconds). The ledger counts these; older events have only cpu_s.
    device_s: dict[str, float] = {}


class TrialFinished(_RunFinished):
    """The trial's run, or the preflight check that stopped it (stage PREFLIGHT_STAGE)."""

    last_token: ClassVar[str | None] = "attempt"


class TrialConfirmationRequested(_TrialEvent):
    """The evaluator asks to run the candidate (trial_id) and the incumbent again, interleaved in the
    order of `runs`, because the candidate beat the incumbent by a margin within a few noise widths.
    One executor runs the whole sequence, so every run is timed on the same host; each run is a
    ReplicateFinished. The trial's one outcome follows once the evaluator has them all."""

    verb: ClassVar[str] = "confirm"

    incumbent_id: str
    runs: list[str]  # whose tree each run uses, in run order


class ReplicateFinished(_RunFinished, kw_only=True):
    """One confirmation run of trial_id's tree, measured like a trial's run. Not a trial: no outcome."""

    aggregate: ClassVar[str] = "replicate"

    confirm_of: str
    index: Int64

    @property
    def aggregate_id(self) -> str:
        return replicate_id(self.confirm_of, self.index)


class LLMSpent(Event):
    """Tokens a specialist's endpoint calls spent without leading to a proposal (replies that were no
    chat completion, say): never a trial, but counted in the campaign's ledger."""

    aggregate: ClassVar[str] = "specialist"
    verb: ClassVar[str] = "spent"
    last_token: ClassVar[str | None] = "call"

    specialist: str
    call: str = msgspec.field(default_factory=lambda: uuid.uuid4().hex[:16])
    model: str | None = None
    tokens_in: Int64 = 0
    tokens_out: Int64 = 0
    cost_usd: float = 0.0
    reason: str = ""

    @property
    def aggregate_id(self) -> str:
        return self.specialist


def replicate_id(confirm_of: str, index: int) -> str:
    return f"{confirm_of}-r{index}"


class _TrialOutcome(_TrialEvent):
    """Exactly one per trial: all share the subject `...trial.<id>.outcome`, first writer wins."""

    verb: ClassVar[str] = "outcome"

    label: str
    evidence: Evidence = Evidence()


class TrialScored(_TrialOutcome):
    score: float | None = None
    metrics: dict[str, float] = {}
    gates: list[GateVerdict] = []
    incumbent_id: str | None = None
    incumbent_score: float | None = None
    noise: float = 0.0
    # The evaluator's scoring time (the sandbox's wall clock), confirmation reruns included.
    eval_s: float = 0.0


class TrialRejected(_TrialOutcome):
    label: str = "invalid_edit"


class TrialAbandoned(_TrialOutcome):
    label: str = "harness_abort"


AnyEvent = Union[
    CampaignStarted,
    CampaignStopped,
    SpecialistJoined,
    TrialProposed,
    TrialStarted,
    TrialFinished,
    TrialScored,
    TrialRejected,
    TrialAbandoned,
    TrialConfirmationRequested,
    ReplicateFinished,
    LLMSpent,
    SlotClaimed,
]
EVENT_TYPES = {cls.__name__: cls for cls in AnyEvent.__args__}
OUTCOME_TYPES = (TrialScored, TrialRejected, TrialAbandoned)


class _Envelope(msgspec.Struct):
    type: str = ""
    schema: int = 1


# (type, schema) -> function upgrading the raw dict one schema step. Empty while every type is at v1.
UPCASTERS: dict[tuple[str, int], callable] = {}

_envelope = msgspec.json.Decoder(_Envelope)
_decoder = msgspec.json.Decoder(AnyEvent)
_raw = msgspec.json.Decoder(dict)
_encoder = msgspec.json.Encoder()


class UnknownEvent(Exception):
    """A well-formed message whose type this version does not know: skip it and count it."""


class NewerSchema(UnknownEvent):
    """A known type at a schema version newer than this code's: a field changed meaning, so reading
    it as the old version would silently alter it. Skipped and counted like an unknown type."""


def _schema_version(cls: type[Event]) -> int:
    return next(field.default for field in msgspec.structs.fields(cls) if field.name == "schema")


SCHEMA_VERSIONS = {name: _schema_version(cls) for name, cls in EVENT_TYPES.items()}
_CURRENT_SCHEMA = {cls: SCHEMA_VERSIONS[name] for name, cls in EVENT_TYPES.items()}


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


class Misfiled(ValueError):
    """A stored message whose subject is not its payload's own, or whose ids are not subject tokens.
    nats-server's permissions are per subject, so only an event on its own subject has a known writer."""


def decode_stored(subject: str | None, data: bytes) -> Event:
    """Decode a message as the stream stored it: like decode, and Misfiled unless it sits on its own
    subject. A subject of None is a line of an event file, which records none: the event's own."""
    event = decode(data)
    try:
        event.check_subject()
    except ValueError as exc:
        raise Misfiled(str(exc)) from None
    if subject is not None and subject != event.subject:
        raise Misfiled(f"{type(event).__name__} {event.event_id} on {subject}, not on {event.subject}")
    return event


def decode(data: bytes) -> Event:
    """Decode one wire message. Raises msgspec.DecodeError (corrupt) or UnknownEvent (new type or schema)."""
    try:
        event = _decoder.decode(data)
        if event.schema == _CURRENT_SCHEMA[type(event)]:
            return event  # the common case, decoded once; the envelope sorts out every other
    except msgspec.DecodeError:
        pass
    head = _envelope.decode(data)
    if head.type not in EVENT_TYPES:
        raise UnknownEvent(head.type)
    if head.schema > SCHEMA_VERSIONS[head.type]:
        raise NewerSchema(f"{head.type} schema {head.schema}")
    if (head.type, head.schema) in UPCASTERS:
        raw = _raw.decode(data)
        while (raw["type"], raw.get("schema", 1)) in UPCASTERS:
            raw = UPCASTERS[(raw["type"], raw.get("schema", 1))](raw)
        return msgspec.convert(raw, AnyEvent)
    return _decoder.decode(data)
