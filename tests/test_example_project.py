"""examples/own_project, end to end, as its README has a user run it: a project outside the
package with its own model module and config dir, on a generated 1-channel 28x28 ImageFolder of
5 classes with a validation split, then the report."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sweeper import load_model
from tests.conftest import REPO, run_cli

EXAMPLE = REPO / "examples" / "own_project"
CLASSES = ["circle", "cross", "square", "stripes", "triangle"]


def _make_data_module():
    spec = importlib.util.spec_from_file_location("own_project_make_data", EXAMPLE / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the example's files (not its data or outputs), as a user's fresh clone has it."""
    dest = tmp_path / "own_project"

    def generated(directory, names):  # the example's own data/ and outputs/, not conf/data/
        return (
            {"data", "outputs"} & set(names) if Path(directory) == EXAMPLE else {"__pycache__"} & set(names)
        )

    shutil.copytree(EXAMPLE, dest, ignore=generated)
    return dest


def _runs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/summary.json"))


def _check_runs(sweep: Path, models: set[str]) -> list[dict]:
    """Every run completed on 1x28x28 input with 5 classes and a validation split it logged, and
    recorded the receptive field where it can be computed."""
    summaries, names = [], set()
    for run in _runs(sweep):
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed", (run, summary.get("error"))
        assert summary["input_shape"] == [1, 28, 28]
        assert summary["classes"] == CLASSES
        assert summary["n_val"] > 0
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert rows and all("val_acc" in row and "val_loss" in row for row in rows)
        summaries.append(summary)
        name = json.loads((run / "config.json").read_text())["model"]["name"]
        # TinyVGG, an nn.Sequential of convs and pools, has one (16 px); the MLP has none, not an error
        assert summary["receptive_field_px"] == {"tiny_vgg": 16, "mlp": None}[name]
        names.add(name)
    assert names == models
    return summaries


def _check_report(sweep: Path, models: set[str]) -> str:
    """The report selects on the validation split and names the project's models by their options."""
    report = (sweep / "report" / "report.md").read_text()
    ranked_by = re.findall(r"ranked by `([^`]+)`", report)
    assert ranked_by and all(metric.startswith("val_") or "_val_" in metric for metric in ranked_by), (
        ranked_by
    )
    for name in models:
        assert re.search(rf"\|\s*{name}\s*\|", report), f"{name} is not a table cell of the report"
    return report


def test_example_grid_trains_own_models_on_its_images_and_reports_on_validation(project, monkeypatch):
    """The example's grid, shrunk (tiny data, both models, one lr, 1 epoch): its own models by
    `_target_` from its own --config-dir, the generated images read as 1 channel, 28x28, 5 classes,
    a validation split logged every epoch, a report that ranks on it and names the models, and a
    trained TinyVGG that sweeper.load_model rebuilds (mynets imported from the project dir) and
    that classifies the test images into the 5 classes."""
    _make_data_module().write(project / "data", train_per_class=20, test_per_class=4)
    sweep = project / "outputs" / "shapes"
    ran = run_cli(
        "-m", "--config-dir", "conf", "experiment=shapes_grid", "lr=0.1", "trainer.epochs=1",
        "data.cache_dir=null", f"hydra.sweep.dir={sweep}",
        cwd=project,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert len(_runs(sweep)) == 2
    _check_runs(sweep, {"tiny_vgg", "mlp"})
    report = run_cli(str(sweep), module="analysis", cwd=project)
    assert report.returncode == 0, report.stderr[-3000:]
    _check_report(sweep, {"tiny_vgg", "mlp"})

    monkeypatch.syspath_prepend(str(project))
    monkeypatch.delitem(sys.modules, "mynets", raising=False)
    (run,) = [
        r for r in _runs(sweep) if json.loads((r / "config.json").read_text())["model"]["name"] == "tiny_vgg"
    ]
    trained = load_model(run)
    assert type(trained.model).__name__ == "TinyVGG"
    assert trained.classes == CLASSES
    images = np.stack(
        [np.asarray(Image.open(p)) for p in sorted((project / "data" / "test").glob("*/*.png"))]
    )
    labels = trained.predict(images[:, None])  # (N, 1, 28, 28) uint8
    assert labels.shape == (len(images),)
    assert set(labels.tolist()) <= set(range(len(CLASSES)))


def test_make_data_writes_the_same_images_for_a_seed_and_never_mixes_two_data_sets(tmp_path):
    """make_data.py: 1-channel 28x28 PNGs in the 5 class folders of train/ and test/, byte for byte
    the same for the same arguments (a rerun leaves them); other arguments into that dir are
    refused, its files untouched."""
    make_data = _make_data_module()
    first, second = tmp_path / "a", tmp_path / "b"
    make_data.write(first, train_per_class=3, test_per_class=2, seed=1)
    make_data.write(second, train_per_class=3, test_per_class=2, seed=1)
    files = sorted(p.relative_to(first) for p in first.rglob("*.png"))
    assert len(files) == 5 * (3 + 2)
    assert sorted({p.parent.name for p in files}) == CLASSES
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    image = Image.open(first / files[0])
    assert (image.mode, image.size) == ("L", (28, 28))
    before = {f: (first / f).read_bytes() for f in files}
    make_data.write(first, train_per_class=3, test_per_class=2, seed=1)  # the same: nothing to do
    with pytest.raises(FileExistsError, match="already holds other files"):
        make_data.write(first, train_per_class=4, test_per_class=2, seed=2)
    assert {f: (first / f).read_bytes() for f in files} == before
    assert sorted(p.relative_to(first) for p in first.rglob("*.png")) == files


def _readme_commands() -> list[str]:
    """The commands of the example README's first bash block, without comments and the `cd`."""
    readme = (EXAMPLE / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [c for c in commands if c and not c.startswith(("cd ", "#"))]


@pytest.mark.slow
def test_example_readme_commands_run_as_written(project, tmp_path, monkeypatch):
    """The three commands of the example's README, verbatim, from a fresh copy: the data, the
    4-job grid (2 models x 2 learning rates, 8 epochs) and the report."""
    monkeypatch.setenv("HOME", str(tmp_path))  # the data cache (~/.cache/sweeper) stays in tmp_path
    commands = _readme_commands()
    assert [shlex.split(c)[:3] for c in commands] == [
        ["python", "make_data.py"],
        ["python", "-m", "sweeper"],
        ["python", "-m", "analysis"],
    ]
    for command in commands:
        args = shlex.split(command)[1:]
        # python -m M ARGS, or python make_data.py ARGS as python -m make_data ARGS (run_cli's form)
        module, args = (args[1], args[2:]) if args[0] == "-m" else (Path(args[0]).stem, args[1:])
        ran = run_cli(*args, module=module, cwd=project, timeout=900)
        assert ran.returncode == 0, (command, ran.stderr[-3000:])
    sweep = project / "outputs" / "shapes"
    assert len(_runs(sweep)) == 4
    summaries = _check_runs(sweep, {"tiny_vgg", "mlp"})
    assert max(s["best_val_acc"] for s in summaries) > 0.7  # the shapes are learnable: far above 1/5
    _check_report(sweep, {"tiny_vgg", "mlp"})
