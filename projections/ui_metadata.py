"""What `arx ui` says about the lineage, as Datasette metadata: titles and descriptions of its tables
and columns, the facets that split trials usefully, and the canned queries a researcher asks first.

Each canned query takes `campaign` (empty: the campaign started last), so its page opens on the
running campaign. The incumbent is the best kept trial, ties to the earlier outcome (views.kept).
"""

from __future__ import annotations

from bus.events import FAILURE_LABELS

DATABASE = "lineage"
REPORT_PATH = "/-/report"

# A query's :campaign: the one named, or the one started last.
CAMPAIGN = "coalesce(nullif(:campaign, ''), (SELECT campaign_id FROM campaigns ORDER BY started_seq DESC LIMIT 1))"
# The campaign's row (its direction orders scores) as the CTE `c`, and kept trials best first.
WITH_CAMPAIGN = f"c AS (SELECT campaign_id, direction, metric FROM campaigns WHERE campaign_id = {CAMPAIGN})"
BEST_FIRST = "CASE c.direction WHEN 'min' THEN k.score ELSE -k.score END, k.outcome_seq"
INCUMBENT = (
    "(SELECT k.trial_id FROM trials k JOIN c USING (campaign_id)"
    f" WHERE k.label = 'keep' AND k.score IS NOT NULL ORDER BY {BEST_FIRST} LIMIT 1)"
)

LEADERBOARD = f"""WITH {WITH_CAMPAIGN}
SELECT row_number() OVER (ORDER BY {BEST_FIRST}) AS rank, k.trial_id, k.specialist, k.surface, k.score,
    round(k.delta, 9) AS "delta vs incumbent", k.parent_id, k.outcome_at, k.hypothesis, c.metric, k.campaign_id
FROM trials k JOIN c USING (campaign_id)
WHERE k.label = 'keep' AND k.score IS NOT NULL
ORDER BY rank"""

# From the incumbent up the parent links to the baseline; no chain is longer than the campaign has
# trials, which also ends the walk round a parent loop.
KEEP_CHAIN = f"""WITH RECURSIVE {WITH_CAMPAIGN},
chain(trial_id, depth) AS (
    SELECT {INCUMBENT}, 0
    UNION ALL
    SELECT t.parent_id, chain.depth + 1 FROM chain JOIN trials t
        ON t.campaign_id = (SELECT campaign_id FROM c) AND t.trial_id = chain.trial_id
    WHERE t.parent_id IS NOT NULL
        AND chain.depth < (SELECT count(*) FROM trials WHERE campaign_id = (SELECT campaign_id FROM c))
)
SELECT t.trial_id, t.specialist, t.label, t.score, round(t.score - p.score, 9) AS "delta vs parent", t.hypothesis,
    t.campaign_id
FROM chain JOIN trials t ON t.campaign_id = (SELECT campaign_id FROM c) AND t.trial_id = chain.trial_id
LEFT JOIN trials p ON p.campaign_id = t.campaign_id AND p.trial_id = t.parent_id
ORDER BY chain.depth DESC"""

FAILURES = f"""WITH {WITH_CAMPAIGN}
SELECT t.label, t.specialist, count(*) OVER (PARTITION BY t.label, t.specialist) AS "failures (label, specialist)",
    t.trial_id, t.evidence_stage AS stage, t.evidence_gate AS gate, t.evidence_measured AS measured,
    t.evidence_limit AS "limit", t.evidence_frame AS frame, t.evidence_message AS message, t.hypothesis, t.campaign_id
FROM trials t JOIN c USING (campaign_id)
WHERE t.label IN ({", ".join(f"'{label}'" for label in sorted(FAILURE_LABELS))})
ORDER BY 3 DESC, t.label, t.specialist, t.outcome_seq"""

