"""python -m analysis.reproduction: the lecture's claims, checked on generated experiments with known answers."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from analysis.reproduction import main
from tests.conftest import REPO, run_cli
from tests.fake_runs import TEST_SPREAD, lecture_curves, make_lecture_root

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_FIGURES = {
    "claim1.png",
    "claim2.png",
    "claim3.png",
    "claim4.png",
    "claim5.png",
    "claim6a.png",
    "claim6b.png",
}


def section(md: str, key: str) -> str:
    """The markdown of one claim's section."""
    start = md.index(f"## Claim {key}:")
    end = md.find("\n## ", start + 1)
    return md[start:end]


def verdict(md: str, key: str) -> str:
    match = re.search(r"^\*\*Verdict: (.+?)(\.?\*\*|\*\*.*)$", section(md, key), re.MULTILINE)
    assert match, section(md, key)
    return match.group(1)


@pytest.fixture(scope="module")
def complete(tmp_path_factory) -> tuple[Path, str]:
    """Every claim testable and supported by lecture_curves; lecture_baseline/_distributions left out."""
    tmp = tmp_path_factory.mktemp("complete")
    root = make_lecture_root(
        tmp / "root",
        ["lecture_lr", "lecture_lr2", "lecture_test_loss", "lecture_overfit_subset", "lecture_capacity"],
    )
    out = tmp / "docs"
    assert main([str(root), "--out", str(out)]) == 0
    return out, (out / "reproduction.md").read_text()


@pytest.fixture(scope="module")
def partial(tmp_path_factory) -> tuple[Path, Path, str]:
    """lr=0.01 at epoch 30, lr2=0.05 at epoch 4, lr2=0.02 not started; a baseline that contradicts claims 1, 4, 5;
    no subset or capacity runs. Written over a report of the complete root, whose extra figures must go."""
    tmp = tmp_path_factory.mktemp("partial")
    root = make_lecture_root(
        tmp / "root",
        ["lecture_lr", "lecture_lr2"],
        baseline="flat",
        running={"lecture_lr": {2: 30}, "lecture_lr2": {1: 4}},
        not_started={"lecture_lr2": [2]},
    )
    stale_root = make_lecture_root(tmp / "stale", ["lecture_overfit_subset", "lecture_capacity"])
    out = tmp / "docs"
    assert main([str(stale_root), "--out", str(out)]) == 0
    assert {"claim6a.png", "claim6b.png"} <= {p.name for p in (out / "figures").iterdir()}
    assert main([str(root), "--out", str(out)]) == 0
    return root, out, (out / "reproduction.md").read_text()


def test_every_claim_is_supported_on_the_known_curves(complete):
    _, md = complete
    for key in ("1", "2", "3", "4", "5", "6a", "6b"):
        assert verdict(md, key) == "supported", key
    summary = md[: md.index("## Machine")]
    assert summary.count("| supported |") == 7


def test_figures_are_small_pngs_linked_relatively(complete):
    out, md = complete
    linked = set(re.findall(r"!\[[^]]*\]\(figures/([^)]+)\)", md))
    assert linked == ALL_FIGURES
    for name in linked:
        data = (out / "figures" / name).read_bytes()
        assert data[:8] == PNG_MAGIC
        assert len(data) < 150_000, name
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width <= 800 and height <= 500, (name, width, height)  # dpi 100: at most 8 x 5 inches


def test_the_numbers_behind_claims_1_and_2(complete):
    _, md = complete
    one = section(md, "1")
    # lr 0.1: train loss 2 -> 0.02 (2 decades), test acc best 0.705 at epoch 25, 0.690 at the end (-1.5 points)
    assert (
        "| lr=0.1 | completed | 50/50 | 2 | 0.02 | 2.00 | 0.02 (ep. 50) | 0.705 (ep. 25) | 0.690 | -1.5 |"
        in one
    )
    assert "| final test accuracy in [0.6, 0.75] | 0.690 | yes |" in one
    assert "2.00 decades (2 → 0.02) | yes |" in one
    assert (
        "SWEEPER_DATA=/data/cifar10-jpeg.tar.gz python -m sweeper -m experiment=lecture_lr hydra.sweep.dir="
        in one
    )
    assert "The dedicated experiment `lecture_baseline` was not run" in one
    two = section(md, "2")
    assert "| 0.2 | completed | 50/50 | 2 | 1.7 | 0.26 |" in two
    assert "2.34 (25)" in two  # 25 rises of log10(1.3) - 1/49 decades
    assert "2.03 vs 0.858 (2.36×) | yes |" in two
    assert "lr=0.01: 1.15, lr=0.1: 0.02, lr=0.2: 0.26 | yes |" in two


