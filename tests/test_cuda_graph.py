"""The graph step (sweeper/cuda_graph.py) computes what the plain torch.optim step computes.

On the CPU the capture itself cannot run, but the captured function can: forcing it proves its
SGD arithmetic and its checkpoints. With a GPU, the tests marked `cuda` also prove that capture
and replay give the eager step's results (on a CUDA machine; docs/benchmarks.md has the timings).
"""

import json

import pytest
import torch

from sweeper import cuda_graph, fused, train, validate
from tests.conftest import compose_cfg

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

OPTIMISERS = [
    [],  # the lecture's plain SGD
    ["optim.momentum=0.9", "optim.weight_decay=5e-4"],
    [
        "optim.momentum=0.9",
        "optim.nesterov=true",
        "model.l1=1e-4",
        "schedule=step",
        "schedule.switch_epoch=1",
    ],
]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_curves(a_dir, b_dir, rel):
    a, b = rows(a_dir), rows(b_dir)
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [1, 2]
    for ra, rb in zip(a, b, strict=True):
        for key in ("epoch_lr", "step", "samples"):
            assert ra[key] == rb[key], key
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert rb[key] == pytest.approx(ra[key], rel=rel, abs=rel), key


def force_the_graph_step(monkeypatch) -> list:
    """Make train() take the graph path on the CPU: the capturable step, run eagerly. Returns a
    list that grows by one per step taken through it."""
    calls, make = [], cuda_graph.sgd_step

    def counting(*args):
        step = make(*args)
        return lambda *inputs: calls.append(1) or step(*inputs)

    monkeypatch.setattr(cuda_graph, "wanted", lambda cfg, device: True)
    monkeypatch.setattr(cuda_graph, "sgd_step", counting)
    return calls


@pytest.mark.parametrize("overrides", OPTIMISERS, ids=["sgd", "momentum-decay", "nesterov-l1-step"])
def test_the_capturable_step_trains_as_torch_optim_does(tmp_path, monkeypatch, overrides):
    cfg = compose_cfg("trainer.device=cpu", "data.augment=true", *overrides)
    plain = train.run(cfg, tmp_path / "plain")
    steps = force_the_graph_step(monkeypatch)
    captured = train.run(cfg, tmp_path / "graph")
    assert plain["status"] == captured["status"] == "completed"
    assert len(steps) == 12  # 2 epochs x 6 batches of 50, all through the capturable step
    assert plain["cuda_graph"] is captured["cuda_graph"] is False  # no capture on a CPU
    assert_same_curves(tmp_path / "plain", tmp_path / "graph", rel=1e-5)


@pytest.mark.parametrize("first_graph", [True, False], ids=["graph-then-plain", "plain-then-graph"])
def test_a_checkpoint_resumes_across_the_graph_and_the_plain_step(tmp_path, monkeypatch, first_graph):
    # Momentum buffers live in the optimizer's state in torch.optim's format, either way.
    over = ["trainer.device=cpu", "optim.momentum=0.9"]
    train.run(compose_cfg(*over), tmp_path / "straight")
    with monkeypatch.context() as m:
        steps = force_the_graph_step(m) if first_graph else []
        train.run(compose_cfg(*over, "trainer.epochs=1"), tmp_path / "mixed")
    (tmp_path / "mixed" / "summary.json").unlink()  # as if stopped after epoch 1
    config = json.loads((tmp_path / "mixed" / "config.json").read_text())
    config["trainer"]["epochs"] = 2
    (tmp_path / "mixed" / "config.json").write_text(json.dumps(config))
    with monkeypatch.context() as m:
        steps = steps if first_graph else force_the_graph_step(m)
        summary = train.run(compose_cfg(*over), tmp_path / "mixed")  # resumes on the other step
    assert summary["status"] == "completed" and len(steps) == 6  # one epoch of 6 steps each way
    assert_same_curves(tmp_path / "straight", tmp_path / "mixed", rel=1e-5)


