"""`python -m sweeper --help` is this app's help, not Hydra's generic one."""

from pathlib import Path

from tests.conftest import run_cli


def test_help_says_what_the_app_does_its_groups_and_examples(tmp_path: Path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "powered by Hydra" not in text  # was: "train is powered by Hydra."
    assert text.startswith("sweeper: grids of training runs")
    assert "schedule: constant, cosine, geometric, lr_range, multistep, step" in text  # the config groups
    assert "experiment: demo, lecture_baseline," in text
    assert "python -m sweeper -m model.channels=16,32,64 lr=0.2,0.1,0.01" in text  # examples
    assert "  epochs: 50" in text  # the config, to override
    assert not list(tmp_path.iterdir())  # nothing written


def test_help_lists_a_config_dirs_options_in_their_groups(tmp_path: Path):
    (tmp_path / "myconf" / "model").mkdir(parents=True)
    (tmp_path / "myconf" / "model" / "mlp.yaml").write_text("_target_: mynets.MLP\n")
    result = run_cli("--config-dir", "myconf", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "model: convnet, mlp, resnet" in result.stdout
    assert "python -m sweeper --config-dir myconf model=mlp" in result.stdout
