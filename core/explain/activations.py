"""Activations of named layers, read with forward hooks: the one capture behind the
embeddings (:func:`core.monitor.embed.layer_activations`), the monitor's maps
(:func:`core.monitor.stats.activation_maps`) and the live probe
(:class:`core.monitor.live.ActivationProbe`).

:func:`capture` runs images through a model in batches under ``torch.no_grad()`` in eval
mode and keeps, per wanted layer, what ``reduce`` makes of the layer's output. With
``stop_after`` the forward pass of each batch stops as soon as every wanted layer has run:
later layers are not computed. Its hooks act in the calling thread only (another thread
running the same shared model passes through them untouched) and are always removed, also
when the forward pass raises.

Mode: a shared model (a workbench's current version, a base model) is never switched,
since another thread may be running it: one wholly in eval mode is read as it is, one in
train mode through an eval-mode copy (:func:`core.models.for_inference`). Only the thread
that owns a model (a training job's own copy, between two steps) may ask for
``switch_mode``: the model is put in eval mode for the pass and every module's training
flag is restored afterwards.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from core.models import for_inference

__all__ = ["Captured", "Forward", "Reduce", "capture", "channel_means", "detached"]

Reduce = Callable[[torch.Tensor], torch.Tensor]
"""What is kept of a layer's output for one batch (called inside the hook, under no_grad)."""

Forward = Callable[[nn.Module, torch.Tensor], Any]
"""``forward(model, batch)``: the pass to run per batch; its return value is kept per batch."""


def _output(output: Any) -> torch.Tensor:
    """A module's output tensor (the first one of a tuple or list), detached."""
    return (output[0] if isinstance(output, (tuple, list)) else output).detach()


def channel_means(output: Any) -> torch.Tensor:
    """(N, C) float32 CPU: conv outputs averaged over space per channel, linear outputs as-is."""
    out = _output(output)
    if out.dim() > 2:
        out = out.flatten(2).mean(dim=2)
    return out.to(device="cpu", dtype=torch.float32)


def detached(output: Any) -> torch.Tensor:
    """The output as it is (shape, dtype and device kept), detached."""
    return _output(output)


@dataclass(frozen=True)
class Captured:
    """What :func:`capture` kept: per layer, the batches' reductions concatenated; ``outputs``,
    the forward's return value per batch (empty with ``stop_after``); ``missing``, the wanted
    layers that gave no output in some batch's forward pass (or, without ``stop_after``, more
    than one), which have no entry in ``activations``."""

    activations: dict[str, torch.Tensor]
    outputs: list[Any] = field(default_factory=list)
    missing: tuple[str, ...] = ()

    def of(self, layer: str) -> torch.Tensor:
        """The activations of ``layer``; ``ValueError`` if it did not run in the forward pass."""
        if layer not in self.activations:
            raise ValueError(f"Layer {layer!r} did not run in the model's forward pass")
        return self.activations[layer]


class _StopForward(Exception):
    """Raised from a hook once every wanted layer has run: nothing after them is needed."""


class _Hooks:
    """Forward hooks on ``modules`` that keep ``reduce(output)`` per batch, in the owning thread only."""

    def __init__(self, modules: Mapping[str, nn.Module], reduce: Reduce, stop_after: bool) -> None:
        self.kept: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
        self.missing: set[str] = set()
        self._reduce = reduce
        self._stop_after = stop_after
        self._owner = threading.get_ident()
        self._seen: dict[str, int] = {}
        self.handles = [module.register_forward_hook(self._hook(name)) for name, module in modules.items()]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if threading.get_ident() != self._owner:  # another thread running the same (shared) model
                return
            seen = self._seen[name] = self._seen.get(name, 0) + 1
            if seen == 1:
                self.kept[name].append(self._reduce(output))
            if self._stop_after and len(self._seen) == len(self.kept):
                raise _StopForward
        return hook

    def run(self, forward: Forward, model: nn.Module, batch: torch.Tensor) -> Any:
        """``forward(model, batch)``: its return value (None when stopped)."""
        self._seen = {}
        try:
            result = forward(model, batch)
        except _StopForward:
            result = None
        for name in self.kept:
            count = self._seen.get(name, 0)
            if count == 0 or (count > 1 and not self._stop_after):
                self.missing.add(name)
        return result

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block; every module's training flag restored after it."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _call(model: nn.Module, batch: torch.Tensor) -> Any:
    return model(batch)


def capture(model: nn.Module, layers: Sequence[str], images: torch.Tensor, *, batch_size: int = 256,
            stop_after: bool = True, reduce: Reduce = channel_means, forward: Forward | None = None,
            switch_mode: bool = False) -> Captured:
    """Activations of ``layers`` (names as in ``dict(model.named_modules())``) for ``images``
    (N, ...), run through ``model`` in batches of ``batch_size`` under ``torch.no_grad()`` in
    eval mode; the images are moved to the device of the model's parameters. No images: one
    forward pass of the empty batch (so the activations have their width).

    ``reduce`` makes what is kept of each layer's output per batch (default
    :func:`channel_means`; :func:`detached` keeps the whole output). ``forward(model, batch)``
    is the pass to run (default ``model(batch)``). ``stop_after``: stop each batch's forward
    pass once every wanted layer has run (the first output of each is kept; later layers are
    not run, and ``outputs`` stays empty); otherwise the whole pass runs and its return values
    are kept in ``outputs``. A layer that did not run is listed in ``missing``.

    ``switch_mode=False`` (shared models): the model's mode is never switched; a model in
    train mode is read through an eval-mode copy. ``switch_mode=True`` only from the thread
    that owns ``model``: it is put in eval mode and every module's flag restored afterwards.
    The hooks act in the calling thread only and are removed whatever happens.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not isinstance(images, torch.Tensor) or images.dim() < 2:
        raise ValueError("images must be a tensor (N, C, H, W)")
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise ValueError("capture needs at least one layer")
    unknown = [name for name in layers if name not in dict(model.named_modules())]
    if unknown:  # before any copy
        raise ValueError(f"Unknown layer(s) {', '.join(map(repr, unknown))} in {type(model).__name__}")
    if not switch_mode:
        model = for_inference(model)
    named = dict(model.named_modules())
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    run = forward or _call
    outputs: list[Any] = []
    hooks = _Hooks({name: named[name] for name in layers}, reduce, stop_after)
    try:
        with (_eval_mode(model) if switch_mode else nullcontext()), torch.no_grad():
            for batch in images.split(batch_size) if len(images) else [images]:
                result = hooks.run(run, model, batch.to(device))
                if not stop_after:
                    outputs.append(result)
    finally:
        hooks.remove()
    kept = {name: torch.cat(parts) for name, parts in hooks.kept.items() if name not in hooks.missing}
    return Captured(kept, outputs, tuple(name for name in layers if name in hooks.missing))
