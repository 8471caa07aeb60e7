"""The notebooks run end to end on tiny demo data (nbclient), and are stored without outputs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ORDER = ("training.ipynb", "evaluation.ipynb")  # evaluation reads the checkpoint training writes
INLINE_PLOTS = {"training.ipynb": 4, "evaluation.ipynb": 2}


@pytest.mark.parametrize("name", ORDER)
def test_stored_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert not any("!" == c.source.lstrip()[:1] or "subprocess" in c.source for c in code)  # Python API only


def test_notebooks_run_on_tiny_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import synapse7

    # The kernel is a new process: it must import this checkout's synapse7, and read the tiny settings.
    src = str(Path(synapse7.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("SYNAPSE7_NB_TINY", "1")
    monkeypatch.setenv("SYNAPSE7_OUT", str(tmp_path / "out"))
    monkeypatch.delenv("SYNAPSE7_DATA", raising=False)
    monkeypatch.delenv("SYNAPSE7_CHECKPOINT", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name in ORDER:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        t0 = time.time()
        # raises CellExecutionError on the first failing cell
        nbclient.NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
        print(f"{name}: {time.time() - t0:.1f} s")
        images = [
            o
            for c in nb.cells
            if c.cell_type == "code"
            for o in c.outputs
            if "image/png" in o.get("data", {})
        ]
        assert len(images) >= INLINE_PLOTS[name], f"{name}: expected its plots inline"
    assert (tmp_path / "out" / "run" / "best.ckpt").is_file()
    assert (tmp_path / "out" / "eval" / "classification_report.txt").is_file()
    assert (tmp_path / "out" / "fingerprint" / "fingerprint.png").is_file()


def test_evaluation_without_a_checkpoint_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNAPSE7_OUT", str(tmp_path / "empty"))
    nb = nbformat.read(NOTEBOOKS / "evaluation.ipynb", as_version=4)
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="run training.ipynb first"):
        nbclient.NotebookClient(
            nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
