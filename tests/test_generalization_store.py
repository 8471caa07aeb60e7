"""bench/generalization.py: the committed store keeps every row measured before when only some rows are re-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import import_bench


@pytest.fixture(scope="module")
def gen():  # noqa: ANN201 - the bench module
    return import_bench("generalization")


def _metrics(path: Path, auc: float) -> None:
    path.mkdir(parents=True)
    m = {"roc_auc": auc, "accuracy": 0.5, "real_acc": 0.25, "fake_acc": 0.75, "n_images": 10, "other": 1}
    (path / "metrics.json").write_text(json.dumps(m))


def test_partial_rerun_replaces_its_rows_and_keeps_the_others(gen, tmp_path: Path) -> None:  # noqa: ANN001
    rows = gen.ROWS[:2]
    old = {"machine": "old box", "date": "2026-01-01", "steps": {}}
    store = {
        "rows": {
            rows[0].name: {**old, "cells": {"wild": {"roc_auc": 0.61, "accuracy": 0.6}}},
            rows[1].name: {**old, "cells": {"wild": {"roc_auc": 0.52}, "gm": {"roc_auc": 0.8}}},
        }
    }
    out = tmp_path / "out"
    _metrics(out / rows[1].name / "eval_wild", 0.7)  # only the second row was re-run here
    ledger = gen.Ledger(tmp_path / "ledger.json")
    ledger.put(f"train {rows[1].name}", {"seconds": 12.0, "load_start": "1", "load_end": "2", "rc": 0})
    steps = gen.build_steps(tmp_path / "data", out, rows, type("A", (), {"num_workers": 0})())
    store = gen.update_store(store, out, rows, steps, ledger, None)

    kept, fresh = store["rows"][rows[0].name], store["rows"][rows[1].name]
    assert kept == {**old, "cells": {"wild": {"roc_auc": 0.61, "accuracy": 0.6}}}
    assert fresh["cells"]["wild"]["roc_auc"] == 0.7 and "other" not in fresh["cells"]["wild"]
    assert fresh["cells"]["gm"] == {"roc_auc": 0.8}  # a column not re-run keeps its stored cell
    assert fresh["machine"] != "old box" and fresh["steps"][f"train {rows[1].name}"]["seconds"] == 12.0

    text = gen.render([*rows, gen.RELEASE_ROW], steps, store)
    assert "**0.610**" in text and "**0.700**" in text and "old box" in text
    assert f"| train {rows[1].name} | 12 |" in text and f"| train {rows[0].name} | not run |" in text
    assert gen.RELEASE_ROW.name not in text  # shown only once it was measured

    # Rendering again with the same results changes nothing: an unchanged row keeps its stored machine and date,
    # even where the re-render runs on another machine on another day.
    stored = json.loads(json.dumps(store))
    stored["rows"][rows[1].name].update(machine="elsewhere", date="2026-02-02")
    again = gen.update_store(json.loads(json.dumps(stored)), out, rows, steps, ledger, None)
    assert again == stored


def test_an_ensemble_row_trains_nothing_and_evaluates_its_members_together(gen, tmp_path: Path) -> None:  # noqa: ANN001
    (row,) = [r for r in gen.ROWS if r.members]
    assert all(m in {r.name for r in gen.ROWS} for m in row.members)
    steps = gen.build_steps(
        tmp_path / "data", tmp_path / "out", gen.ROWS, type("A", (), {"num_workers": 0})()
    )
    mine = [s for s in steps if s.protocol == row.name]
    assert [s.name for s in mine] == [f"evaluate {row.name} on {c}" for c in gen.COLUMNS]
    names = [s.name for s in steps]
    for s in mine:
        ckpts = [s.argv[i + 1] for i, a in enumerate(s.argv) if a == "--checkpoint"]
        assert [Path(c).parent.name for c in ckpts] == list(row.members)
        assert s.argv[s.argv.index("--threshold") + 1] == "0.5"
        assert set(s.needs) >= {f"train {m}" for m in row.members}
        assert all(names.index(n) < names.index(s.name) for n in s.needs)  # members are trained first
