"""notebooks/sweep_analysis.ipynb runs top to bottom on a generated sweep and draws its figures."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.fake_runs import make_sweep

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "sweep_analysis.ipynb"


def executed(sweep: Path | str, monkeypatch) -> list:
    """The notebook's outputs, run top to bottom on `sweep` (SWEEP_DIR) by a kernel started in
    notebooks/, as jupyter starts it; it must raise nothing."""
    monkeypatch.setenv("SWEEP_DIR", str(sweep))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    return outputs


def test_the_notebook_executes_and_draws_every_figure(tmp_path, monkeypatch):
    sweep = make_sweep(
        tmp_path / "sweep",
        {"lr": [0.2, 0.05], "model.channels": [16, 32], "schedule": ["constant", ("step", 4, 0.01)]},
        seeds=(0, 1),
        epochs=8,
        n_train=300,
        n_test=100,
        diverge=[2],
    )
    outputs = executed(sweep, monkeypatch)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # curves by lr, model.channels and schedule.name (schedule.lr2 has one value: no figure of its own);
    # lr switch; loss vs accuracy; distributions; heatmap
    assert len(images) == 7
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"{sweep}: 16 runs" in printed
    assert "diverged at epoch" in printed


def test_the_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert [i for i, cell in enumerate(nb.cells) if cell.get("outputs")] == [], "clear the outputs first"


@pytest.mark.slow  # about 5 s: the whole notebook
def test_the_notebook_runs_on_a_sweep_with_no_epoch_logged_yet(tmp_path, monkeypatch):
    sweep = make_sweep(tmp_path / "sweep", {"lr": [0.2, 0.05]}, seeds=(0,), epochs=4, running=[0, 1])
    for metrics in sweep.glob("*/metrics.jsonl"):  # the jobs have started: config.json, nothing logged
        metrics.unlink()
    for losses in sweep.glob("*/losses.npz"):
        losses.unlink()
    outputs = executed(sweep, monkeypatch)
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "curves_by_lr: not drawn (curves: no data)" in printed
    assert "no epoch logged yet: no diagnostics" in printed


def test_a_relative_sweep_dir_is_read_from_where_jupyter_was_launched(tmp_path, monkeypatch):
    """`SWEEP_DIR=outputs/multirun/demo jupyter lab notebooks/sweep_analysis.ipynb` from a
    project's root: the kernel starts in notebooks/, where that path does not exist."""
    sweep = make_sweep(tmp_path / "outputs/multirun/demo", {"lr": [0.2, 0.05]}, seeds=(0,), epochs=3)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PWD", str(tmp_path))  # what the launching shell leaves to jupyter's kernels
    outputs = executed("outputs/multirun/demo", monkeypatch)
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"{sweep}: 2 runs" in printed
