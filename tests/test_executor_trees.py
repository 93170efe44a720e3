"""Trial trees as real git commits: deterministic SHAs, applying diffs, exporting, and edit checks."""

from __future__ import annotations

import difflib
import os

import pytest

from bus.connection import Bus
from bus.events import CampaignStarted, TrialProposed
from evaluators.spec import pack_folder
from executors.trees import CampaignRepo, InvalidEdit, check_edit, materialize

TRAIN = "EPOCHS = 3\nLR = 0.1\n\n\ndef main():\n    print(EPOCHS * LR)\n"


def file_diff(path: str, old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"a/{path}", f"b/{path}"))


def proposal(trial_id: str, parent_id: str | None, diff: str = "", **fields) -> TrialProposed:
    values = dict(
        event_id=f"c1-{trial_id}-proposed",
        campaign_id="c1",
        trial_id=trial_id,
        specialist="tpe-optimizer",
        surface="optimizer",
        parent_id=parent_id,
        hypothesis=f"{trial_id} goes faster\nbecause of reasons",
        diff=diff,
        occurred_at="2026-11-02T10:00:00.123456Z",
    )
    return TrialProposed(**{**values, **fields})


EDIT_1 = file_diff("train.py", TRAIN, TRAIN.replace("EPOCHS = 3", "EPOCHS = 5"))
TRAIN_1 = TRAIN.replace("EPOCHS = 3", "EPOCHS = 5")
EDIT_2 = file_diff("train.py", TRAIN_1, TRAIN_1.replace("LR = 0.1", "LR = 0.2"))


