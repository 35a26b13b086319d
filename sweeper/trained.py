"""A finished run's model, for use outside the sweep.

    from sweeper import load_model
    trained = load_model("outputs/multirun/2026-01-02/10-00-00/3")
    labels = trained.predict(images_uint8)            # (N, C, H, W) uint8 -> (N,) class indices
    names = [trained.classes[i] for i in labels]

The model is built from config.json (sweeper.build.model) with checkpoint.pt's weights, and its
input is described by summary.json's INPUT_FIELDS (docs/run-record.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sweeper import build
from sweeper import data as data_module
from sweeper.runlog import DamagedCheckpoint, RunLog

INPUT_FIELDS = ("input_shape", "classes", "normalize_mean", "normalize_std")


class NotLoadable(RuntimeError):
    """The run's model cannot be rebuilt; the message names the file at fault."""


def input_facts(data: data_module.Data) -> dict:
    """What summary.json keeps of the data to rebuild and feed the model without it: the image
    shape, the class names and the normalisation per channel in pixel units: x = (pixels - mean) / std
    (data.normalize=false: mean 0, std 255)."""
    return {
        "input_shape": list(data.train_x.shape[1:]),
        "classes": list(data.classes),
        "normalize_mean": data.mean.flatten().tolist(),
        "normalize_std": data.std.flatten().tolist(),
    }


@dataclass
class TrainedModel:
    """A run's trained module in eval mode, with what its input needs."""

    model: nn.Module
    classes: list[str]
    input_shape: tuple[int, int, int]  # (channels, height, width)
    mean: torch.Tensor  # (1, C, 1, 1) float32, pixel units, on `device`
    std: torch.Tensor
    epoch: int  # the checkpoint's: the run's last finished epoch
    config: DictConfig  # the run's config.json
    device: torch.device

    def preprocess(self, images) -> torch.Tensor:
        """uint8 pixels (N, C, H, W) or one image (C, H, W), a tensor or an array -> the
        normalised float32 batch the model was trained on, on the model's device."""
        x = torch.as_tensor(images)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            c, h, w = self.input_shape
            raise ValueError(
                f"images must be uint8 pixels (0-255) of shape (N, {c}, {h}, {w}); "
                f"got {str(x.dtype).removeprefix('torch.')} of shape {tuple(x.shape)}"
            )
        # The training's own normalisation (it reads .mean and .std): bitwise what evaluation saw.
        return data_module.prepare(x.to(self.device), self)

    @torch.inference_mode()
    def logits(self, images, batch_size: int | None = None) -> torch.Tensor:
        """The model's float32 outputs (N, len(classes)) for uint8 images, in batches of
        `batch_size` (default: the run's trainer.eval_batch_size), at the run's precision."""
        from sweeper.train import autocast_for  # train imports this module

        images = torch.as_tensor(images)
        if images.dim() == 3:
            images = images.unsqueeze(0)
        size = batch_size or int(self.config.trainer.eval_batch_size)
        autocast = autocast_for(self.config.trainer.precision, self.device.type)
        out = []
        for start in range(0, len(images), size):  # normalised per batch: a float copy of one batch only
            x = self.preprocess(images[start : start + size])
            with autocast():
                out.append(self.model(x).float())
        if not out:
            return self.preprocess(images).new_zeros((0, len(self.classes)))  # checks the shape too
        return torch.cat(out)

    def predict(self, images, batch_size: int | None = None) -> torch.Tensor:
        """The predicted class index (N,) of each uint8 image; `classes[i]` names it."""
        return self.logits(images, batch_size).argmax(1)