# A trial's page: one row per field, so that it reads down the page (a field without a value is left
# out); the gates come after the evidence. Empty :trial is the incumbent.
TRIAL_FIELDS = [
    ("trial", "trial_id"),
    ("campaign", "campaign_id"),
    ("specialist", "printf('%s [%s], policy %s', specialist, surface, policy)"),
    ("parent", "parent_id"),
    ("hypothesis", "hypothesis"),
    ("label", "label"),
    ("score", "CASE WHEN score IS NOT NULL THEN printf('%s %s', score, (SELECT metric FROM c)) END"),
    ("delta vs incumbent",
     "CASE WHEN delta IS NOT NULL THEN printf('%s (against %s)', round(delta, 9), incumbent_id) END"),
    ("delta vs parent", "round(score - (SELECT p.score FROM trials p"
     " WHERE p.campaign_id = t.campaign_id AND p.trial_id = t.parent_id), 9)"),
    ("evidence stage", "nullif(evidence_stage, '')"),
    ("evidence gate", "CASE WHEN evidence_gate IS NOT NULL"
     " THEN printf('%s: measured %s, limit %s', evidence_gate, evidence_measured, evidence_limit) END"),
    ("evidence frame", "evidence_frame"),
    ("evidence message", "evidence_message"),
]
RUN_FIELDS = [
    ("metrics", "metrics"),
    ("executor", "CASE WHEN executor IS NOT NULL THEN printf('%s, attempt %s', executor, attempts) END"),
    ("exit code", "exit_code"),
    ("wall s", "wall_s"),
    ("peak MB", "peak_rss_mb"),
    ("commit", "commit_sha"),
    ("LLM", "CASE WHEN model IS NOT NULL"
     " THEN printf('%s: %s tokens in, %s out, $%s, %s s', model, tokens_in, tokens_out, cost_usd, latency_s) END"),
    ("diff vs parent", "diff"),
    ("log tail", "log_tail"),
]
GATES_AT = len(TRIAL_FIELDS)
GATE_ROWS = f"""SELECT {GATES_AT}, 'gate ' || g.gate, printf('%s: measured %s, limit %s %s',
        CASE g.passed WHEN 1 THEN 'passed' ELSE 'FAILED' END, g.measured, g."limit", g.detail)
        FROM gates g JOIN t USING (campaign_id, trial_id)"""


def _field_rows(fields: list[tuple[str, str]], first: int) -> list[str]:
    return [f"SELECT {n}, '{field}', {expr} FROM t" for n, (field, expr) in enumerate(fields, first)]


TRIAL_ROWS = "\n    UNION ALL ".join(
    [*_field_rows(TRIAL_FIELDS, 0), GATE_ROWS, *_field_rows(RUN_FIELDS, GATES_AT + 1)]
)
TRIAL = f"""WITH {WITH_CAMPAIGN},
t AS (SELECT trials.* FROM trials JOIN c USING (campaign_id)
    WHERE trial_id = coalesce(nullif(:trial, ''), {INCUMBENT})),
fields(n, field, value) AS (
    {TRIAL_ROWS}
)
SELECT field, value FROM fields WHERE value IS NOT NULL AND value != '' ORDER BY n, field"""

# The cost ledger, as projections/ledger.py adds it up: each specialist's trials (CPU core-seconds of
# their runs and scoring, GPU-seconds, LLM tokens and dollars), the LLM calls that led to no proposal,
# and device dollars at the prices the campaign recorded when it started.
COSTS = f"""WITH {WITH_CAMPAIGN},
price(cpu, cuda) AS (
    SELECT coalesce(json_extract(prices, '$.device_hour.cpu'), 0),
        coalesce(json_extract(prices, '$.device_hour.cuda'), 0)
    FROM campaigns JOIN c USING (campaign_id)
),
spent(specialist, trials, cpu_s, cuda_s, tokens, llm_usd) AS (
    SELECT specialist, count(*), total(device_cpu_s + eval_s), total(device_cuda_s), total(tokens_in + tokens_out),
        total(cost_usd)
    FROM trials JOIN c USING (campaign_id) GROUP BY specialist
    UNION ALL
    SELECT '(LLM calls without a proposal)', 0, 0, 0, unproposed_tokens, unproposed_usd
    FROM campaigns JOIN c USING (campaign_id) WHERE unproposed_tokens > 0 OR unproposed_usd > 0
),
ledger AS (
    SELECT 0 AS total_row, * FROM spent
    UNION ALL SELECT 1, 'all', sum(trials), total(cpu_s), total(cuda_s), total(tokens), total(llm_usd) FROM spent
)
SELECT specialist, trials, round(cpu_s, 3) AS "cpu core-s", round(cuda_s, 3) AS "gpu s",
    CAST(tokens AS INTEGER) AS "llm tokens", round(llm_usd, 6) AS "llm usd",
    round((cpu_s * price.cpu + cuda_s * price.cuda) / 3600, 6) AS "compute usd",
    round(llm_usd + (cpu_s * price.cpu + cuda_s * price.cuda) / 3600, 6) AS "total usd"
FROM ledger, price
ORDER BY total_row, "total usd" DESC, specialist"""