@pytest.fixture
def bundle(tmp_path) -> bytes:
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "train.py").write_text(TRAIN)
    (recipe / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (recipe / "run.sh").chmod(0o755)
    return pack_folder(recipe)


def build_chain(repo: CampaignRepo, bundle: bytes) -> list[str]:
    base = repo.add_trial(proposal("baseline", None, specialist="baseline", surface="baseline"), bundle=bundle)
    t1 = repo.add_trial(proposal("t1", "baseline", EDIT_1), parent=base)
    t2 = repo.add_trial(proposal("t2", "t1", EDIT_2), parent=t1)
    return [base, t1, t2]


def test_the_same_trials_get_the_same_shas_in_two_repos(tmp_path, bundle):
    first = build_chain(CampaignRepo(tmp_path / "host-a" / "c1"), bundle)
    second = build_chain(CampaignRepo(tmp_path / "host-b" / "c1"), bundle)
    assert first == second
    assert len(set(first)) == 3
    later = CampaignRepo(tmp_path / "host-c" / "c1").add_trial(
        proposal("baseline", None, occurred_at="2026-11-02T10:00:01Z"), bundle=bundle
    )
    assert later != first[0]


def test_commit_carries_the_proposals_author_date_and_message(tmp_path, bundle):
    repo = CampaignRepo(tmp_path / "c1")
    sha = build_chain(repo, bundle)[1]
    commit = repo.repo.commit(sha)
    assert (commit.author.name, commit.author.email) == ("tpe-optimizer", "tpe-optimizer@arx")
    assert commit.committer.email == "tpe-optimizer@arx"
    assert commit.authored_date == commit.committed_date == 1793613600  # 2026-11-02T10:00:00Z
    assert commit.message == "t1: t1 goes faster\n\nt1 goes faster\nbecause of reasons\n"
    assert repo.commit_of("t1") == sha
    assert repo.commit_of("never-proposed") is None


def test_adding_a_trial_twice_is_a_no_op(tmp_path, bundle):
    repo = CampaignRepo(tmp_path / "c1")
    base, t1, _ = build_chain(repo, bundle)
    # Even a different edit under the same id does not move the ref: trials never change.
    assert repo.add_trial(proposal("t1", "baseline", ""), parent=base) == t1


def test_export_writes_the_tree_without_git(tmp_path, bundle):
    repo = CampaignRepo(tmp_path / "c1")
    t2 = build_chain(repo, bundle)[2]
    run = repo.export(t2, tmp_path / "run")
    assert sorted(os.listdir(run)) == ["run.sh", "train.py"]
    assert (run / "train.py").read_text() == TRAIN_1.replace("LR = 0.1", "LR = 0.2")
    assert os.access(run / "run.sh", os.X_OK)
    with pytest.raises(FileExistsError):
        repo.export(t2, run)


def test_a_diff_that_does_not_apply_is_an_invalid_edit(tmp_path, bundle):
    repo = CampaignRepo(tmp_path / "c1")
    base = build_chain(repo, bundle)[0]
    with pytest.raises(InvalidEdit) as caught:
        repo.add_trial(proposal("t3", "baseline", EDIT_2), parent=base)  # EDIT_2 expects t1's tree
    assert caught.value.path == "train.py"
    assert "does not apply" in caught.value.reason
    assert repo.commit_of("t3") is None
    with pytest.raises(InvalidEdit):
        repo.add_trial(proposal("t4", "baseline", "--- a/train.py\n+++ b/train.py\n@@ garbage\n"), parent=base)


@pytest.mark.anyio
async def test_materialize_builds_missing_ancestors_from_the_log(arx_env, tmp_path, bundle):
    async with await Bus.connect(role="admin") as bus:
        ref = await bus.put_object("bundles/test.tar.gz", bundle)
        started = CampaignStarted(
            event_id="c1-started", campaign_id="c1", task="t", metric="m", direction="min", max_trials=3, bundle=ref
        )
        chain = [
            proposal("baseline", None, specialist="baseline", surface="baseline"),
            proposal("t1", "baseline", EDIT_1),
            proposal("t2", "t1", EDIT_2),
        ]
        for event in [started, *chain]:
            await bus.publish(event)

        repo = CampaignRepo(tmp_path / "host-a" / "c1")
        sha = await materialize(bus, repo, chain[2], started)
        assert [repo.commit_of(t) is not None for t in ("baseline", "t1", "t2")] == [True, True, True]
        assert sha == build_chain(CampaignRepo(tmp_path / "host-b" / "c1"), bundle)[2]
        assert await materialize(bus, repo, chain[2], started) == sha

        orphan = proposal("t5", "never-proposed", EDIT_1)
        with pytest.raises(InvalidEdit, match="never-proposed"):
            await materialize(bus, repo, orphan, started)


# -- check_edit --------------------------------------------------------------------------------

SURFACE = ["train.py", "src/"]
FROZEN = ["data/", "src/frozen.py"]


def new_file(path: str, text: str = "x = 1\n") -> str:
    return f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n@@ -0,0 +1 @@\n+{text}"


@pytest.mark.parametrize(
    "diff, path, reason",
    [
        ("--- /etc/passwd\n+++ /etc/passwd\n@@ -1 +1 @@\n-a\n+b\n", "/etc/passwd", "absolute"),
        (new_file("src/../../escape.py"), "src/../../escape.py", "'..'"),
        (new_file("model.py"), "model.py", "outside the surface"),
        (new_file("data/train.npz"), "data/train.npz", "frozen"),
        (new_file("src/frozen.py"), "src/frozen.py", "frozen"),
        (new_file("src/./x.py"), "src/./x.py", "plain relative"),
        (new_file("src/.git/config"), "src/.git/config", ".git"),
        ("--- train.py\n+++ train.py\n@@ -1 +1 @@\n-a\n+b\n", "train.py", "a/ or b/"),
        (
            "diff --git a/train.py b/train.py\nindex 1111111..2222222 100644\nGIT binary patch\nliteral 3\nKcmZ?b\n",
            "train.py",
            "binary",
        ),
        ("diff --git a/src/x b/src/x\nBinary files a/src/x and b/src/x differ\n", "src/x", "binary"),
        (new_file("src/link", "/etc\n").replace("100644", "120000"), "src/link", "symlink"),
        ("diff --git a/train.py b/model.py\nsimilarity index 100%\nrename from train.py\nrename to model.py\n",
         "model.py", "outside the surface"),
    ],
)
def test_check_edit_rejects(diff, path, reason):
    problems = check_edit(diff, SURFACE, FROZEN)
    assert any(p.path == path and reason in p.reason for p in problems), problems


@pytest.mark.parametrize(
    "diff, surface",
    [
        ("", SURFACE),
        ("", []),
        (EDIT_1, SURFACE),
        (new_file("src/deep/new.py"), SURFACE),
        (new_file("anything.py"), None),  # surface "*"
        # A removed line "-- x" renders as "--- x" inside a hunk: it is content, not a file header.
        ("--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,1 @@\n--- /etc/passwd\n keep\n", SURFACE),
    ],
)
def test_check_edit_accepts(diff, surface):
    assert check_edit(diff, surface, FROZEN) == []


def test_any_surface_still_respects_frozen_paths():
    assert [p.path for p in check_edit(new_file("data/x.npz"), None, FROZEN)] == ["data/x.npz"]


def test_text_without_any_file_is_rejected():
    problems = check_edit("please make it faster\n", SURFACE, FROZEN)
    assert [p.reason for p in problems] == ["the diff names no files"]


def test_a_hypothesis_of_megabytes_is_committed_whole(tmp_path, bundle):
    # Given to git as `-m`, this message failed with "Argument list too long".
    hypothesis = "a long story\n" + "x" * (7 << 20)
    repo = CampaignRepo(tmp_path / "c1")
    sha = repo.add_trial(proposal("baseline", None, hypothesis=hypothesis), bundle=bundle)
    assert repo.repo.commit(sha).message == f"baseline: a long story\n\n{hypothesis}\n"
