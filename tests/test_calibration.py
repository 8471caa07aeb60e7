"""Threshold choice and expected calibration error."""

from __future__ import annotations

import numpy as np
import pytest

from synapse7.calibration import choose_threshold
from synapse7.reports import expected_calibration_error


def _apply(y: np.ndarray, p: np.ndarray, t: float) -> tuple[float, float, float]:
    pred = p >= t
    return float((pred == y).mean()), float(pred[y == 0].mean()), float(pred[y == 1].mean())


def _synthetic(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < 0.4).astype(int)
    # Scores shifted upwards: the accuracy-maximising cut is well away from 0.5.
    p = np.clip(np.where(y == 1, rng.normal(0.85, 0.08, n), rng.normal(0.65, 0.08, n)), 0, 1)
    return y, p


def test_accuracy_threshold_small_case() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.7, 0.6, 0.8, 0.9])
    c = choose_threshold(y, p)
    # Two cuts give 5/6 (between 0.2 and 0.6, or between 0.7 and 0.8); the one nearer 0.5 wins.
    assert c.threshold == pytest.approx(0.4) and c.accuracy == pytest.approx(5 / 6)
    assert (c.fpr, c.tpr) == (pytest.approx(1 / 3), 1.0)


def test_accuracy_threshold_is_the_maximum_and_round_trips() -> None:
    y, p = _synthetic()
    c = choose_threshold(y, p, method="accuracy")
    u = np.unique(p)
    brute = max(_apply(y, p, t)[0] for t in np.r_[u, u[-1] + 1])
    assert c.accuracy == pytest.approx(brute)
    assert 0.7 < c.threshold < 0.8  # not the default 0.5
    assert (c.accuracy, c.fpr, c.tpr) == pytest.approx(_apply(y, p, c.threshold))
    assert c.accuracy > _apply(y, p, 0.5)[0] + 0.1
    assert c.to_dict()["threshold"] == c.threshold and c.n == len(y)


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.2])
def test_fpr_threshold_meets_target_with_best_tpr(target: float) -> None:
    y, p = _synthetic(seed=1)
    c = choose_threshold(y, p, method="fpr", target_fpr=target)
    acc, fpr, tpr = _apply(y, p, c.threshold)
    assert fpr <= target and (c.fpr, c.tpr, c.accuracy) == pytest.approx((fpr, tpr, acc))
    assert c.target_fpr == target and c.method == "fpr"
    u = np.unique(p)
    best_tpr = max(t for _, f, t in (_apply(y, p, th) for th in np.r_[u, u[-1] + 1]) if f <= target)
    assert c.tpr == pytest.approx(best_tpr)


def test_threshold_with_ties_and_constant_scores() -> None:
    y = np.array([0, 1, 0, 1])
    c = choose_threshold(y, np.full(4, 0.7))
    assert c.accuracy == 0.5
    c = choose_threshold(np.array([0, 0, 1, 1]), np.array([0.3, 0.3, 0.3, 0.9]), method="fpr", target_fpr=0.0)
    assert c.fpr == 0.0 and c.tpr == 0.5 and 0.3 < c.threshold <= 0.9


def test_threshold_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="method"):
        choose_threshold([0, 1], [0.2, 0.8], method="f1")
    with pytest.raises(ValueError, match="differ in length"):
        choose_threshold([0, 1, 1], [0.2, 0.8])
    with pytest.raises(ValueError, match="0 \\(real\\) and 1"):
        choose_threshold([0, 2], [0.2, 0.8])
    with pytest.raises(ValueError, match="NaN"):
        choose_threshold([0, 1], [0.2, float("nan")])
    with pytest.raises(ValueError, match="real"):
        choose_threshold([1, 1], [0.2, 0.8], method="fpr")


def test_ece_near_zero_when_calibrated_and_large_when_overconfident() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(size=50_000)
    y = (rng.uniform(size=p.size) < p).astype(int)  # P(AI) is the true frequency
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error(y, p, on="p_ai") < 0.015
    over = np.where(p >= 0.5, 0.999, 0.001)  # same predictions, claimed near-certain
    assert expected_calibration_error(y, over) > 0.2
    # Exact value on a hand-computable case: every prediction at confidence 0.9, right half the time.
    assert expected_calibration_error([1, 0, 0, 1], [0.9, 0.9, 0.1, 0.1]) == pytest.approx(0.4)


def test_ece_matches_torchmetrics_binary_definition() -> None:
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.functional.classification")
    rng = np.random.default_rng(3)
    p = rng.beta(0.7, 0.7, size=3000)
    y = (rng.uniform(size=p.size) < p**1.5).astype(int)
    ref = tm.binary_calibration_error(torch.tensor(p), torch.tensor(y), n_bins=15).item()
    assert expected_calibration_error(y, p, on="p_ai") == pytest.approx(ref, abs=1e-6)


def test_ece_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([0, 1], [0.2, 1.2])
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error([0, 1], [0.2, 0.8], n_bins=0)
    with pytest.raises(ValueError, match="on must be"):
        expected_calibration_error([0, 1], [0.2, 0.8], on="logits")
