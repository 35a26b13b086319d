"""Memory layout of the lecture's convnet step, side by side: contiguous (NCHW) vs channels_last (NHWC).

    python bench/bench_layout.py [--threads N] [--steps 40] [--trials 1,3,6]

On a GPU it also times the framework's own step (sweeper/cuda_graph.py), eager and replayed as
a CUDA graph, in fp32 and bf16, for both layouts. Everywhere it times the fused trials' step
(sweeper/fused.py: T trials in one wide net) per trial, for each T of --trials, against the same
step with one trial (when --trials starts with 1) -- on a GPU replayed as a CUDA graph, as the
framework runs it.

Times a training step at batch 100 and an evaluation forward at batch 1000, on the CPU (or the
GPU when there is one), for both layouts in one run, and prints the ratios. This is the
measurement behind `trainer.channels_last: auto` (on for the CPU).
"""

import argparse
import time

import torch
import torch.nn.functional as F

from sweeper import host_memory
from sweeper.models import ConvNet


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_step(step, device, layout, lr: torch.Tensor, steps: int) -> float:
    """ms per call of step(x, y, lr) on batches of 100, after 10 warm-up calls (and the capture)."""
    xs = torch.randn(8, 100, 3, 32, 32, device=device)  # a few batches, rotated: not one cached input
    ys = torch.randint(0, 10, (8, 100), device=device)
    loss_sum = torch.zeros_like(lr)
    for i in range(10):
        loss_sum += step(xs[i % 8].contiguous(memory_format=layout), ys[i % 8], lr)
    sync(device)
    t = time.perf_counter()
    for i in range(steps):
        loss_sum += step(xs[i % 8].contiguous(memory_format=layout), ys[i % 8], lr)
    sync(device)
    assert torch.isfinite(loss_sum).all()
    return (time.perf_counter() - t) / steps * 1e3


def time_eval(forward, x, device) -> float:
    """ms per evaluation forward(x), mean of 5 after one warm-up call."""
    with torch.inference_mode():
        forward(x)
        sync(device)
        t = time.perf_counter()
        for _ in range(5):
            forward(x)
        sync(device)
    return (time.perf_counter() - t) / 5 * 1e3


def measure(layout, device, steps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = ConvNet(in_channels=3, image_size=32, num_classes=10).to(device, memory_format=layout)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(100, 3, 32, 32, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (100,), device=device)
    x_eval = torch.randn(1000, 3, 32, 32, device=device).contiguous(memory_format=layout)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):  # warm-up: kernel selection, allocator
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    train_ms = (time.perf_counter() - t) / steps * 1e3
    return train_ms, time_eval(model, x_eval, device)


def measure_step(layout, precision: str, graph: bool, steps: int) -> float:
    """ms per training step through the framework's step function, eager or CUDA-graph replayed."""
    from sweeper.cuda_graph import Replay, sgd_step
    from sweeper.train import autocast_for

    torch.manual_seed(0)
    model = ConvNet(in_channels=3, image_size=32, num_classes=10).to("cuda", memory_format=layout)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = Replay(sgd_step(model, opt, autocast_for(precision, "cuda"), 0.0), enabled=graph)
    return time_step(step, torch.device("cuda"), layout, torch.tensor(0.1, device="cuda"), steps)


