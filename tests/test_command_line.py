"""Command lines that ended in a traceback, in Hydra's many-line grammar error, or with the run's
files in the current directory: each is refused in one line before anything runs."""

from pathlib import Path

import pytest

from sweeper import overrides, validate
from tests.conftest import CONF, TINY, run_cli


@pytest.mark.parametrize(
    "arguments, message",
    [
        # Hydra expanded these in its sweeper: a ValueError traceback, or a sweep of no job
        (["-m", "lr=range(0,1,0)"], "lr=range(0,1,0) is invalid: range() arg 3 must not be zero"),
        (
            ["-m", "lr=range(1,1)"],
            "lr=range(1,1) is invalid: it gives no value, so the sweep would have no job",
        ),
        # Hydra's grammar errors: four lines and a pointer to HYDRA_FULL_ERROR
        (
            ["-m", "lr=0.1,"],
            "lr=0.1, is invalid: Hydra's override grammar cannot read it (mismatched input '<EOF>'); "
            "see https://hydra.cc/docs/advanced/override_grammar/basic",
        ),
        (
            ["-m", "lr=choice()"],
            "lr=choice() is invalid: Hydra's override grammar cannot read it ('choice()': empty choice is not legal)",
        ),
        (["lr=[1,2"], "lr=[1,2 is invalid: Hydra's override grammar cannot read it (no viable alternative"),
        # Hydra: "ValueError: Config group override must be a string or a list. Got NoneType"
        (
            ["experiment=null"],
            "experiment=null is invalid: leave experiment out to run none, or write ~experiment",
        ),
        (["-m", "experiment=null,lecture_lr"], "experiment=null is invalid: allowed values are demo,"),
        # Hydra lists every job first: a billion jobs never start (and fill the memory)
        (
            ["-m", "trainer.epochs=range(1,1000000000)"],
            "trainer.epochs=range(1,1000000000) is a grid of 999,999,999 jobs: more than the 100,000 one "
            "sweep takes; sweep fewer values, or split the grid over several sweeps",
        ),
        (
            ["-m", "lr=range(1,1001)", "trainer.seed=range(0,1000)"],
            "lr=range(1,1001) trainer.seed=range(0,1000) is a grid of 1,000,000 jobs (1000 x 1000): more than",
        ),
        # a label that nothing reads, where a knob of that name was meant: it changed nothing
        (
            ["+label_smoothing=0.1"],
            "+label_smoothing is invalid: did you mean loss.label_smoothing? (+ adds a new key, which nothing reads)",
        ),
        (["+seed=1"], "+seed is invalid: did you mean data.seed or trainer.seed?"),
        # the current directory: the record's files among the user's own
        (["hydra.run.dir="], "hydra.run.dir= is invalid: an empty directory is the current one"),
        (
            ["-m", "lr=0.1,0.2", "hydra.sweep.dir="],
            "hydra.sweep.dir= is invalid: an empty directory is the current one",
        ),
    ],
)
def test_bad_command_lines_are_refused_in_one_line(arguments, message):
    with pytest.raises(validate.ConfigError) as err:
        overrides.check_overrides(arguments, str(CONF))
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "arguments",
    [
        ["~experiment"],
        ["hydra.run.dir=."],
        ["+tag=baseline"],  # a label of its own name: a column in the analysis
        ["-m", "lr=range(0.1,0.3,0.1)"],
        ["-m", "experiment=glob(lecture_lr*)"],
        ["-m", "lr=range(1,101)", "trainer.seed=range(0,1000)"],  # 100,000 jobs: the most a sweep takes
    ],
)
def test_their_valid_neighbours_pass(arguments):
    overrides.check_overrides(arguments, str(CONF))


def test_an_empty_run_dir_writes_nothing_into_the_current_directory(tmp_path: Path):
    # Before, the run completed with config.json, checkpoint.pt ... in the directory it was started from.
    result = run_cli(*TINY, "hydra.run.dir=", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: hydra.run.dir= is invalid: an empty directory is the current one, where the run's files "
        "would land among others; name a directory (hydra.run.dir=. if that is what you mean)"
    ]
    assert not list(tmp_path.iterdir())