def load_model(run_dir, device="cpu") -> TrainedModel:
    """The trained model of the run in `run_dir`, in eval mode on `device`. NotLoadable, in one
    line naming the file at fault, for a run without weights, one not ended, or a damaged record."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NotLoadable(f"{run_dir}: no such run dir")
    record = RunLog(run_dir)
    config = _json_object(record, "config.json", "the run's config is needed to build its model")
    summary = _json_object(record, "summary.json", "the run has not ended: resume it, or wait for it")
    cfg = OmegaConf.create(config)
    if not record.checkpoint_path.exists():
        why = (
            "the run was trained with trainer.checkpoint=false, which keeps no weights"
            if OmegaConf.select(cfg, "trainer.checkpoint") is False
            else "no epoch of the run finished"
        )
        raise NotLoadable(f"{record.checkpoint_path}: missing: {why}")
    facts = _input(summary, cfg, record.summary_path)
    try:
        checkpoint = record.load_checkpoint()  # checks the digest it was saved with
    except DamagedCheckpoint as err:
        raise NotLoadable(f"{record.checkpoint_path}: {err}") from err
    except OSError as err:  # the file system's trouble, not the file's
        raise NotLoadable(
            f"{record.checkpoint_path}: cannot be read ({data_module._described(err)})"
        ) from err
    if not isinstance(checkpoint.get("model"), dict):
        raise NotLoadable(f"{record.checkpoint_path}: holds no model weights (not a run's checkpoint)")
    channels, height, width = facts["input_shape"]
    # Building initialises weights from the global generator: the caller's random state is kept.
    with torch.random.fork_rng(devices=[]):
        try:
            size = height if height == width else (height, width)
            model = build.model(cfg, channels, size, len(facts["classes"]))
        except Exception as err:  # the user's model class gone or changed, an old config
            raise NotLoadable(
                f"{run_dir / 'config.json'}: its model does not build ({data_module._described(err)})"
            ) from err
    try:
        model.load_state_dict(checkpoint["model"])
    except Exception as err:  # missing or unexpected keys, other shapes: another model's weights
        raise NotLoadable(
            f"{record.checkpoint_path}: its weights do not fit the model config.json builds ({data_module._described(err)})"
        ) from err
    device = torch.device(device)
    stats = {
        k: torch.tensor(facts[f"normalize_{k}"], dtype=torch.float32, device=device) for k in ("mean", "std")
    }
    return TrainedModel(
        model=model.to(device).eval(),
        classes=list(facts["classes"]),
        input_shape=(channels, height, width),
        mean=stats["mean"].view(1, -1, 1, 1),
        std=stats["std"].view(1, -1, 1, 1),
        epoch=int(checkpoint.get("epoch", 0)),
        config=cfg,
        device=device,
    )


def _json_object(record: RunLog, name: str, why: str) -> dict:
    value = record.read_json(name)
    if name in record.damaged:
        raise NotLoadable(f"{record.dir / name}: damaged: {record.damaged[name]}")
    if value is None:
        raise NotLoadable(f"{record.dir / name}: missing: {why}")
    return value


def _input(summary: dict, cfg: DictConfig, path: Path) -> dict:
    """summary.json's input fields, checked; for a record without them, re-derived where that is
    exact (synthetic data: generated from its config)."""
    present = [k for k in INPUT_FIELDS if k in summary]
    if not present:
        if OmegaConf.select(cfg, "data.name") != "synthetic":
            raise NotLoadable(
                f"{path}: has no {', '.join(INPUT_FIELDS)} (a record from before they were kept), and "
                f"data.name={OmegaConf.select(cfg, 'data.name')} cannot be re-derived exactly from config.json: "
                "rerun the config to get a loadable record"
            )
        data_cfg = cfg.data.copy()
        data_cfg.cache_dir = None  # generated in this process, nothing written beside the record
        return input_facts(data_module.load(data_cfg))
    for key in INPUT_FIELDS:
        if key not in summary:
            raise NotLoadable(f"{path}: damaged: has {', '.join(present)} but no {key}")
    facts = {k: summary[k] for k in INPUT_FIELDS}
    shape, classes = facts["input_shape"], facts["classes"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(n, int) and n > 0 for n in shape)):
        raise NotLoadable(f"{path}: damaged: input_shape is {shape!r}, not [channels, height, width]")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise NotLoadable(f"{path}: damaged: classes is {classes!r}, not a list of class names")
    for key in ("normalize_mean", "normalize_std"):
        value = facts[key]
        if not (
            isinstance(value, list)
            and len(value) == shape[0]
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise NotLoadable(f"{path}: damaged: {key} is {value!r}, not one number per channel ({shape[0]})")
    return facts