def measure_trials(n_trials: int, device, layout, steps: int, precision: str = "fp32") -> tuple[float, float]:
    """ms per training step of n_trials fused trials (one batch shared, as one seed gives), and
    ms per evaluation forward of all of them at batch 1000 (eager, as the framework runs it)."""
    import copy

    from torch.func import stack_module_state

    from sweeper import fused, stacked
    from sweeper.cuda_graph import Replay

    nets = []
    for seed in range(n_trials):
        torch.manual_seed(seed)
        nets.append(ConvNet(in_channels=3, image_size=32, num_classes=10).to(device, memory_format=layout))
    params, buffers = stack_module_state(nets)
    wide = stacked.widen(copy.deepcopy(nets[0]).to("meta"), n_trials)
    zeros = [0.0] * n_trials
    from sweeper.train import autocast_for

    autocast = autocast_for(precision, device.type)
    forward, step_fn, _ = fused.trial_sgd(
        wide, params, buffers, zeros, [False] * n_trials, zeros, 0.0, autocast
    )
    step = Replay(step_fn, enabled=device.type == "cuda")
    step_ms = time_step(step, device, layout, torch.full((n_trials,), 0.01, device=device), steps)
    x_eval = torch.randn(1000, 3, 32, 32, device=device).contiguous(memory_format=layout)

    def eval_forward(x):
        with autocast():
            return forward(x)

    return step_ms, time_eval(eval_forward, x_eval, device)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--trials", default="1,3,6", help="fused trial counts to time (comma-separated)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        host_memory.keep_freed_buffers()  # as every CPU run of the framework does
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {args.threads} threads"
    plain = measure(torch.contiguous_format, device, args.steps)
    nhwc = measure(torch.channels_last, device, args.steps)
    print(f"lecture convnet on {name}")
    print(
        f"train step (batch 100):   NCHW {plain[0]:7.1f} ms   channels_last {nhwc[0]:7.1f} ms   speed-up {plain[0] / nhwc[0]:.2f}x"
    )
    print(
        f"eval forward (batch 1000): NCHW {plain[1]:7.1f} ms   channels_last {nhwc[1]:7.1f} ms   speed-up {plain[1] / nhwc[1]:.2f}x"
    )
    print(
        f"est. CIFAR-10 epoch (500 steps + 60k eval): NCHW {(plain[0] * 500 + plain[1] * 60) / 1e3:.1f} s, channels_last {(nhwc[0] * 500 + nhwc[1] * 60) / 1e3:.1f} s"
    )
    if device.type == "cuda":  # the step as the framework runs it: eager, and replayed as a CUDA graph
        print("framework step (batch 100), ms:  eager   graph   graph speed-up")
        for precision in ("fp32", "bf16"):
            for name, layout in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
                eager = measure_step(layout, precision, False, args.steps * 5)
                graph = measure_step(layout, precision, True, args.steps * 5)
                print(f"  {precision} {name:<14} {eager:7.3f} {graph:7.3f}   {eager / graph:.2f}x")

    # Fused trials, channels_last as the framework runs them (auto: on the CPU, and in a graph);
    # on a GPU NCHW too, since grouped convolutions may pick other kernels there.
    how = "CUDA graph" if device.type == "cuda" else "eager"
    layouts = [("channels_last", torch.channels_last)]
    if device.type == "cuda":
        layouts.append(("NCHW", torch.contiguous_format))
    for name, layout in layouts:
        print(
            f"fused trials' step (batch 100, shared batches, {name}, {how}) and eval forward (batch 1000, eager):"
        )
        one = None
        for n in (int(t) for t in args.trials.split(",")):
            ms, eval_ms = measure_trials(n, device, layout, args.steps * (5 if device.type == "cuda" else 1))
            if n == 1:
                one = ms
            ratio = f"   {one / (ms / n):.2f}x the throughput of the 1-trial step" if one and n > 1 else ""
            print(
                f"  {n} trials: {ms:7.3f} ms per step, {ms / n:7.3f} ms per trial{ratio};  eval {eval_ms:7.3f} ms"
            )

    if device.type == "cuda":  # trainer.precision=bf16: autocast around the wide net's forward
        n = max(int(t) for t in args.trials.split(","))
        ms, eval_ms = measure_trials(n, device, torch.channels_last, args.steps * 5, "bf16")
        print(
            f"  {n} trials, bf16, channels_last: {ms:7.3f} ms per step, {ms / n:7.3f} ms per trial;  eval {eval_ms:7.3f} ms"
        )


if __name__ == "__main__":
    main()