def test_only_capturable_optimisers_are_captured_and_true_refuses_the_others():
    assert cuda_graph.capturable(compose_cfg()) is None
    assert "only sgd" in cuda_graph.capturable(compose_cfg("optim=adam"))
    assert "dampening" in cuda_graph.capturable(compose_cfg("+optim.dampening=0.5"))
    cpu = torch.device("cpu")
    assert not cuda_graph.wanted(compose_cfg(), cpu)  # the CPU runs the plain step
    assert not cuda_graph.wanted(compose_cfg("optim=adam"), torch.device("cuda"))  # auto: plain
    assert not cuda_graph.wanted(compose_cfg("trainer.cuda_graph=false"), torch.device("cuda"))
    assert cuda_graph.wanted(compose_cfg(), torch.device("cuda"))
    with pytest.raises(validate.ConfigError, match=r"trainer.cuda_graph=true cannot capture .*optim=adam"):
        validate.check(compose_cfg("optim=adam", "trainer.cuda_graph=true"))
    for bad in ("yes", "0", "1"):  # 0 and 1 are not false and true
        with pytest.raises(validate.ConfigError, match=r"trainer.cuda_graph=.* is invalid: allowed values"):
            validate.check(compose_cfg(f"trainer.cuda_graph={bad}"))
    assert "dampening" in fused.fusable([compose_cfg("+optim.dampening=0.5"), compose_cfg()])


def test_the_runs_cuda_device_is_made_current_with_its_index(monkeypatch):
    # Streams and capture act on the current device: cuda:1 must not capture on cuda:0.
    made_current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    assert train.pick_device("cuda:1") == torch.device("cuda", 1)
    assert train.pick_device("auto") == train.pick_device("cuda") == torch.device("cuda", 0)
    assert made_current == [torch.device("cuda", 1)] + [torch.device("cuda", 0)] * 2
    assert train.pick_device("cpu") == torch.device("cpu") and len(made_current) == 3


def test_replay_off_calls_the_function_every_time():
    calls = []
    replay = cuda_graph.Replay(lambda x: calls.append(1) or x * 2, enabled=False)
    for i in range(5):
        assert replay(torch.full((3,), float(i))).tolist() == [2.0 * i] * 3
    assert len(calls) == 5 and replay.graph is None


def test_a_failed_capture_trains_on_eagerly_unless_the_graph_is_required(monkeypatch):
    def no_capture(self, inputs):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(cuda_graph.Replay, "_capture", no_capture)
    monkeypatch.setattr(cuda_graph.Replay, "_on_side_stream", lambda self, inputs: self.fn(*inputs))
    auto = cuda_graph.Replay(lambda x: x + 1, enabled=True)
    outs = [auto(torch.tensor([float(i)])).item() for i in range(6)]
    assert outs == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # every step ran, the 4th through the fallback
    assert auto.enabled is False and auto.graph is None
    required = cuda_graph.Replay(lambda x: x + 1, enabled=True, required=True)
    for i in range(cuda_graph.WARMUP_CALLS):
        required(torch.tensor([float(i)]))
    with pytest.raises(RuntimeError, match="stream is capturing"):
        required(torch.tensor([0.0]))


@cuda
def test_replay_captures_after_warmup_and_runs_other_shapes_eagerly():
    state = torch.zeros(4, device="cuda")

    def fn(x):
        state.add_(x)  # in-place state, as parameters are
        return state * 1.0

    replay = cuda_graph.Replay(fn, enabled=True)
    total = torch.zeros(4, device="cuda")
    for _ in range(8):
        x = torch.randn(4, device="cuda")
        total += x
        out = replay(x)
        torch.testing.assert_close(out, total)
    assert replay.graph is not None  # captured after WARMUP_CALLS, replayed since
    graph = replay.graph
    other = torch.randn(1, device="cuda")  # another shape (a short last batch) runs eagerly
    torch.testing.assert_close(replay(other), total + other)
    torch.testing.assert_close(replay(x), total + other + x)  # and the graph still replays
    assert replay.graph is graph