def test_the_numbers_behind_claim_3(complete):
    _, md = complete
    three = section(md, "3")
    assert "| 0.05 | completed | 50/50 | 0.21 | 0.006 (ep. 50) | 0.02 |" in three
    assert "ranked by final test accuracy: 0.05: 0.720, 0.07: 0.710, 0.02: 0.700." in three
    assert (
        "| the best lr2 by final test accuracy is the lecture's 0.05, by more than the seed-to-seed std where "
        "lecture_test_loss measures it | best: 0.05 | yes |"
    ) in three  # a lead of 1 point against a std of 0.1
    assert "seed-to-seed std of lecture_test_loss, 0.1 points" in three


def claim_on(root: Path, key: str, noise: float | None = None, conf: dict | None = None):
    """One claim of analysis/reproduction/claims.yaml (or of `conf`) evaluated on the runs under root."""
    from analysis.reproduction import evaluate, load_experiments, read_conf
    from analysis.reproduction.render import context

    conf = conf or read_conf()
    ctx = context(load_experiments(root, str(root), conf), conf)
    ctx.noise = noise if noise is not None else ctx.noise
    return evaluate(next(c for c in conf["claims"] if c["key"] == key), ctx)


def test_a_best_lr2_within_the_seed_noise_is_a_tie_not_a_pick(complete):
    # The JPEG runs put 0.05 ahead of 0.02 by one test image (0.6793 against 0.6792), and claim 3
    # read "supported" with a std of 0.8 points between seeds.
    out, _ = complete
    claim = claim_on(out.parent / "root", "3", noise=0.02)
    check = claim.checks[-1]
    assert check.passed is None
    assert claim.verdict == "partly supported"  # an undecided part of the claim is not a pass
    assert check.observed == (
        "best: 0.05, 1.00 points ahead of 0.07, within the seed-to-seed std of 2.0 points: a tie, not a pick"
    )


def test_the_thresholds_and_wording_come_from_the_claims_yaml(complete):
    """analysis/reproduction/claims.yaml's band for claim 1 is what the check quotes and applies."""
    from analysis.reproduction import read_conf

    out, _ = complete
    conf = read_conf()
    claim_1 = next(c for c in conf["claims"] if c["key"] == "1")
    claim_1["params"]["acc_band"] = [0.70, 0.80]
    claim_1["checks"]["band"]["rule"] = "final test accuracy between {acc_band[0]} and {acc_band[1]}"
    check = claim_on(out.parent / "root", "1", conf=conf).checks[0]
    assert (check.rule, check.observed, check.passed) == (
        "final test accuracy between 0.7 and 0.8",
        "0.690",
        False,
    )


def test_a_check_passes_and_is_undecided_by_its_claims_yaml_expressions(complete):
    """A check's `passes` and `undecided` expressions in claims.yaml decide it, over the claim's facts."""
    from analysis.reproduction import read_conf

    out, _ = complete
    conf = read_conf()
    band = next(c for c in conf["claims"] if c["key"] == "1")["checks"]["band"]
    band["passes"] = "final_acc >= 0.7"  # the run's final test acc is 0.690
    assert claim_on(out.parent / "root", "1", conf=conf).checks[0].passed is False
    band["undecided"] = "isclose(final_acc, 0.69)"
    claim = claim_on(out.parent / "root", "1", conf=conf)
    assert claim.checks[0].passed is None and claim.verdict == "partly supported"


