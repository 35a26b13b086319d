"""A finished run's model is usable outside the sweep: the record holds what rebuilding it needs,
and `sweeper.load_model(run_dir)` returns the trained module, or refuses in one line naming the file."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from sweeper import data, fused, load_model, train
from sweeper.trained import NotLoadable, input_facts
from tests.conftest import compose_cfg

CLASSES = [f"class{i}" for i in range(10)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny real run (synthetic data, 2 epochs), its config and summary; copy before damaging it."""
    cfg = compose_cfg()
    run_dir = tmp_path_factory.mktemp("load") / "run"
    summary = train.run(cfg, run_dir)
    assert summary["status"] == "completed"
    return cfg, run_dir, summary


def copy_of(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / "run")


def edit_json(path, **changes):
    value = json.loads(path.read_text())
    value.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del value[key]
    path.write_text(json.dumps(value))


def one_line_naming(err, *words):
    text = str(err.value)
    assert "\n" not in text, text
    for word in words:
        assert word in text, text


def test_a_loaded_model_reproduces_the_runs_final_test_metrics_exactly(finished):
    cfg, run_dir, summary = finished
    trained = load_model(run_dir)
    assert not trained.model.training and next(trained.model.parameters()).device.type == "cpu"
    assert trained.epoch == summary["epochs_done"] == 2
    test = data.load(cfg.data)  # the run's test images, as uint8 pixels
    logits = trained.logits(test.test_x)
    accuracy = (logits.argmax(1) == test.test_y).sum() / len(test.test_y)
    loss = F.cross_entropy(logits, test.test_y, reduction="none").mean()
    # bitwise: preprocess normalises as training did, and the weights are the last epoch's
    assert accuracy.item() == summary["final_test_acc"]
    assert loss.item() == summary["final_test_loss"]
    assert torch.equal(trained.predict(test.test_x), logits.argmax(1))
    assert trained.classes == CLASSES and trained.input_shape == (3, 32, 32)


def test_the_record_holds_the_models_input_as_the_loader_applied_it(finished):
    cfg, run_dir, summary = finished
    loaded = data.load(cfg.data)
    assert summary["input_shape"] == [3, 32, 32]
    assert summary["classes"] == CLASSES
    assert summary["normalize_mean"] == loaded.mean.flatten().tolist()
    assert summary["normalize_std"] == loaded.std.flatten().tolist()
    assert len(set(summary["normalize_mean"])) == 3  # per channel, the training set's statistics
    plain = input_facts(data.load(compose_cfg("data.normalize=false").data))
    assert plain["normalize_mean"] == [0.0] * 3 and plain["normalize_std"] == [255.0] * 3


def test_loading_leaves_the_callers_random_state_alone(finished):
    state = torch.get_rng_state()
    load_model(finished[1])
    assert torch.equal(torch.get_rng_state(), state)


