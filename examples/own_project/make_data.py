"""Writes the example's data set: 1-channel (mode "L") 28x28 PNG images of five shapes.

    python make_data.py [--out data] [--train-per-class 100] [--test-per-class 20] [--seed 0]

gives out/train/<class>/*.png and out/test/<class>/*.png, an ImageFolder tree, for the classes
circle, cross, square, stripes and triangle. Each image jitters the shape's position, size and
brightness and adds pixel noise, all drawn from --seed, so the same arguments write the same files.
A second call with the same arguments leaves the files as they are; other arguments into an
existing dir are refused rather than mixing two data sets.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 28
CLASSES = ("circle", "cross", "square", "stripes", "triangle")
MANIFEST = "shapes.json"  # the arguments that wrote the dir


def _draw(shape: str, rng: np.random.Generator) -> Image.Image:
    background = int(rng.integers(0, 60))
    image = Image.new("L", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(image)
    ink = int(rng.integers(150, 256))
    r = float(rng.uniform(6, 10))  # half the shape's extent
    cx, cy = rng.uniform(r + 1, SIZE - r - 1, size=2)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=ink)
    elif shape == "square":
        draw.rectangle(box, fill=ink)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=ink)
    elif shape == "cross":
        arm = max(1.0, r / 3)
        draw.rectangle((cx - r, cy - arm, cx + r, cy + arm), fill=ink)
        draw.rectangle((cx - arm, cy - r, cx + arm, cy + r), fill=ink)
    else:  # stripes: horizontal bars across the box
        step = int(rng.integers(3, 5))
        for y in range(int(cy - r), int(cy + r), step):
            draw.line((cx - r, y, cx + r, y), fill=ink, width=max(1, step // 2))
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 20, (SIZE, SIZE))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")


def write(out: Path, train_per_class: int = 100, test_per_class: int = 20, seed: int = 0) -> Path:
    """Write the tree into `out` (see the module's doc) and return it."""
    arguments = {"train_per_class": train_per_class, "test_per_class": test_per_class, "seed": seed}
    manifest = out / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()) == arguments:
        return out  # already written by the same arguments: the same files
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(
            f"{out} already holds other files (written with {manifest.read_text().strip() if manifest.is_file() else 'no ' + MANIFEST}); "
            "pass another --out, or move it aside"
        )
    # One stream per (split, class), so a class's images do not depend on the other counts.
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, shape in enumerate(CLASSES):
            rng = np.random.default_rng([seed, split == "test", label])
            folder = out / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                _draw(shape, rng).save(folder / f"{i:04d}.png")
    manifest.write_text(json.dumps(arguments) + "\n")  # last: a dir without it is incomplete
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("data"), help="the tree's root (default: %(default)s)"
    )
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        out = write(args.out, args.train_per_class, args.test_per_class, args.seed)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = len(CLASSES) * (args.train_per_class + args.test_per_class)
    print(f"{out}: {n} images, 1x{SIZE}x{SIZE}, classes {', '.join(CLASSES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