def test_the_numbers_behind_claims_4_and_5(complete):
    _, md = complete
    four = section(md, "4")
    assert "Runs: `lecture_test_loss`, 3 run(s)" in four  # the dedicated experiment wins over lecture_lr
    assert "| trainer.seed=1 | completed | 1 (ep. 12) | 0.706 (ep. 25) |" in four
    assert "3/3 runs — trainer.seed=0: loss min at epoch 12, accuracy peak at epoch 25" in four
    assert "3.89× the minimum, 1.5 points below the best" in four
    five = section(md, "5")
    # medians are the train / test loss of that epoch; the test 90th percentile is 10**0.8 x the median
    baseline = lecture_curves("baseline")
    test_q90 = baseline["test_loss"][49] * TEST_SPREAD[180]
    assert f"| 50 (late) | 0.02 | 0.796 | 3.89 | {test_q90:.3g} | 194 |" in five
    assert "| 10 (early) | 0.858 |" in five
    assert "| 1 | 2 |" in five and "| 25 | 0.21 |" in five
    assert "median 42.9× lower at epoch 50 than at epoch 10 | yes |" in five
    assert "| test | 0.0% | 100.0% | 0.0% | 0.0% |" in five  # sample by sample, from sample_losses/


def test_the_numbers_behind_claim_6(complete):
    _, md = complete
    six = section(md, "6a")
    assert "| model.channels=32 | 1000 | 107106 | completed | 50/50 | 0.001 (ep. 50) | 1.000 |" in six
    assert "fits its training set from epoch 36" in six
    assert "does not fit in 50 epochs (min train loss 0.5, best train acc 70.0%)" in six
    cap = section(md, "6b")
    assert "| 32 | [50] | 80,000 | 0.850 | 0.700 | 0.150 | neither |" in cap  # the knobs varied, only
    assert "| 8 | [50] | 20,000 | 0.600 | 0.550 | 0.050 | underfits |" in cap
    assert "| 32 | [200] | 320,000 | 0.990 | 0.660 | 0.330 | overfits |" in cap


def test_machine_wall_time_experiments_and_rerun(complete):
    _, md = complete
    assert "- host: `node-test`" in md and "- torch 2.14.0; python 3.11.7" in md
    assert "- CPU cores: not recorded in the run record" in md  # another host than this one
    assert "| lecture_lr | lr=0.1 | completed | 50/50 | 1000 | 16.7 min | 20.0 | summary.json |" in md
    assert "| `lecture_baseline` |" in md and re.search(
        r"\| `lecture_distributions` \|[^\n]*\| not run \|", md
    )
    rerun = md[md.index("## How to rerun") :]
    assert "make reproduce" in rerun and "python -m analysis.reproduction" in rerun
    differences = md[md.index("## Differences from the lecture") : md.index("## How to rerun")]
    assert "JPEG copy of CIFAR-10" in differences
    assert "**not supported**" not in differences and "**partly supported**" not in differences


def test_a_reduced_run_names_its_overrides_among_the_differences(tmp_path, complete):
    _, md = complete
    assert "command-line overrides" not in md  # the experiments ran as their files say
    root = make_lecture_root(
        tmp_path / "root",
        ["lecture_capacity"],
        typed={"lecture_capacity": ["model.channels=16,32", "trainer.epochs=20", "data.root=/somewhere"]},
    )
    assert main([str(root), "--out", str(tmp_path / "docs")]) == 0
    md = (tmp_path / "docs" / "reproduction.md").read_text()
    differences = md[md.index("## Differences from the lecture") : md.index("## How to rerun")]
    assert (
        "`lecture_capacity` ran with these command-line overrides of its experiment file: "
        "`model.channels=16,32 trainer.epochs=20`."
    ) in differences


def test_recorded_cpu_count_and_the_conditions_note_reach_the_machine_section(tmp_path):
    root = make_lecture_root(tmp_path / "root", ["lecture_lr"])
    for summary_file in root.glob("lecture_lr/*/summary.json"):
        summary = json.loads(summary_file.read_text())
        summary_file.write_text(json.dumps({**summary, "cpu_count": 16, "torch_threads": 1}))
    out = tmp_path / "docs"
    assert main([str(root), "--out", str(out), "--note", "one thread each, niced"]) == 0
    md = (out / "reproduction.md").read_text()
    assert "- CPU cores: 16 (1 torch threads) (summary.json)" in md
    assert "- conditions: one thread each, niced" in md