def test_preprocess_refuses_images_that_are_not_the_models_uint8_input_in_one_line(finished):
    trained = load_model(finished[1])
    with pytest.raises(ValueError) as err:
        trained.preprocess(torch.zeros(2, 3, 32, 32))
    one_line_naming(err, "uint8", "(N, 3, 32, 32)", "float32")
    with pytest.raises(ValueError) as err:
        trained.preprocess(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    one_line_naming(err, "(2, 1, 28, 28)")
    assert trained.preprocess(torch.zeros(3, 32, 32, dtype=torch.uint8)).shape == (1, 3, 32, 32)


def test_a_run_without_a_checkpoint_is_refused_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    assert (
        train.run(compose_cfg("trainer.checkpoint=false", "trainer.epochs=1"), run_dir)["status"]
        == "completed"
    )
    with pytest.raises(NotLoadable) as err:
        load_model(run_dir)
    one_line_naming(err, "checkpoint.pt", "trainer.checkpoint=false")


def test_a_damaged_checkpoint_is_refused_in_one_line(finished, tmp_path):
    run_dir = copy_of(finished[1], tmp_path)
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(NotLoadable) as err:
        load_model(run_dir)
    one_line_naming(err, "checkpoint.pt", "does not load")


def test_a_checkpoint_whose_weights_were_changed_after_saving_is_refused(finished, tmp_path):
    """A flipped weight loads in torch; the digest the run saved it with catches it."""
    run_dir = copy_of(finished[1], tmp_path)
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    weight = next(iter(state["model"].values()))
    weight[(0,) * weight.dim()] += 1.0
    torch.save(state, run_dir / "checkpoint.pt")
    with pytest.raises(NotLoadable) as err:
        load_model(run_dir)
    one_line_naming(err, "checkpoint.pt", "digest")


def test_a_run_that_has_not_ended_is_refused_in_one_line(finished, tmp_path):
    run_dir = copy_of(finished[1], tmp_path)
    (run_dir / "summary.json").unlink()
    with pytest.raises(NotLoadable) as err:
        load_model(run_dir)
    one_line_naming(err, "summary.json", "missing", "not ended")
    (run_dir / "summary.json").write_text('{"status": "compl')
    with pytest.raises(NotLoadable) as err:
        load_model(run_dir)
    one_line_naming(err, "summary.json", "damaged")


def test_weights_that_do_not_fit_the_configs_model_are_refused_in_one_line(finished, tmp_path):
    run_dir = copy_of(finished[1], tmp_path)
    edit_json(
        run_dir / "config.json",
        model={**json.loads((run_dir / "config.json").read_text())["model"], "channels": 8},
    )
    with pytest.raises(NotLoadable) as err:
        load_model(run_dir)
    one_line_naming(err, "checkpoint.pt", "do not fit")


def test_a_damaged_input_field_is_refused_naming_it(finished, tmp_path):
    run_dir = copy_of(finished[1], tmp_path)
    edit_json(run_dir / "summary.json", classes=10)
    with pytest.raises(NotLoadable) as err:
        load_model(run_dir)
    one_line_naming(err, "summary.json", "classes")
    edit_json(run_dir / "summary.json", classes=CLASSES, normalize_std=None)
    with pytest.raises(NotLoadable) as err:
        load_model(run_dir)
    one_line_naming(err, "summary.json", "normalize_std")


def test_an_older_record_of_synthetic_data_is_re_derived_exactly_and_of_other_data_refused(
    finished, tmp_path
):
    cfg, source, summary = finished
    run_dir = copy_of(source, tmp_path)
    edit_json(
        run_dir / "summary.json", input_shape=None, classes=None, normalize_mean=None, normalize_std=None
    )
    trained = load_model(run_dir)
    test = data.load(cfg.data)
    accuracy = (trained.predict(test.test_x) == test.test_y).sum() / len(test.test_y)
    assert accuracy.item() == summary["final_test_acc"]
    config = json.loads((run_dir / "config.json").read_text())
    config["data"]["name"] = "cifar10"
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotLoadable) as err:
        load_model(run_dir)
    one_line_naming(err, "summary.json", "input_shape", "data.name=cifar10")


def test_fused_trials_record_the_same_input_and_load_like_solo_runs(finished, tmp_path):
    cfg, _, solo = finished
    cfgs = [compose_cfg("lr=0.1"), compose_cfg("lr=0.05")]
    dirs = [tmp_path / "0", tmp_path / "1"]
    summaries = fused.run_group(cfgs, dirs, [[], []], [0, 1])
    test = data.load(cfg.data)
    for run_dir, summary in zip(dirs, summaries, strict=True):
        assert summary["fused_trials"] == 2
        for key in ("input_shape", "classes", "normalize_mean", "normalize_std"):
            assert summary[key] == solo[key]
        accuracy = (load_model(run_dir).predict(test.test_x) == test.test_y).float().mean().item()
        # the fused program's evaluation is the solo net's up to float rounding (tests/test_fused.py)
        assert accuracy == pytest.approx(summary["final_test_acc"], abs=0.02)
