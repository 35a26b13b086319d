"""The common recipe, as a baseline for bench/bench_train.py: one process per run, a torchvision
Dataset with per-sample transforms (PIL image -> ToTensor -> Normalize) and a DataLoader.

    python bench/naive_train.py --data DIR --lr 0.1 --epochs 2 [--lr2 0.05 --switch 1]

DIR holds train.npz / test.npz (uint8 NHWC images, labels) written by bench_train.py. The model
is the same ConvNet the framework trains, so only the data path and the loop differ.
"""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

from sweeper.models import ConvNet


def dataset(path, transform):
    # torchvision's CIFAR10 class with its real __getitem__ (PIL + transform per sample); the
    # arrays are set directly because its md5 check refuses anything but the official files.
    ds = torchvision.datasets.CIFAR10.__new__(torchvision.datasets.CIFAR10)
    torchvision.datasets.VisionDataset.__init__(ds, str(path.parent), transform=transform)
    with np.load(path) as z:
        ds.data, ds.targets = z["x"], z["y"].tolist()
    ds.train = path.stem == "train"
    return ds


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--lr2", type=float)
    p.add_argument("--switch", type=int)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    from pathlib import Path

    root = Path(args.data)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with np.load(root / "train.npz") as z:
        mean = (z["x"].reshape(-1, 3).mean(0) / 255).tolist()
        std = (z["x"].reshape(-1, 3).std(0) / 255).tolist()
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    train_set, test_set = dataset(root / "train.npz", tf), dataset(root / "test.npz", tf)
    kw = dict(num_workers=args.workers, pin_memory=device == "cuda", persistent_workers=args.workers > 0)
    train_loader = DataLoader(train_set, batch_size=100, shuffle=True, **kw)
    eval_loaders = [DataLoader(s, batch_size=1000, **kw) for s in (train_set, test_set)]
    torch.manual_seed(0)
    model = ConvNet(in_channels=3, image_size=32, num_classes=10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    t0 = time.perf_counter()
    epochs_s = 0.0  # training + evaluation epochs only, as the framework's epoch_time_s
    for epoch in range(1, args.epochs + 1):
        t_epoch = time.perf_counter()
        if args.lr2 is not None and epoch == args.switch + 1:
            for g in opt.param_groups:
                g["lr"] = args.lr2
        model.train()
        running = 0.0
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running += loss.item()
        model.eval()
        results = []
        with torch.no_grad():
            for loader in eval_loaders:
                total, correct, n = 0.0, 0, 0
                for x, y in loader:
                    x, y = x.to(device), y.to(device)
                    out = model(x)
                    total += F.cross_entropy(out, y, reduction="sum").item()
                    correct += (out.argmax(1) == y).sum().item()
                    n += len(y)
                results.append((total / n, correct / n))
        epochs_s += time.perf_counter() - t_epoch
        print(
            f"epoch {epoch} train_loss {results[0][0]:.4f} test_acc {results[1][1]:.4f} {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
    print(f"epochs_s={epochs_s:.4f}")


if __name__ == "__main__":
    main()