def test_in_progress_runs_give_partial_instead_of_a_verdict(partial):
    _, _, md = partial
    assert verdict(md, "2") == "partial: 30/50 epochs (lr=0.01: running, 30/50)"
    assert verdict(md, "3") == (
        "partial: 0/50 epochs (schedule.lr2=0.05: running, 4/50; schedule.lr2=0.02: not started)"
    )
    three = section(md, "3")
    assert "| check | observed so far | passes so far |" in three
    assert "waits for every lr2 run to end | n/a |" in three
    assert (
        "| lecture_lr2 | schedule.lr2=0.05 | running | 4/50 | 80 | 1.3 min | 20.0 | last metrics line |" in md
    )
    assert "| lecture_lr | lr=0.01 | running | 30/50 | 600 | 10.0 min | 20.0 | last metrics line |" in md


def test_contradicting_numbers_are_not_supported_and_listed_as_differences(partial):
    _, _, md = partial
    for key in ("1", "4", "5"):
        assert verdict(md, key) == "not supported", key
    one = section(md, "1")
    assert "| final test accuracy in [0.6, 0.75] | 0.800 | **no** |" in one
    assert "0.35 decades (2 → 0.9) | **no** |" in one
    assert "+15.0 points | **no** |" in one
    differences = md[md.index("## Differences from the lecture") : md.index("## How to rerun")]
    assert (
        "Claim 1 (" in differences
        and "observed 0.800" in differences
        and "observed 0.35 decades" in differences
    )
    assert "Claim 2 has no verdict yet (partial: 30/50 epochs" in differences


def test_missing_experiments_are_not_run_with_their_command(partial):
    root, out, md = partial
    for key, name in (("6a", "lecture_overfit_subset"), ("6b", "lecture_capacity")):
        text = section(md, key)
        assert "**Verdict: not run.**" in text
        assert f"python -m sweeper -m experiment={name} hydra.sweep.dir={root}/{name}" in text
    assert "The capacity grid was not run: ROOT holds no lecture_capacity/ sweep." in section(md, "6b")
    assert "its 12 jobs take about 3.3 h" in section(md, "6b")  # 12 x the lr=0.1 run's 1000 s
    assert {p.name for p in (out / "figures").iterdir()} == {
        "claim1.png",
        "claim2.png",
        "claim3.png",
        "claim4.png",
        "claim5.png",
    }


def test_the_module_entry_point_refuses_a_missing_root(tmp_path):
    bad = run_cli(str(tmp_path / "nope"), cwd=REPO, module="analysis.reproduction", timeout=120)
    assert bad.returncode == 2
    assert bad.stderr == f"analysis.reproduction: error: {tmp_path / 'nope'}: no such directory\n"


def test_a_sweep_whose_jobs_have_not_started_is_partial(tmp_path):
    root = make_lecture_root(
        tmp_path / "root", ["lecture_overfit_subset"], not_started={"lecture_overfit_subset": [0, 1]}
    )
    assert main([str(root), "--out", str(tmp_path / "docs")]) == 0
    md = (tmp_path / "docs" / "reproduction.md").read_text()
    assert verdict(md, "6a") == (
        "partial: 0/50 epochs (model.channels=8: not started; model.channels=32: not started)"
    )
    assert "| `lecture_overfit_subset` |" in md and "| 2 not started |" in md
    assert not list((tmp_path / "docs" / "figures").iterdir())


def test_runs_with_no_epoch_logged_yet_are_partial_not_a_crash(tmp_path):
    # Each experiment has one run that has started (config.json) but logged nothing: the claims
    # that read its curve wait for it, as for a job not started.
    root = make_lecture_root(
        tmp_path / "root",
        ["lecture_lr", "lecture_test_loss", "lecture_overfit_subset"],
        running={"lecture_lr": {1: 0}, "lecture_test_loss": {2: 0}, "lecture_overfit_subset": {0: 0}},
    )
    assert main([str(root), "--out", str(tmp_path / "docs")]) == 0
    md = (tmp_path / "docs" / "reproduction.md").read_text()
    assert verdict(md, "1") == "partial: 0/50 epochs (lr=0.1: running, 0/50)"
    assert verdict(md, "4") == "partial: 0/50 epochs (trainer.seed=2: running, 0/50)"
    assert verdict(md, "6a") == "partial: 0/50 epochs (model.channels=8: running, 0/50)"


