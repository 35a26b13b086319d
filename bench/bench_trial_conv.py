"""The fused trials' convolution (each trial's filters over its own channels), three ways, side by side.

    python bench/bench_trial_conv.py [--trials 6] [--steps 200] [--profile]

sweeper/stacked.py computes T trials' convolutions as one grouped convolution (groups = T).
Grouped kernels are often slower per flop than dense ones, so this times forward + backward
(input and weight gradients) at the lecture convnet's second layer (32 -> 64 channels, 5x5,
9x9 maps, batch 100) computed three ways, after checking that they agree:

  grouped  F.conv2d(x, w, groups=T)                     what the framework runs
  unfold   im2col (F.unfold), then one matmul batched over the trials
  loop     T dense convolutions, one per trial

plus, for scale, the first layer (3 -> T*32 filters over the batch the trials share: one dense
convolution, weight gradient only). On CUDA each is replayed as a CUDA graph, as the framework's
step is; on the CPU it runs eagerly. Both memory layouts. With --profile it also prints the
kernel table of the framework's whole fused step for T trials (eager, so each kernel shows).
It prints times and ratios; it asserts only that the three ways agree.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from sweeper.cuda_graph import Replay


def grouped(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [B, T*C, H, W], w [T, O, C, k, k] -> [B, T*O, H-k+1, W-k+1]"""
    return F.conv2d(x, w.flatten(0, 1), groups=w.shape[0])


def unfold(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    n_trials, out_c, in_c, k, _ = w.shape
    b, h = x.shape[0], x.shape[2] - k + 1
    cols = F.unfold(x, k)  # [B, T*C*k*k, L]: trial t's columns are one block, as w's (C, k, k) order
    cols = cols.view(b, n_trials, in_c * k * k, -1).permute(1, 2, 0, 3).reshape(n_trials, in_c * k * k, -1)
    out = torch.bmm(w.reshape(n_trials, out_c, -1), cols)  # [T, O, B*L]
    return out.view(n_trials, out_c, b, h, h).permute(2, 0, 1, 3, 4).reshape(b, n_trials * out_c, h, h)


def loop(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.cat(
        [F.conv2d(xt, wt) for xt, wt in zip(x.chunk(w.shape[0], 1), w.unbind(0), strict=True)], 1
    )


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, inputs, device, steps: int) -> float:
    """ms per call, after 10 warm-up calls (and, on CUDA, the capture)."""
    call = Replay(fn, enabled=device.type == "cuda")
    for _ in range(10):
        call(*inputs)
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        call(*inputs)
    sync(device)
    return (time.perf_counter() - t) / steps * 1e3


def forward_backward(conv, needs_input_grad: bool = True):
    """conv's forward and backward as one call returning its gradients, flattened into one tensor."""

    def fn(x, w, grad_out):
        w = w.detach().requires_grad_()
        x = x.detach().requires_grad_(needs_input_grad)
        out = conv(x, w)
        wrt = [x, w] if needs_input_grad else [w]
        return torch.cat([g.flatten() for g in torch.autograd.grad(out, wrt, grad_out)])

    return fn


def profile_fused_step(n_trials: int, device, layout) -> None:
    import copy

    from torch.func import stack_module_state
    from torch.profiler import ProfilerActivity, profile

    from sweeper import fused, stacked
    from sweeper.models import ConvNet

    nets = [ConvNet(in_channels=3, image_size=32, num_classes=10).to(device, memory_format=layout)]
    nets += [copy.deepcopy(nets[0]) for _ in range(n_trials - 1)]
    params, buffers = stack_module_state(nets)
    wide = stacked.widen(copy.deepcopy(nets[0]).to("meta"), n_trials)
    zeros = [0.0] * n_trials
    _, step, _ = fused.trial_sgd(wide, params, buffers, zeros, [False] * n_trials, zeros, 0.0)
    x = torch.randn(100, 3, 32, 32, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (100,), device=device)
    lr = torch.full((n_trials,), 0.01, device=device)
    for _ in range(5):
        step(x, y, lr)
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(20):
            step(x, y, lr)
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"fused step, {n_trials} trials, 20 eager steps, by {key}:")
    print(prof.key_averages().table(sort_by=key, row_limit=18))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = args.steps if device.type == "cuda" else max(args.steps // 10, 5)
    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    )
    n, b = args.trials, args.batch
    print(
        f"{n} trials' convolution, forward + backward, batch {b}, on {name} ({'CUDA graph' if device.type == 'cuda' else 'eager'})"
    )
    torch.manual_seed(0)
    for layout_name, layout in (("channels_last", torch.channels_last), ("NCHW", torch.contiguous_format)):
        # layer 2: 32 -> 64 channels per trial, 5x5, over 9x9 maps (after the 3x3 max-pool)
        x = torch.randn(b, n * 32, 9, 9, device=device).contiguous(memory_format=layout)
        w = torch.randn(n, 64, 32, 5, 5, device=device) * 0.05
        g = torch.randn(b, n * 64, 5, 5, device=device).contiguous(memory_format=layout)
        outs = [f(x, w) for f in (grouped, unfold, loop)]
        for other in outs[1:]:  # the three ways compute the same convolution
            torch.testing.assert_close(other, outs[0], rtol=1e-3, atol=1e-3)
        times = {
            f.__name__: time_ms(forward_backward(f), (x, w, g), device, steps)
            for f in (grouped, unfold, loop)
        }
        # layer 1, for scale: the shared batch through all trials' filters, one dense convolution
        x1 = torch.randn(b, 3, 32, 32, device=device).contiguous(memory_format=layout)
        w1 = torch.randn(n * 32, 3, 5, 5, device=device)
        g1 = torch.randn(b, n * 32, 28, 28, device=device).contiguous(memory_format=layout)
        first = time_ms(
            forward_backward(lambda x_, w_: F.conv2d(x_, w_), needs_input_grad=False),
            (x1, w1, g1),
            device,
            steps,
        )
        shown = "   ".join(f"{k} {v:7.3f} ms ({times['grouped'] / v:.2f}x)" for k, v in times.items())
        print(f"  {layout_name:<14} layer 2: {shown}   | layer 1 (dense, shared batch) {first:7.3f} ms")
    if args.profile:
        profile_fused_step(n, device, torch.channels_last)


if __name__ == "__main__":
    main()