@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_on_cuda_the_replayed_graph_matches_the_eager_step(tmp_path, precision):
    # 320 images in batches of 50: a short last batch of 20 after the capture, run eagerly
    over = [
        "data.generated_train=320",
        "data.augment=true",
        "optim.momentum=0.9",
        f"trainer.precision={precision}",
    ]
    eager = train.run(compose_cfg(*over, "trainer.cuda_graph=false"), tmp_path / "eager")
    graph = train.run(compose_cfg(*over, "trainer.cuda_graph=true"), tmp_path / "graph")
    assert eager["cuda_graph"] is False and graph["cuda_graph"] is True
    assert_same_curves(tmp_path / "eager", tmp_path / "graph", rel=1e-3 if precision == "fp32" else 2e-2)


@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_on_cuda_fused_trials_replayed_match_them_eager(tmp_path, precision):
    # The fused step captured (with bf16's autocast inside) trains as the same step run eagerly.
    trials = [["lr=0.1"], ["lr=0.05", "optim.momentum=0.9"]]
    over = ["data.generated_train=320", "data.augment=true", f"trainer.precision={precision}"]
    for graph in ("false", "true"):
        cfgs = [compose_cfg(*over, f"trainer.cuda_graph={graph}", *t) for t in trials]
        summaries = fused.run_group(cfgs, [tmp_path / graph / str(i) for i in range(2)], [[]] * 2, [0, 1])
        assert [(s["status"], s["cuda_graph"]) for s in summaries] == [("completed", graph == "true")] * 2
    for i in range(2):
        assert_same_curves(
            tmp_path / "false" / str(i), tmp_path / "true" / str(i), rel=1e-3 if precision == "fp32" else 2e-2
        )


@pytest.mark.parametrize(
    "hyper",
    [{}, {"momentum": 0.9, "weight_decay": 5e-4}, {"momentum": 0.5, "nesterov": True, "weight_decay": 1e-3}],
    ids=["sgd", "momentum-decay", "nesterov"],
)
def test_sgd_update_is_torch_optim_sgd_bit_for_bit(hyper):
    """The one SGD update (solo, captured, fused) computes torch.optim.SGD's numbers exactly
    with a number as its rate, and reads a tensor rate (a graph's, per trial) at run time."""
    torch.manual_seed(0)
    ours = [torch.randn(5, 3), torch.randn(7)]
    theirs = [p.clone().requires_grad_() for p in ours]
    optimizer = torch.optim.SGD(theirs, lr=0.1, **hyper)
    velocity = [None, None] if hyper.get("momentum") else []
    for lr in (0.1, 0.05, 0.02):
        grads = [torch.randn_like(p) for p in ours]
        for p, g in zip(theirs, grads, strict=True):
            p.grad = g.clone()
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        cuda_graph.sgd_update(ours, grads, velocity, lr, **hyper)
        for a, b in zip(ours, theirs, strict=True):
            assert torch.equal(a, b.detach())
    stacked = torch.stack([ours[0], ours[0]])  # two trials, one rate each: trial 1 at rate 0 stays
    before = stacked.clone()
    cuda_graph.sgd_update([stacked], [torch.ones_like(stacked)], [], torch.tensor([0.5, 0.0]))
    assert torch.equal(stacked[0], before[0] - 0.5) and torch.equal(stacked[1], before[1])


def test_solo_and_fused_steps_update_through_the_one_sgd_update(tmp_path, monkeypatch):
    calls, real = [], cuda_graph.sgd_update
    monkeypatch.setattr(cuda_graph, "sgd_update", lambda *a, **k: calls.append(1) or real(*a, **k))
    train.run(compose_cfg("trainer.epochs=1", "optim.momentum=0.9"), tmp_path / "solo")
    assert len(calls) == 6  # one epoch of 6 batches, eager on the CPU
    cfgs = [compose_cfg("trainer.epochs=1", f"lr={lr}") for lr in (0.1, 0.05)]
    fused.run_group(cfgs, [tmp_path / "a", tmp_path / "b"], [[], []], [0, 1])
    assert len(calls) == 12
    train.run(compose_cfg("trainer.epochs=1", "optim=adam"), tmp_path / "adam")
    assert len(calls) == 12  # another optimizer steps with torch.optim's own update