def test_a_root_without_lecture_sweeps_is_refused_in_one_line(tmp_path):
    sweep = tmp_path / "demo"  # a sweep dir given where ROOT, its parent, is meant
    (sweep / "0").mkdir(parents=True)
    bad = run_cli(str(sweep), "--out", str(tmp_path / "docs"), cwd=REPO, module="analysis.reproduction")
    assert bad.returncode == 2
    assert bad.stderr.startswith(
        f"analysis.reproduction: error: {sweep}: no lecture sweep under it (expected"
    )
    assert bad.stderr.count("\n") == 1 and "lecture_lr/" in bad.stderr
    assert not (tmp_path / "docs" / "reproduction.md").exists()


def test_claim_4_names_no_gain_after_the_minimum_when_the_accuracy_peak_is_not_after_it():
    from analysis.reproduction import read_conf
    from analysis.reproduction.text import fill

    claim_4 = next(c for c in read_conf()["claims"] if c["key"] == "4")
    observed = claim_4["checks"]["decoupled"]["observed"]
    before = {"min_test_loss_epoch": 29, "best_test_acc_epoch": 25, "peak_after_min": False,
              "acc_gain_after_min_loss": 0.075, "loss_rise_at_best_acc": 0.1}  # fmt: skip
    assert fill(observed, before) == (
        "loss min at epoch 29, accuracy peak at epoch 25: the peak is not after the minimum"
    )
    after = {**before, "best_test_acc_epoch": 36, "peak_after_min": True}
    assert (
        fill(observed, after)
        == "loss min at epoch 29, accuracy peak at epoch 36 (+7.5 points, test loss +10%)"
    )


def test_claim_5_figure_shows_the_last_kept_epoch_its_check_compares():
    from analysis.reproduction.claims import distribution_epochs

    wanted = (1, 10, 25, 50)  # analysis/reproduction/claims.yaml's quantile_epochs
    assert distribution_epochs([1, 5, 10, 20, 30], wanted) == [1, 10, 20, 30]  # 25 -> 20; 30 is "late"
    assert distribution_epochs([1, 10, 25, 50], wanted) == [1, 10, 25, 50]
    assert distribution_epochs([], wanted) == []


def test_sweep_dirs_are_named_relative_to_root_and_no_recorded_machine_path_is_shown(complete):
    out, md = complete
    root = str(out.parent / "root")
    assert (
        "| `lecture_lr` | claim 2 (and 1, 4, 5 from its lr=0.1 run): lr in {0.2, 0.1, 0.01} | 3 completed | `lecture_lr` |"
        in md
    )
    assert "Runs: `lecture_lr2`, 3 run(s) in `lecture_lr2`." in section(md, "3")
    # sweep.json recorded hydra.sweep.dir=<root>/lecture_lr: the command above it gives the dir
    assert "As recorded in sweep.json: `python -m sweeper -m experiment=lecture_lr`\n" in section(md, "2")
    # ROOT, as typed, only in the header and in commands to run (and the dedicated experiment's)
    commands = ("Generated by", "SWEEPER_DATA=", "The dedicated experiment", "for e in", "python -m analysis")
    assert [line for line in md.splitlines() if root in line and not line.startswith(commands)] == []


def test_the_job_count_of_an_experiment_comes_from_its_yaml(tmp_path, monkeypatch):
    """The capacity grid's job count is the product of conf/experiment/lecture_capacity.yaml's sweep params."""
    import shutil

    from analysis.reproduction import runs

    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    (conf / "experiment" / "lecture_capacity.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      model.channels: 8,32\n"
        "      model.units: '[50],[200],[800]'\n      model.kernel_size: 3,5\n"
    )
    assert runs.grid_jobs("lecture_capacity") == 12  # the shipped grid: 4 channels x 3 fc sizes
    monkeypatch.setattr(runs, "CONF_DIR", conf)
    assert runs.grid_jobs("lecture_capacity") == 12 and runs.grid_jobs("lecture_lr") == 3
    (conf / "experiment" / "lecture_capacity.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      model.channels: 8,32\n"
    )
    assert runs.grid_jobs("lecture_capacity") == 2
    root = make_lecture_root(tmp_path / "root", ["lecture_lr"])
    assert main([str(root), "--out", str(tmp_path / "docs")]) == 0
    md = (tmp_path / "docs" / "reproduction.md").read_text()
    assert "around the lecture's net (2 jobs) on the full set" in md
    assert "its 2 jobs take about 0.6 h" in section(md, "6b")  # 2 x the lr=0.1 run's 1000 s


