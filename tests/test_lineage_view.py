"""The lineage view for prompts, on real lineage files folded from events: every part, the ids it
names, the no-lineage arm, the saturation signal, and its size bound on long campaigns."""

from __future__ import annotations

import re

import pytest

from agents.lineage_view import ViewLimits, build_view
from bus.connection import StoredMessage
from bus.events import CampaignStarted, Event, Evidence, ObjectRef, TrialFinished, TrialProposed, TrialScored, encode
from projections.lineage import Lineage

TRIAL_ID = re.compile(r"\b(?:baseline|t\d+)\b")


class Log:
    """A campaign's events folded one by one into a lineage file, as the projector would."""

    def __init__(self, path, *, noise: float = 0.01, c: str = "c1"):
        self.lineage = Lineage(path, durable=False)  # no fsync per event: the test folds thousands
        self.c = c
        self.seq = 0
        self.scores: dict[str, float] = {}
        self.best: tuple[str, float] | None = None
        bundle = ObjectRef(name="b", size=1, sha256="0" * 64)
        self.fold(CampaignStarted(event_id="started", campaign_id=c, task="tiny", metric="value", direction="min",
                                  max_trials=100_000, bundle=bundle, noise=noise))

    def fold(self, event: Event) -> None:
        self.seq += 1
        self.lineage.apply([StoredMessage(self.seq, event.subject, encode(event))])

    def propose(self, trial: str, parent: str | None, specialist: str = "other", hypothesis: str = "") -> None:
        self.fold(TrialProposed(event_id=f"{trial}-p", campaign_id=self.c, trial_id=trial, specialist=specialist,
                                surface="main", parent_id=parent, hypothesis=hypothesis or f"idea of {trial}", diff=""))

    def score(self, trial: str, label: str, score: float | None, evidence: Evidence = Evidence()) -> None:
        inc = self.best
        self.fold(TrialScored(event_id=f"{trial}-o", campaign_id=self.c, trial_id=trial, label=label, score=score,
                              incumbent_id=inc[0] if inc else None, incumbent_score=inc[1] if inc else None,
                              evidence=evidence))
        if label == "keep":
            self.best = (trial, score)

    def finish(self, trial: str, log_tail: str) -> None:
        self.fold(TrialFinished(event_id=f"{trial}-f", campaign_id=self.c, trial_id=trial, executor="e",
                                exit_code=1, log_tail=log_tail))

    def trial(self, trial: str, parent: str | None, label: str, score: float | None, specialist: str = "other") -> None:
        self.propose(trial, parent, specialist)
        self.score(trial, label, score)


@pytest.fixture
def log(tmp_path):
    log = Log(tmp_path / "lineage.db")
    yield log
    log.lineage.close()


def small_campaign(log: Log) -> None:
    log.trial("baseline", None, "keep", 10.0, specialist="baseline")
    log.trial("t1", "baseline", "keep", 9.0)
    log.trial("t2", "t1", "keep", 8.5)
    log.trial("t3", "t2", "discard", 8.7, specialist="me")
    log.propose("t4", "t2", "me")
    log.finish("t4", "epoch 1\nTraceback (most recent call last):\nZeroDivisionError: division by zero\n")
    log.score("t4", "crash", None, Evidence(stage="train", frame="train.py:12 in step", message="ZeroDivisionError"))
    log.propose("t5", "t2", "me", hypothesis="quantize\nthe   weights to int4")
    log.score("t5", "size_blocked", 8.0,
              Evidence(stage="evaluate", gate="size_mb", measured=17.2, limit=16.0, message="artifact too large"))
    log.trial("t7", "t1", "discard", 9.9)
    log.trial("t8", "t2", "crash", None)  # another specialist's failure
    log.propose("t6", "t2", "other")  # in flight


def test_the_view_shows_each_part_and_names_every_row_it_shows(log):
    small_campaign(log)
    view = build_view(log.lineage, "c1", "me")
    text = view.render()

    assert (view.incumbent.trial_id, view.incumbent.score, view.kept) == ("t2", 8.5, True)
    assert [r.trial_id for r in view.top] == ["t2", "t1", "baseline"]
    assert [(r.trial_id, r.delta) for r in view.chain] == [("baseline", None), ("t1", -1.0), ("t2", -0.5)]
    assert not view.chain_cut
    assert [r.trial_id for r in view.children] == ["t6", "t8", "t5", "t4", "t3"]
    assert view.children_total == 5
    assert [r.trial_id for r in view.recent][:3] == ["t8", "t7", "t5"]
    assert [r.trial_id for r in view.in_flight] == ["t6"]
    assert [f.trial.trial_id for f in view.failures] == ["t5", "t4"]
    assert view.saturation is None

    assert "**Incumbent (the best kept trial): t2**, value = 8.5" in text
    assert "- t1 [other, keep, value=9, Δ=-1] idea of t1" in text
    assert "- t5 [me, size_blocked, value=8, Δ=-0.5] quantize the weights to int4" in text
    assert "gate size_mb: measured 17.2 against the limit 16" in text
    assert "stage train; at train.py:12 in step" in text
    assert "    ZeroDivisionError: division by zero" in text
    assert "- t6 [other, in flight] idea of t6" in text
    # Every row shown is named in shown_ids, and nothing else is.
    assert set(TRIAL_ID.findall(text)) == set(view.shown_ids)
    assert len(view.shown_ids) == len(set(view.shown_ids))


