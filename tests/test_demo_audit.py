"""The demo's own data passes the shortcut audit (issue 13 item 9): stand-ins and photos match in file size."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

import synapse7.demo as demo
from synapse7.audit import audit_dataset


def _audit(root: Path):  # noqa: ANN202 - an AuditResult
    demo.make_demo_dataset(root, n_train=32, n_val=16)
    return audit_dataset(root)


def test_audit_of_the_demo_data_flags_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = _audit(tmp_path / "demo")
    assert not res.flagged, [(s.scope, s.feature, s.balanced_accuracy) for s in res.flagged]
    matched = res.score("all", "file_size").balanced_accuracy
    assert matched < 0.62
    assert res.score("all", "format").balanced_accuracy < 0.6  # PNG both
    # The control: one candidate per class is the old independent drawing, where file size tells the classes
    # apart far better (0.91 balanced accuracy on the full-size demo data).
    monkeypatch.setattr(demo, "size_matched_pair", partial(demo.size_matched_pair, candidates=1))
    control = _audit(tmp_path / "control").score("all", "file_size").balanced_accuracy
    assert control > matched + 0.08, (control, matched)
