"""Memory layout of the lecture's convnet step, side by side: contiguous (NCHW) vs channels_last (NHWC).

    python bench/bench_layout.py [--threads N] [--steps 40]

Times a training step at batch 100 and an evaluation forward at batch 1000, on the CPU (or the
GPU when there is one), for both layouts in one run, and prints the ratios. This is the
measurement behind `trainer.channels_last: auto` (on for the CPU).
"""

import argparse
import time

import torch
import torch.nn.functional as F

from sweeper.models import ConvNet


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

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(5):  # warm-up: kernel selection, allocator
        step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    train_ms = (time.perf_counter() - t) / steps * 1e3
    with torch.inference_mode():
        model(x_eval)
        sync()
        t = time.perf_counter()
        for _ in range(5):
            model(x_eval)
        sync()
        eval_ms = (time.perf_counter() - t) / 5 * 1e3
    return train_ms, eval_ms


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {args.threads} threads"
    plain = measure(torch.contiguous_format, device, args.steps)
    nhwc = measure(torch.channels_last, device, args.steps)
    print(f"lecture convnet on {name}")
    print(f"train step (batch 100):   NCHW {plain[0]:7.1f} ms   channels_last {nhwc[0]:7.1f} ms   speed-up {plain[0] / nhwc[0]:.2f}x")
    print(f"eval forward (batch 1000): NCHW {plain[1]:7.1f} ms   channels_last {nhwc[1]:7.1f} ms   speed-up {plain[1] / nhwc[1]:.2f}x")
    print(f"est. CIFAR-10 epoch (500 steps + 60k eval): NCHW {(plain[0] * 500 + plain[1] * 60) / 1e3:.1f} s, channels_last {(nhwc[0] * 500 + nhwc[1] * 60) / 1e3:.1f} s")


if __name__ == "__main__":
    main()
