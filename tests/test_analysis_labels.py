"""Config values are text in the report and the figures: a `_target_` is named by its class, a `$`
draws as a `$`, HTML stays text in report.md."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from analysis import load_sweep  # noqa: E402
from analysis.report import standard_figures, write_report  # noqa: E402
from tests.fake_runs import base_config, job_record, metric_rows, summary_record, write_run, write_sweep_json  # noqa: E402


def sweep_of(root, key: str, values: list, seeds=(0, 1)):
    """A completed run per value of `key` x seed; each value its own curves."""
    jobs, points = [], []
    for i, value in enumerate(values):
        for seed in seeds:
            jobs.append([f"{key}={value}", f"trainer.seed={seed}"])
            points.append((i, value, seed))
    write_sweep_json(root, jobs)
    for num, (i, value, seed) in enumerate(points):
        data = metric_rows(
            [2.0, 1.2 - 0.1 * i, 0.9 - 0.1 * i],
            [2.1, 1.5, 1.4 - 0.05 * i],
            [0.3, 0.5, 0.6],
            [0.28, 0.45 + 0.01 * seed, 0.5 + 0.05 * i],
        )
        config = base_config(**{key: value, "trainer.seed": seed, "trainer.epochs": 3})
        write_run(root / str(num), config, data, summary_record(data), job_record(jobs[num], num))
    return root


def legend_texts(figure) -> list[str]:
    return [t.get_text() for legend in figure.legends for t in legend.get_texts()]


def test_a_target_is_named_by_its_class_in_the_report_tables_and_the_legends(tmp_path):
    sweep = load_sweep(sweep_of(tmp_path / "s", "optim._target_", ["torch.optim.Adam", "torch.optim.NAdam"]))
    drawn = {d.name: d for d in standard_figures(sweep)}
    legend = legend_texts(drawn["curves_by_optim._target_"].figure)
    assert any(t.startswith("optim._target_=NAdam") for t in legend), legend
    md = write_report(sweep, tmp_path / "report").read_text()
    assert "| NAdam |" in md and "| Adam |" in md and "torch.optim.NAdam" not in md.split("## Runs")[1]


def test_a_target_that_follows_a_named_key_gets_no_figure_of_its_own(tmp_path):
    root = sweep_of(tmp_path / "s", "schedule.name", ["constant", "cosine"])
    for num, target in enumerate(["constant", "constant", "cosine", "cosine"]):
        config = (root / str(num) / "config.json").read_text()
        (root / str(num) / "config.json").write_text(
            config.replace("sweeper.schedules.constant", f"sweeper.schedules.{target}")
        )
    sweep = load_sweep(root)
    assert sweep.group_keys == ["schedule._target_", "schedule.name"]
    names = [d.name for d in standard_figures(sweep)]
    assert "curves_by_schedule.name" in names and "curves_by_schedule._target_" not in names


def test_a_label_with_dollars_draws_as_text(tmp_path):
    """-m "+tag='$x_$',plain": matplotlib's mathtext raised ParseSyntaxException on the legend."""
    sweep = load_sweep(sweep_of(tmp_path / "s", "tag", ["$x_$", "plain"]))
    md = write_report(sweep, tmp_path / "report").read_text()  # renders every figure to PNG
    assert (tmp_path / "report" / "curves_by_tag.png").is_file()
    drawn = {d.name: d for d in standard_figures(sweep)}
    assert any(t.startswith(r"tag=\$x_\$") for t in legend_texts(drawn["curves_by_tag"].figure))
    assert r"\$x_\$" in md


def test_html_in_a_config_value_is_text_in_report_md(tmp_path):
    sweep = load_sweep(sweep_of(tmp_path / "s", "tag", ["<img src=x onerror=alert(1)>", "plain"], seeds=(0,)))
    md = write_report(sweep, tmp_path / "report").read_text()
    assert "<img" not in md
    assert "&lt;img src=x onerror=alert(1)&gt;" in md


def _user_component_sweep(root, hydra_choices: bool):
    """Two runs: the project's convnet, and a user's model, loss and data set by `_target_`, the
    user's options without a `name:` key (conf/model/tiny_vgg.yaml, ...)."""
    jobs = [["model=convnet"], ["model=tiny_vgg", "loss=focal", "data=pets"]]
    write_sweep_json(root, jobs)
    user = {"model": "mynets.vgg.TinyVGG", "loss": "mylosses.FocalLoss", "data": "mydata.Pets"}
    for num, overrides in enumerate(jobs):
        config = base_config(**{"trainer.epochs": 3})
        config["loss"] = {"_target_": "torch.nn.CrossEntropyLoss", "name": "cross_entropy"}
        if num == 1:
            for section, target in user.items():
                config[section] = {"_target_": target, "width": 8}
        data = metric_rows([2.0, 1.0, 0.5], [2.1, 1.5, 1.4], [0.3, 0.5, 0.6], [0.28, 0.45, 0.5 + 0.1 * num])
        run_dir = write_run(root / str(num), config, data, summary_record(data), job_record(overrides, num))
        if hydra_choices:
            options = {"model": "tiny_vgg", "loss": "focal", "data": "pets"} if num else {"model": "convnet"}
            choices = "".join(f"      {k}: {v}\n" for k, v in {"optim": "sgd", **options}.items())
            (run_dir / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    choices:\n{choices}")
    return root


def test_a_user_option_without_a_name_is_named_by_its_hydra_choice(tmp_path):
    sweep = load_sweep(_user_component_sweep(tmp_path / "s", hydra_choices=True))
    runs = sweep.runs.set_index("run")
    assert runs.loc["1", "model.name"] == "tiny_vgg"
    assert runs.loc["1", "loss.name"] == "focal" and runs.loc["1", "data.name"] == "pets"
    assert runs.loc["0", "model.name"] == "convnet"  # the project's own option keeps its own
    names = [d.name for d in standard_figures(sweep)]
    assert "curves_by_model.name" in names and "curves_by_model._target_" not in names
    md = write_report(sweep, tmp_path / "report").read_text()
    assert "| tiny_vgg |" in md.split("## Runs")[1]


def test_a_user_component_without_a_hydra_record_is_named_by_its_class(tmp_path):
    """model, loss and data by `_target_` (optim and schedule: the test above this file's first)."""
    sweep = load_sweep(_user_component_sweep(tmp_path / "s", hydra_choices=False))
    assert {"model._target_", "loss._target_", "data._target_"} <= set(sweep.varied)
    md = write_report(sweep, tmp_path / "report").read_text().split("## Runs")[1].split("## Problems")[0]
    for name in ("TinyVGG", "FocalLoss", "Pets", "ConvNet", "CrossEntropyLoss"):
        assert f"| {name} |" in md, name
    assert "mynets.vgg" not in md
