"""Model zoo and checkpoints: build a model for a dataset, save it, load it back safely."""
from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from core.data.limits import SIDE_ENV, max_image_side
from core.models.base import ModelInfo, SteerableModel
from core.models.zoo import ARCHITECTURES

CHECKPOINT_FORMAT = "steerboard-checkpoint-1"

__all__ = [
    "ARCHITECTURES",
    "CheckpointError",
    "ModelInfo",
    "SteerableModel",
    "build_model",
    "for_inference",
    "in_eval_mode",
    "list_models",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]


class CheckpointError(ValueError):
    """A checkpoint cannot be used: wrong file, architecture or class count."""


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return list(ARCHITECTURES)


def build_model(
    arch: str,
    in_channels: int,
    image_size: int,
    num_classes: int,
    *,
    seed: int | None = 0,
    weights_path: str | os.PathLike | None = None,
) -> SteerableModel:
    """Build ``arch`` for images of ``in_channels`` x ``image_size`` x ``image_size`` and
    ``num_classes`` classes. The initial weights are fixed by ``seed``.

    ``weights_path`` (resnet18 only) loads a local torchvision ImageNet state dict; layers
    whose shapes differ (the small-image stem, the classifier) keep their fresh weights.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown model '{arch}'. Choose one of: {', '.join(ARCHITECTURES)}.")
    if num_classes < 2:
        raise ValueError(f"A classifier needs at least 2 classes, got {num_classes}.")
    cap = max_image_side()
    if image_size > cap:  # seed-cnn's first dense layer grows with the side squared: 1.2 GB at 768 px
        raise ValueError(f"Images of side {image_size} px are larger than the {cap} px cap on the side a model is "
                         f"built for; open the data again (it is scaled down to the cap), or set {SIDE_ENV} higher.")
    if seed is None:
        model = ARCHITECTURES[arch](in_channels, image_size, num_classes)
    else:
        with _OwnGenerator(torch.Generator().manual_seed(int(seed))):
            model = ARCHITECTURES[arch](in_channels, image_size, num_classes)
    if weights_path is not None:
        _load_pretrained(model, Path(weights_path))
    return model


_RANDOM_DRAWS = frozenset({
    torch.Tensor.uniform_, torch.Tensor.normal_, torch.Tensor.bernoulli_, torch.Tensor.random_,
    torch.Tensor.exponential_, torch.Tensor.geometric_, torch.Tensor.log_normal_, torch.Tensor.cauchy_,
    torch.rand, torch.randn, torch.randint, torch.randperm, torch.normal, torch.bernoulli, torch.multinomial,
})


class _OwnGenerator(TorchFunctionMode):
    """While active (in this thread only: torch function modes are thread-local), every random
    draw that names no generator (``nn.init``'s, ``Tensor.uniform_``, ``torch.rand``...) draws
    from ``generator`` instead of torch's global one. The draws happen in the same order as
    without the mode, so the values are those ``torch.manual_seed`` would have given."""

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.generator = generator

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if kwargs.get("generator") is None and ("generator" in kwargs or func in _RANDOM_DRAWS):
            kwargs["generator"] = self.generator
        return func(*args, **kwargs)


def in_eval_mode(model: nn.Module) -> bool:
    """True when no module of ``model`` is in training mode."""
    return not any(m.training for m in model.modules())


def for_inference(model: nn.Module) -> nn.Module:
    """``model`` itself when it is wholly in eval mode, else an eval-mode deep copy of it.

    Shared in-memory models (a workbench's current version, the base models) stay in eval
    mode and nobody switches them: another thread may be running the same model, and a
    forward pass in train mode updates BatchNorm's running statistics. Switching a model to
    eval and back is itself that race, so evaluation, Grad-CAM and saliency call this instead
    of ``.eval()``; a model someone is training (in train mode) costs them a copy, which
    carries none of the model's forward or backward hooks."""
    if in_eval_mode(model):
        return model
    memo: dict[int, object] = {}
    for m in model.modules():  # the copy gets no hooks: statistics collectors stay with the model they watch
        for name in _HOOK_DICTS:
            hooks = getattr(m, name, None)
            if hooks:
                memo[id(hooks)] = type(hooks)()
    return copy.deepcopy(model, memo).eval()


_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


def _load_pretrained(model: SteerableModel, path: Path) -> None:
    if model.info.arch != "resnet18":
        raise ValueError("Local pretrained weights are supported for resnet18 only.")
    if not path.is_file():
        raise CheckpointError(f"Pretrained weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise CheckpointError(f"{path} holds no weights that fit a ResNet-18.")
    own.update(usable)
    model.load_state_dict(own)


def checkpoint_dict(model: SteerableModel, classes: list[str], meta: dict[str, Any] | None = None) -> dict:
    """A checkpoint as a plain dict of tensors and plain values (loadable with weights_only)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "info": model.info.to_dict(),
        "classes": list(classes),
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` with torch.save to a temporary file and rename it into place, so a
    crash never leaves a half-written checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    model: SteerableModel, path: str | os.PathLike, classes: list[str], meta: dict[str, Any] | None = None
) -> None:
    """Save ``model`` atomically with its build info and class names."""
    atomic_torch_save(checkpoint_dict(model, classes, meta), path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read and validate a checkpoint file (``weights_only=True``: no code runs on load)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad files
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({exc.__class__.__name__}).") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a steerboard checkpoint (expected format {CHECKPOINT_FORMAT}).")
    return ckpt


def model_from_checkpoint(ckpt: dict | str | os.PathLike) -> SteerableModel:
    """Build the model a checkpoint describes and load its weights; in eval mode (what a
    loaded version is used for: to be shown and evaluated; a fine-tune trains a copy)."""
    if not isinstance(ckpt, dict):
        ckpt = read_checkpoint(ckpt)
    info = ckpt["info"]
    # seed 0: the initial weights are overwritten; a fixed seed keeps the global generator untouched
    model = build_model(info["arch"], info["in_channels"], info["image_size"], info["num_classes"], seed=0)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def load_checkpoint(model: SteerableModel, ckpt: dict | str | os.PathLike) -> dict:
    """Load a checkpoint into ``model``, all or nothing.

    A checkpoint for another architecture, input shape or class count raises
    :class:`CheckpointError` and leaves ``model`` untouched. Returns the checkpoint dict.
    """
    if not isinstance(ckpt, dict):
        ckpt = read_checkpoint(ckpt)
    theirs, ours = ckpt["info"], model.info.to_dict()
    if theirs != ours:
        diffs = ", ".join(f"{k}: checkpoint {theirs.get(k)!r} vs model {ours[k]!r}" for k in ours if theirs.get(k) != ours[k])
        raise CheckpointError(f"Checkpoint does not fit this model ({diffs}).")
    state = ckpt["model"]
    own = model.state_dict()
    missing = set(own) - set(state)
    bad = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or bad or set(state) - set(own):
        raise CheckpointError(f"Checkpoint weights do not match the model (missing {sorted(missing)[:3]}, mismatched {bad[:3]}).")
    model.load_state_dict(state)
    return ckpt