def test_a_run_stopped_early_has_ended_like_a_completed_one(tmp_path):
    """stopped_early is a result (analysis.status.RESULTS): the claim has a verdict, not "partial"."""
    root = make_lecture_root(tmp_path / "root", ["lecture_lr"])
    summary_file = root / "lecture_lr" / "2" / "summary.json"  # job 2: lr=0.01, the slow one
    summary = json.loads(summary_file.read_text())
    summary_file.write_text(json.dumps({**summary, "status": "stopped_early"}))
    claim = claim_on(root, "2")
    assert "stopped_early" in claim.source.runs["status"].tolist()
    assert claim.verdict == "supported"


def test_a_diverged_rate_reads_diverged_and_a_run_without_losses_npz_is_undecided(tmp_path):
    root = make_lecture_root(tmp_path / "root", ["lecture_lr"])
    summary_file = root / "lecture_lr" / "0" / "summary.json"  # job 0: lr=0.2
    summary_file.write_text(json.dumps({**json.loads(summary_file.read_text()), "status": "diverged"}))
    (root / "lecture_lr" / "1" / "losses.npz").unlink()  # job 1: lr=0.1, claim 5's run
    bounce, slow, separate = claim_on(root, "2").checks
    assert (bounce.observed, bounce.passed) == ("diverged", True)
    assert (separate.observed, separate.passed) == ("lr=0.01: 1.15, lr=0.1: 0.02, lr=0.2: diverged", True)
    five = claim_on(root, "5")
    assert [(c.observed, c.passed) for c in five.checks] == [("no losses.npz yet", None)] * 2
    assert five.verdict == "undecided (nothing could be checked)"


GOLDEN = Path(__file__).with_name("reproduction_golden")


def as_golden(md: str, root: Path, out: Path) -> str:
    """The report with what changes from one run to the next (the date, the tmp dirs) replaced."""
    md = re.sub(r"on \d{4}-\d\d-\d\d \d\d:\d\d UTC", "on DATE", md)
    return md.replace(str(root), "ROOT").replace(str(out), "OUT")


def test_the_whole_report_is_unchanged_on_the_complete_records(complete):
    """Every verdict, number and sentence of the report on the known curves, word for word: a
    refactoring that changes any of them fails here (an intended change rewrites the golden file)."""
    out, md = complete
    assert as_golden(md, out.parent / "root", out) == (GOLDEN / "complete.md").read_text()


def test_the_whole_report_is_unchanged_on_the_partial_records(partial):
    """The same for runs in progress, a contradicting baseline and experiments not run."""
    root, out, md = partial
    assert as_golden(md, root, out) == (GOLDEN / "partial.md").read_text()


def test_claim_3_reads_the_switch_epoch_under_its_former_name_and_its_new_one(tmp_path):
    """schedule.epoch was renamed schedule.switch_epoch: records written under either name give
    claim 3 the same checks (sweeper.schema.RENAMED_KEYS)."""
    root = make_lecture_root(tmp_path / "root", ["lecture_lr", "lecture_lr2"])
    results = {}
    for name in ("epoch", "switch_epoch"):
        for config_file in root.glob("lecture_lr2/*/config.json"):
            config = json.loads(config_file.read_text())
            schedule = config["schedule"]
            schedule[name] = schedule.pop("epoch", None) or schedule.pop("switch_epoch")
            config_file.write_text(json.dumps(config))
        shutil.rmtree(root / "lecture_lr2" / ".analysis_cache", ignore_errors=True)  # parsed records
        claim = claim_on(root, "3")
        results[name] = [(c.rule, c.observed, c.passed) for c in claim.checks]
    assert results["epoch"] == results["switch_epoch"]
    assert results["epoch"][0][0].startswith("after the switch (epoch 25)")
    assert results["epoch"][0][2] is True
