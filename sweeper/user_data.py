"""A user's data set by `_target_` in the data section: a callable returning (train, test), each a
pair of tensors (images uint8 (N, C, H, W) or float in [0, 1], labels) or a torch Dataset of
(image tensor/array/PIL image, label), materialised once into the uint8 cache.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from sweeper import data_cache
from sweeper.data_cache import DataError, _described

# PIL modes kept as one grey channel; every other mode (RGB, RGBA, P, CMYK, ...) becomes RGB.
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def pixels(image, rgb: bool = False) -> torch.Tensor:
    """A PIL image as (C, H, W) uint8: grey modes as 1 channel (unless `rgb`), any other as RGB."""
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(image.convert("L" if image.mode in GREY_MODES and not rgb else "RGB"))


# The data section's keys the loader reads; the others go to a user's `_target_`.
OWN_KEYS = ("_target_", "name", "cache_dir", "train_size", "val_size", "seed", "normalize", "augment")


_MEMO: dict[str, dict] = {}


def user_dataset(cfg) -> dict:
    """A user's `_target_` called with its keys, its (train, test) materialised once as uint8
    tensors and cached, keyed by the target, its arguments and its module file."""
    from hydra.utils import get_object

    kwargs = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in OWN_KEYS}
    target = cfg["_target_"]
    try:
        fn = get_object(target)
    except Exception as e:  # noqa: BLE001 -- an import error of the user's module, in one line
        raise DataError(f"data._target_={target} cannot be imported ({_described(e)})") from None
    # The user's module file (imported by get_object): an edit of it makes the data set again.
    module = getattr(sys.modules.get(getattr(fn, "__module__", None)), "__file__", None)
    key = f"{target}|{json.dumps(kwargs, sort_keys=True)}\n"
    key += data_cache.files_key([module] if module else [], Path("/"))

    def make():
        try:
            train, test = fn(**kwargs)
        except Exception as e:  # noqa: BLE001 -- the user's code: its error in one line
            raise DataError(f"data._target_={target} failed ({_described(e)})") from None
        arrays = {}
        for split, part in (("train", train), ("test", test)):
            where = f"data._target_={target}: its {split} set"
            arrays[f"{split}_x"], arrays[f"{split}_y"] = _materialised(part, where)
        classes = getattr(train, "classes", None)
        if classes is None:  # as many as the largest label says
            labels = torch.cat([arrays["train_y"], arrays["test_y"]])
            classes = range(int(labels.max()) + 1 if len(labels) else 0)
        classes = [str(c) for c in classes]
        if arrays["train_x"].shape[1:] != arrays["test_x"].shape[1:]:
            raise DataError(f"data._target_={target}: train images are {tuple(arrays['train_x'].shape[1:])}, test images {tuple(arrays['test_x'].shape[1:])}")  # fmt: skip
        return data_cache.labelled(arrays, classes, f"data._target_={target}")

    if key not in _MEMO:  # the pre-check asks for it per job, the load once more
        _MEMO.clear()  # the last data set only
        _MEMO[key] = data_cache.cached(cfg.get("cache_dir"), "user", target, lambda: key, make)
    return _MEMO[key]


def _as_uint8(x, where: str) -> torch.Tensor:
    """Images as uint8: uint8 as they are, floats in [0, 1] scaled to 0..255 and rounded."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise DataError(f"{where}: images are {x.dtype}, not uint8 or float in [0, 1]")
    if len(x) and (float(x.min()) < 0 or float(x.max()) > 1):
        raise DataError(
            f"{where}: float images must lie in [0, 1], found {float(x.min()):g}..{float(x.max()):g}"
        )
    return (x * 255).round().to(torch.uint8)


def _materialised(part, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, C, H, W) uint8, labels int64) of a pair of tensors or of a Dataset of
    (image, label) with images as tensors (C, H, W), arrays or PIL images."""
    if isinstance(part, tuple | list) and len(part) == 2 and all(isinstance(p, torch.Tensor) for p in part):
        x, y = _as_uint8(part[0], where), part[1]
        if x.dim() == 3:  # (N, H, W): grey
            x = x[:, None]
    elif hasattr(part, "__getitem__") and hasattr(part, "__len__"):
        images, labels = [], []
        for i in range(len(part)):
            image, label = part[i]
            if hasattr(image, "mode"):  # a PIL image
                image = pixels(image)
            image = _as_uint8(image, f"{where}, item {i}")
            images.append(image[None] if image.dim() == 2 else image)
            labels.append(int(label))
        if not images:
            raise DataError(f"{where} is empty")
        shapes = {tuple(im.shape) for im in images}
        if len(shapes) > 1:
            raise DataError(f"{where}: its images have several shapes ({', '.join(map(str, sorted(shapes)[:3]))}); all must have one")  # fmt: skip
        x, y = torch.stack(images), torch.tensor(labels)
    else:
        raise DataError(
            f"{where} is a {type(part).__name__}: give a pair (images, labels) of tensors or a torch Dataset"
        )
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"{where}: images are {tuple(x.shape)}, not (N, C, H, W) with 1 or 3 channels")
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.is_complex():
        raise DataError(f"{where}: labels are {y.dtype}, not integers")
    return x.contiguous(), y.to(torch.int64)