def test_only_this_specialists_failures_are_shown(log):
    small_campaign(log)
    other = build_view(log.lineage, "c1", "other")
    assert [f.trial.trial_id for f in other.failures] == ["t8"]
    nobody = build_view(log.lineage, "c1", "nobody")
    assert nobody.failures == [] and "### Your recent failures (nobody)\n\n- none" in nobody.render()


def test_the_no_lineage_arm_shows_only_the_incumbents_id_and_score(log):
    small_campaign(log)
    view = build_view(log.lineage, "c1", "me", arm="no-lineage")
    text = view.render()
    assert view.shown_ids == ["t2"]
    assert TRIAL_ID.findall(text) == ["t2"]
    assert "Incumbent: t2 (value = 8.5)" in text
    assert "idea of" not in text and "Traceback" not in text


def test_the_baseline_stands_in_until_a_trial_is_kept(log):
    assert build_view(log.lineage, "c1", "me").render().endswith("No trial is in the lineage yet.\n")
    log.propose("baseline", None, "baseline")
    view = build_view(log.lineage, "c1", "me")
    assert (view.incumbent.trial_id, view.kept, view.shown_ids) == ("baseline", False, ["baseline"])
    assert "No trial is kept yet; the baseline: baseline**, value = -" in view.render()


def test_saturation_is_signalled_when_the_last_trials_all_sit_within_the_noise(log):
    limits = ViewLimits(saturation=3)
    log.trial("baseline", None, "keep", 10.0, specialist="baseline")  # noise 0.01 of 10: moves up to 0.1
    log.trial("t1", "baseline", "within_noise", 10.05, specialist="me")
    log.trial("t2", "baseline", "within_noise", 9.95, specialist="me")
    assert build_view(log.lineage, "c1", "me", limits=limits).saturation is None  # only two so far
    log.trial("t3", "baseline", "crash", None, specialist="me")  # unscored: neither counts nor breaks it
    log.trial("t4", "baseline", "within_noise", 10.08, specialist="me")
    view = build_view(log.lineage, "c1", "me", limits=limits)
    assert view.saturation is not None
    assert view.saturation.largest_move == pytest.approx(0.08)
    assert "Your last 3 scored trials all moved value by at most 0.08" in view.render()
    assert build_view(log.lineage, "c1", "other", limits=limits).saturation is None
    log.trial("t5", "baseline", "discard", 10.5, specialist="me")
    assert build_view(log.lineage, "c1", "me", limits=limits).saturation is None


def test_the_view_keeps_its_size_on_a_long_campaign(tmp_path):
    def campaign(trials: int) -> str:
        log = Log(tmp_path / f"{trials}.db")
        log.trial("baseline", None, "keep", 1000.0, specialist="baseline")
        parent = "baseline"
        for i in range(1, trials + 1):
            kept = i % 3 == 0
            specialist = "me" if i % 2 else "other"
            log.propose(f"t{i}", parent, specialist, hypothesis="a long idea " * 40)
            if i % 5 == 0:
                log.finish(f"t{i}", "a line of log\n" * 500)
                log.score(f"t{i}", "crash", None, Evidence(stage="train", message="boom " * 200))
            else:
                log.score(f"t{i}", "keep" if kept else "discard", 1000.0 - i if kept else 2000.0)
            if kept and i % 5:
                parent = f"t{i}"
        view = build_view(log.lineage, "c1", "me")
        log.lineage.close()
        assert view.chain_cut and len(view.chain) == view.limits.chain + 1
        assert "(cut: only the last 51 trials of a longer chain are shown)" in view.render()
        assert len(view.top) == 5 and len(view.recent) == 10 and len(view.failures) == 3
        return view.render()

    short, long = campaign(200), campaign(400)
    # Only the incumbent's children differ (two here, one there): every other part is full in both.
    assert abs(len(short.splitlines()) - len(long.splitlines())) <= 1
    assert abs(len(short) - len(long)) < 0.05 * len(short)
    assert len(long) < 40_000


def test_a_parent_cycle_cannot_make_the_chain_walk_endless(log):
    log.trial("t1", "t2", "keep", 1.0)
    log.trial("t2", "t1", "keep", 2.0)
    view = build_view(log.lineage, "c1", "me", limits=ViewLimits(chain=7))
    assert view.chain_cut and [r.trial_id for r in view.chain] == ["t2", "t1"] * 4


def test_bad_arguments_are_clear_errors(log):
    with pytest.raises(ValueError, match="arm 'generic' is not one of"):
        build_view(log.lineage, "c1", "me", arm="generic")
    with pytest.raises(LookupError, match="campaign nope"):
        build_view(log.lineage, "nope", "me")
