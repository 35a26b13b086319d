"""A generated, CIFAR-shaped 10-class data set (3x32x32 uint8): no download, ready in a second."""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from sweeper import data_cache


def _smooth_field(g: torch.Generator, n: int, channels: int, low: int, size: int) -> torch.Tensor:
    """Blobs of colour at scale size/low: random low-resolution noise upsampled bilinearly."""
    field = torch.randn(n, channels, low, low, generator=g)
    return F.interpolate(field, size=(size, size), mode="bilinear", align_corners=False)


# Images are generated in chunks of this many, each from its own stream: a split's first n images
# are the same whatever its size, and the test set does not depend on the training set's size.
SYNTHETIC_CHUNK = 1000
# Raise when `synthetic` makes other images from the same arguments: older caches are then unused.
SYNTHETIC_VERSION = 1


def _stream(seed: int, *names) -> torch.Generator:
    h = hashlib.sha256("|".join(map(str, (seed, *names))).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little"))


def synthetic(n_train: int, n_test: int, seed: int, label_noise: float, size: int = 32):
    """A learnable 10-class data set of CIFAR's shape, generated deterministically from `seed`.

    Each class has a prototype (smooth colour blobs plus an oriented grating). An image is its
    class prototype, randomly shifted and scaled, blended with a random other class's prototype,
    plus smooth and pixel noise. A `label_noise` fraction of the training labels is replaced by
    random classes: a net that fits those has memorised, which is what makes test loss rise.
    """
    g = _stream(seed, "prototypes")
    k = 10
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    angles = torch.rand(k, generator=g) * torch.pi
    freqs = 2 * torch.pi * (0.08 + 0.12 * torch.rand(k, generator=g))
    colours = torch.randn(k, 3, 1, 1, generator=g)
    grating = torch.sin(
        freqs[:, None, None] * (xx * torch.cos(angles)[:, None, None] + yy * torch.sin(angles)[:, None, None])
    )
    protos = 0.8 * _smooth_field(g, k, 3, 4, size) + 0.6 * colours * grating[:, None]

    def chunk(g: torch.Generator, noise: float):
        n = SYNTHETIC_CHUNK
        y = torch.randint(0, k, (n,), generator=g)
        other = (y + torch.randint(1, k, (n,), generator=g)) % k
        # Tuned so the lecture's convnet reaches ~0.6 test accuracy and then overfits.
        blend = 0.8 * torch.rand(n, 1, 1, 1, generator=g)
        scale = 0.35 + 0.5 * torch.rand(n, 1, 1, 1, generator=g)
        x = scale * protos[y] + blend * protos[other]
        shifts = torch.randint(-4, 5, (n, 2), generator=g)
        # Roll each image by its own shift: one gather.
        rows = (torch.arange(size)[None, :] - shifts[:, :1]) % size
        cols = (torch.arange(size)[None, :] - shifts[:, 1:]) % size
        x = x[
            torch.arange(n)[:, None, None, None],
            torch.arange(3)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
        x = x + 0.8 * _smooth_field(g, n, 3, 8, size) + 0.6 * torch.randn(n, 3, size, size, generator=g)
        pixels = (128 + 45 * x).round().clamp(0, 255).to(torch.uint8)
        wrong = torch.rand(n, generator=g) < noise
        return pixels, torch.where(wrong, torch.randint(0, k, (n,), generator=g), y)

    def split(name: str, n: int, noise: float):
        # Whole chunks, cut to n: a chunk's first m images do not depend on how many are kept.
        parts = [chunk(_stream(seed, name, c), noise) for c in range(-(-int(n) // SYNTHETIC_CHUNK))]
        if not parts:
            return torch.empty(0, 3, size, size, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
        return torch.cat([x for x, _ in parts])[:n], torch.cat([y for _, y in parts])[:n]

    train_x, train_y = split("train", n_train, label_noise)
    test_x, test_y = split("test", n_test, 0.0)
    return train_x, train_y, test_x, test_y


CLASSES = [f"class{i}" for i in range(10)]


def synthetic_arrays(n_train: int, n_test: int, seed: int, label_noise: float, cache_dir) -> dict:
    """synthetic() as the data sources' arrays, generated once per machine, then read from
    cache_dir. Keyed by the arguments, SYNTHETIC_VERSION and torch's version (its random streams
    and interpolation define the images)."""
    key = f"{SYNTHETIC_VERSION}|{torch.__version__}|{n_train}|{n_test}|{seed}|{float(label_noise)!r}"

    def make():
        arrays = synthetic(n_train, n_test, seed, label_noise)
        return {**dict(zip(data_cache.ARRAY_KEYS, arrays, strict=True)), "classes": CLASSES}

    return data_cache.cached(cache_dir, "synthetic", key, lambda: key, make)


def synthetic_cached(n_train: int, n_test: int, seed: int, label_noise: float, cache_dir):
    """synthetic_arrays() as (train_x, train_y, test_x, test_y)."""
    arrays = synthetic_arrays(n_train, n_test, seed, label_noise, cache_dir)
    return tuple(arrays[k] for k in data_cache.ARRAY_KEYS)