CAMPAIGN_PARAM = "campaign (empty: the one started last)"

QUERIES = {
    "leaderboard": {
        "title": "Leaderboard",
        "description": "The campaign's kept trials, best first: the first row is the incumbent that every"
        " new trial must beat by more than the noise.",
        "sql": LEADERBOARD,
    },
    "keep_chain": {
        "title": "Keep chain",
        "description": "The parent links from the baseline to the incumbent, each step with its score change"
        " over its parent (signed: negative when the score went down).",
        "sql": KEEP_CHAIN,
    },
    "failures": {
        "title": "Failures by label and specialist",
        "description": "Every trial that ended in a failure label, grouped by label and specialist (the most"
        " frequent first), with the evidence the evaluator recorded: the failing gate's measured value and"
        " limit, the deepest traceback frame, the message.",
        "sql": FAILURES,
    },
    "trial": {
        "title": "Trial",
        "description": "One trial (empty: the incumbent): its hypothesis, outcome, gates, diff against its"
        " parent and the tail of its log.",
        "sql": TRIAL,
    },
    "costs": {
        "title": "Cost ledger",
        "description": "What the campaign has cost, per specialist: CPU core-seconds (runs, reruns and"
        " scoring), GPU-seconds, LLM tokens and dollars, and device dollars at the prices the campaign"
        " recorded (ARX_DEVICE_PRICES); the last row is the whole campaign.",
        "sql": COSTS,
    },
}

