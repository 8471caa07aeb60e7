"""bench/cifake_recipe.py: the results store (docs/results_cifake.json) decides what runs and what the page says;
an empty store never overwrites the page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import import_bench, make_dataset

recipe = import_bench("cifake_recipe")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[list[str], Path, Path]:
    make_dataset(tmp_path / "data" / "cifake", generators=("sd14",), n=5)
    page, store = tmp_path / "results_cifake.md", tmp_path / "store.json"
    page.write_text("measured before\n")
    argv = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--results", str(page)]
    return [*argv, "--store", str(store), "--jobs", "1"], page, store


def _plan(tmp_path: Path, store: Path) -> object:
    return recipe.Plan(tmp_path / "out", tmp_path / "data", 1, recipe.Store(store))


def _holdout(plan: object, accs: dict[str, float]) -> None:
    for cand, acc in accs.items():
        plan.store.put(f"train {cand} s0", {"rc": 0, "seconds": 1.0, "load_start": "", "load_end": ""})
        for tta, bonus in (("none", 0.0), ("flip", 0.001)):
            m = {"accuracy": acc + bonus, "roc_auc": 0.99, "ap": 0.99, "support": 10}
            plan.store.put(f"evaluate {cand} s0 last on holdout tta {tta}", {"rc": 0, "metrics": m})


def _ensembles(plan: object, acc: float) -> None:
    for ens, (_, seeds, _, _) in recipe.ENSEMBLES.items():
        for tta in recipe.TTAS:
            m = {"accuracy": acc, "roc_auc": 0.99, "ap": 0.99, "support": 10}
            plan.store.put(plan.evaluate_ensemble(ens, seeds, "holdout", tta).name, {"rc": 0, "metrics": m})


def test_empty_store_leaves_the_page_and_a_stored_result_writes_it(setup: tuple, tmp_path: Path) -> None:
    argv, page, store = setup
    assert recipe.main([*argv, "--render-only"]) == 0
    assert page.read_text() == "measured before\n"

    _holdout(_plan(tmp_path, store), {"base": 0.9})
    assert recipe.main([*argv, "--render-only"]) == 0
    text = page.read_text()
    assert text.startswith("# CIFAKE with a margin") and "| base | 1 | the issue-3 recipe" in text
    assert "| 0.9010 | 0.9900 |" in text  # base with flip TTA, from the store
    assert "Not made yet" in text  # the other candidates are unmeasured
    # the hand-written sections are kept verbatim, in order, at the end
    assert text.endswith(recipe.AFTER_THE_CHOICE + "\n" + recipe.NO_ROUND4)


def test_the_rule_reads_every_round_from_the_store(tmp_path: Path) -> None:
    plan = _plan(tmp_path, tmp_path / "store.json")
    accs = {c: 0.95 for c in recipe.CANDIDATES}
    accs["levnn"] = 0.97  # a round-2 candidate wins on holdout
    _holdout(plan, {c: a for c, a in accs.items() if c != "lev16"})
    _ensembles(plan, 0.95)
    assert recipe.choose(plan) is None  # lev16 not measured yet
    _holdout(plan, {"lev16": 0.96})
    assert recipe.choose(plan) == ("levnn", "flip")
    steps = recipe.final_steps(plan, "levnn", "flip")
    assert [s.name for s in steps[:2]] == ["train levnn all s0", "evaluate levnn all s0 last on val tta flip"]
    assert "c16_all.yaml" in steps[0].command() and "--resize-interpolation nearest" in steps[0].command()


def test_stored_steps_are_not_run_again_and_new_metrics_are_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = _plan(tmp_path, tmp_path / "store.json")
    ran: list[str] = []

    def fake_execute(step, store, log_dir, threads, resume) -> None:
        ran.append(step.name)
        if step.resume_if is None:  # an evaluation: write what `synapse7 evaluate` writes
            step.done.parent.mkdir(parents=True, exist_ok=True)
            step.done.write_text(
                json.dumps({"accuracy": 0.5, "roc_auc": 0.6, "ap": 0.7, "support": 4, "x": 1})
            )
        else:
            step.resume_if.parent.mkdir(parents=True, exist_ok=True)
            step.resume_if.write_bytes(b"")
        store.put(step.name, {"rc": 0, "seconds": 1.0})

    monkeypatch.setattr(recipe, "_execute", fake_execute)
    monkeypatch.setattr(recipe, "write_raw_checkpoint", lambda run: False)
    steps = recipe.final_steps(plan, "lev", "flip")
    plan.store.put("train lev all s0", {"rc": 0})
    plan.store.put("evaluate lev all s0 last on val tta flip", {"rc": 0, "metrics": {"accuracy": 1.0}})
    plan.store.put("train lev all s1", {"rc": 0})  # stored, its evaluation is not, and no checkpoint is here
    recipe.run_all(steps, plan)
    assert ran == ["train lev all s2", "evaluate lev all s2 last on val tta flip"]
    out = capsys.readouterr().out
    assert "[skip] train lev all s0 and its evaluations: stored" in out
    assert "[FAIL] train lev all s1: stored, but" in out
    stored = json.loads((tmp_path / "store.json").read_text())
    assert stored["evaluate lev all s2 last on val tta flip"]["metrics"] == {
        "accuracy": 0.5,
        "roc_auc": 0.6,
        "ap": 0.7,
        "support": 4,
    }
    assert (
        "evaluate lev all s1 last on val tta flip" not in stored
    )  # nothing to evaluate: reported, not faked
    assert plan.metrics("lev", 0, "val", "flip", where="all") == {"accuracy": 1.0}

    # A stored training whose checkpoint is here: only its unstored evaluations run.
    ran.clear()
    base = recipe.candidate_steps(plan, "base", 0)
    plan.store.put("train base s0", {"rc": 0})
    base[0].resume_if.parent.mkdir(parents=True)
    base[0].resume_if.write_bytes(b"")
    plan.store.put(base[1].name, {"rc": 0, "metrics": {"accuracy": 0.9}})
    recipe.run_all(base, plan)
    assert ran == [base[2].name] == ["evaluate base s0 last on holdout tta flip"]


def test_all_of_train_is_fit_plus_holdout(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data" / "cifake", generators=("sd14",), n=10)
    counts = recipe.make_view(
        "cifake", tmp_path / "data" / "cifake", tmp_path / "view", fraction=0.2, seed=0, held="holdout"
    )
    recipe.link_all(tmp_path / "view" / "cifake")
    train = sorted(p.name for p in (tmp_path / "view" / "cifake" / "sd14" / "train").glob("*/*"))
    assert len(train) == counts["fit"] + counts["holdout"] == 20
    assert counts["holdout"] > 0


def test_an_ensemble_candidate_is_chosen_on_holdout_and_run_as_one_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _plan(tmp_path, tmp_path / "store.json")
    _holdout(plan, {c: 0.95 for c in recipe.CANDIDATES})
    assert recipe.choose(plan) is None  # the ensemble candidate is not measured yet
    for tta in recipe.TTAS:
        step = plan.evaluate_ensemble("lev16x2", (0, 1), "holdout", tta)
        m = {"accuracy": 0.97 if tta == "flip" else 0.96, "roc_auc": 0.99, "ap": 0.99, "support": 10}
        plan.store.put(step.name, {"rc": 0, "metrics": m})
    assert recipe.choose(plan) == ("lev16x2", "flip")

    steps = recipe.final_steps(plan, "lev16x2", "flip")
    evals = [s for s in steps if s.resume_if is None]
    assert [s.name for s in evals] == [
        f"evaluate lev16x2 all s{a}+{b} on val tta flip" for a, b in recipe.ENSEMBLE_SEEDS
    ]
    cmd = evals[1].command()
    assert (
        "c16_lev16_all_s2/last.ckpt" in cmd and "c16_lev16_all_s3/last.ckpt" in cmd and "--split val" in cmd
    )
    assert "--epochs 16" in steps[0].command() and "c16_all.yaml" in steps[0].command()

    ran: list[str] = []

    def fake_execute(step, store, log_dir, threads, resume) -> None:
        ran.append(step.name)
        if step.resume_if is None:
            step.done.parent.mkdir(parents=True, exist_ok=True)
            step.done.write_text(json.dumps({"accuracy": 0.98, "roc_auc": 0.998, "ap": 0.99, "support": 4}))
        else:
            step.resume_if.parent.mkdir(parents=True, exist_ok=True)
            step.resume_if.write_bytes(b"")
            step.done.write_text("{}")
        store.put(step.name, {"rc": 0, "seconds": 1.0})

    monkeypatch.setattr(recipe, "_execute", fake_execute)
    monkeypatch.setattr(recipe, "write_raw_checkpoint", lambda run: False)
    recipe.run_all(steps, plan)
    # each ensemble is evaluated once, after both of its trainings, never before
    assert ran == [
        "train lev16 all s0",
        "train lev16 all s1",
        evals[0].name,
        "train lev16 all s2",
        "train lev16 all s3",
        evals[1].name,
        "train lev16 all s4",
        "train lev16 all s5",
        evals[2].name,
    ]
    page = recipe.render(plan, steps, ("lev16x2", "flip"))
    assert "| 2 + 3 | 0.9800 | 0.9980 | 0.9900 |" in page
    assert "Targets (every ensemble): accuracy >= 0.98, ROC-AUC >= 0.997: **met**" in page
    assert "| lev16x2 | 3 | two seeds of lev16" in page
