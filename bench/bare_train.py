"""A bare hand-written device-resident loop, as a reference for bench/bench_train.py: all runs of
the grid in one process, data normalised once on the device, batches by indexing a permutation,
full train/test evaluation each epoch -- and nothing else (no config, no records, no checkpoints).

    python bench/bare_train.py --data DIR --lrs 0.2,0.1,0.01 --epochs 2 [--lr2s 0.07,0.05 --switch 1]
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sweeper import host_memory
from sweeper.models import ConvNet


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--lrs", default="")
    p.add_argument("--lr2s", default="")
    p.add_argument("--switch", type=int, default=0)
    p.add_argument("--epochs", type=int, required=True)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":  # the framework's CPU allocator setting: the ratio is then its overhead alone
        host_memory.keep_freed_buffers()
    # channels_last on CPU, as the framework does there: this measures the framework's overhead
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    arrays = {}
    for split in ("train", "test"):
        with np.load(Path(args.data) / f"{split}.npz") as z:
            arrays[split] = (
                torch.from_numpy(z["x"]).permute(0, 3, 1, 2).to(device),
                torch.from_numpy(z["y"]).to(device),
            )
    tx, ty = arrays["train"]
    vx, vy = arrays["test"]
    mean = tx.float().mean((0, 2, 3), keepdim=True)
    std = tx.float().std((0, 2, 3), keepdim=True)
    tx = ((tx.float() - mean) / std).contiguous(memory_format=layout)
    vx = ((vx.float() - mean) / std).contiguous(memory_format=layout)
    protocols = [(float(lr), None) for lr in args.lrs.split(",") if lr] + [
        (0.1, float(lr2)) for lr2 in args.lr2s.split(",") if lr2
    ]
    epochs_s = 0.0  # training + evaluation epochs only, as the framework's epoch_time_s
    for lr, lr2 in protocols:
        torch.manual_seed(0)
        model = ConvNet(in_channels=3, image_size=32, num_classes=10).to(device, memory_format=layout)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        for epoch in range(1, args.epochs + 1):
            t_epoch = time.perf_counter()
            if lr2 is not None and epoch == args.switch + 1:
                opt.param_groups[0]["lr"] = lr2
            model.train()
            perm = torch.randperm(len(ty), device=device)
            for i in range(0, len(ty), 100):
                idx = perm[i : i + 100]
                loss = F.cross_entropy(model(tx[idx]), ty[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            model.eval()
            with torch.inference_mode():
                for x, y in ((tx, ty), (vx, vy)):
                    chunks = [
                        F.cross_entropy(model(x[i : i + 1000]), y[i : i + 1000], reduction="none")
                        for i in range(0, len(y), 1000)
                    ]
                    torch.cat(chunks).mean().item()
            epochs_s += time.perf_counter() - t_epoch
    print(f"epochs_s={epochs_s:.4f}")


if __name__ == "__main__":
    main()