TABLES = {
    "campaigns": {
        "title": "Campaigns",
        "description": "One row per campaign, as its CampaignStarted (and CampaignStopped) recorded it.",
        "sort_desc": "started_seq",
        "facets": ["task", "arm"],
        "columns": {
            "campaign_id": "The campaign's id",
            "task": "The task (evaluators/tasks/<name>) the campaign runs",
            "metric": "The score's metric",
            "direction": "min: lower is better; max: higher is better",
            "max_trials": "The trial budget, the baseline included",
            "arm": "The control arm the campaign runs (which agents, with or without the lineage)",
            "noise": "The noise floor, a fraction of the score: a keep must beat the incumbent by more",
            "started_at": "When the campaign started (UTC)",
            "started_seq": "The stream sequence of its CampaignStarted",
            "bundle_sha256": "The starting recipe bundle in the object store",
            "spec": "The task's spec as the campaign started it (JSON)",
            "stopped_at": "When it stopped; empty while it runs",
            "stop_reason": "Why it stopped (budget, a stop rule, by hand)",
            "stop_rules": "The stop rules it started with: plateau, failure storm, deadline (JSON)",
            "budgets": "What it may spend: dollars, device-hours by kind (JSON)",
            "prices": "The prices its cost ledger uses: LLM dollars per million tokens, dollars per device-hour (JSON)",
            "unproposed_tokens": "LLM tokens of calls that led to no proposal",
            "unproposed_usd": "LLM dollars of calls that led to no proposal",
        },
    },
    "specialists": {
        "title": "Specialists",
        "description": "The agents that joined each campaign, each bound to one surface of the recipe.",
        "facets": ["surface", "policy"],
        "columns": {
            "campaign_id": "The campaign",
            "specialist": "The specialist's name",
            "surface": "The surface (files) its edits may touch",
            "policy": "How it proposes (tpe, catalog, llm, ...)",
            "joined_at": "When it joined (UTC)",
        },
    },
    "trials": {
        "title": "Trials",
        "description": "Every proposed trial with its run and its outcome, newest first. Facet by label,"
        " specialist or surface; a trial id opens its page.",
        "sort_desc": "proposed_seq",
        "facets": ["label", "specialist", "surface"],
        "columns": {
            "campaign_id": "The campaign",
            "trial_id": "The trial's id",
            "proposed_seq": "The stream sequence of its proposal (the order trials were proposed)",
            "specialist": "The specialist that proposed it",
            "surface": "The surface its edit is on",
            "policy": "The specialist's policy",
            "parent_id": "The trial it builds on; empty for the baseline",
            "hypothesis": "What the specialist expects the edit to do, and why",
            "expected_delta": "The score change the specialist expected",
            "diff": "The edit, as a unified diff against the parent's tree",
            "shown_ids": "The lineage rows the agent was shown when it proposed (JSON)",
            "params": "The knob values the proposal sets (JSON)",
            "model": "The LLM that wrote the proposal, if any",
            "tokens_in": "The LLM's prompt tokens",
            "tokens_out": "The LLM's completion tokens",
            "latency_s": "The LLM calls' wall time, seconds",
            "cost_usd": "The LLM calls' cost, dollars",
            "proposed_at": "When it was proposed (UTC)",
            "started_at": "When its latest attempt started (UTC)",
            "executor": "The executor that ran its latest attempt",
            "attempts": "How many times an executor started it",
            "finished_at": "When its run finished (UTC)",
            "commit_sha": "Its commit in the campaign's git repository",
            "exit_code": "The recipe's exit code",
            "signal": "The signal that ended the recipe, if any",
            "timed_out": "1 when the run hit its wall timeout",
            "wall_s": "The run's wall time, seconds, measured by the executor",
            "peak_rss_mb": "The run's peak memory, MB",
            "log_tail": "The end of the run's log",
            "outcome": "TrialScored, TrialRejected or TrialAbandoned",
            "label": "keep, discard, within_noise or a failure label",
            "score": "The evaluator's score",
            "metrics": "Every metric the evaluator measured (JSON)",
            "incumbent_id": "The incumbent it was scored against",
            "incumbent_score": "That incumbent's score",
            "delta": "Delta vs incumbent: the score minus the incumbent's (signed)",
            "noise": "The noise floor it was judged with",
            "outcome_seq": "The stream sequence of its outcome (the order outcomes were logged)",
            "outcome_at": "When its outcome was logged (UTC)",
            "evidence_stage": "Where the failure happened (preflight, run, score)",
            "evidence_gate": "The failing gate",
            "evidence_measured": "The failing gate's measured value",
            "evidence_limit": "The failing gate's limit",
            "evidence_frame": "The deepest traceback frame",
            "evidence_message": "The failure's message",
            "device_cpu_s": "CPU core-seconds of all its runs (preflight, rivals, confirmation reruns)",
            "device_cuda_s": "GPU-seconds of all its runs",
            "eval_s": "The evaluators' scoring time, seconds",
        },
    },
    "gates": {
        "title": "Gates",
        "description": "The evaluator's verdict on each legality gate of each scored trial.",
        "facets": ["gate", "passed"],
        "columns": {
            "campaign_id": "The campaign",
            "trial_id": "The trial",
            "gate": "The gated metric",
            "passed": "1 when the trial passed the gate",
            "measured": "The measured value",
            "limit": "The gate's limit",
            "detail": "The evaluator's note",
        },
    },
    "projection_state": {
        "title": "Projection state",
        "description": "The projector's counters: seq is the last stream sequence folded into this file.",
    },
    "skipped_events": {
        "title": "Skipped events",
        "description": "Messages the fold would not use (untrusted, unreadable or from a newer schema), with"
        " the reason: never folded, kept for the audit.",
        "facets": ["reason"],
    },
}


def metadata() -> dict:
    """The Datasette metadata of `arx ui`; a canned query's SQL is one click away, not in the way."""
    report = f'<a href="{REPORT_PATH}">the campaign report</a> (plots and the audit, current on each load)'
    return {
        "title": "arx lineage",
        "description_html": f"The lineage of every campaign, read-only and live; see also {report}.",
        "databases": {
            DATABASE: {
                "description_html": "Trials, outcomes and gates as the projector folds them from the log."
                f" Start with the canned queries below, or {report}.",
                "tables": TABLES,
                "queries": {name: {**query, "hide_sql": True} for name, query in QUERIES.items()},
            }
        },
    }
