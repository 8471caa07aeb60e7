"""bench/cifake_recipe.py: a fresh --out (no results) never overwrites the results page."""

from __future__ import annotations

from pathlib import Path

from conftest import import_bench, make_dataset


def test_render_only_without_results_leaves_the_page_and_with_results_writes_it(tmp_path: Path) -> None:
    recipe = import_bench("cifake_recipe")
    make_dataset(tmp_path / "data" / "cifake", generators=("sd14",), n=5)
    page = tmp_path / "results_cifake.md"
    page.write_text("measured before\n")
    argv = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--results", str(page)]
    assert recipe.main([*argv, "--render-only", "--jobs", "1"]) == 0
    assert page.read_text() == "measured before\n"

    ledger = recipe.Ledger(tmp_path / "out" / "ledger_cifake16.json")
    ledger.put("train base s0", {"seconds": 3.0, "load_start": "1", "load_end": "1", "rc": 0})
    assert recipe.main([*argv, "--render-only", "--jobs", "1"]) == 0
    text = page.read_text()
    assert text.startswith("# CIFAKE with a margin") and "| train base s0 |" in text
    assert text.endswith(recipe.AFTER_THE_CHOICE)  # the hand-measured section is kept verbatim
