"""Per-layer and per-filter statistics of a training run, collected cheaply.

Mean |activation| per filter is reduced inside a forward hook (a few reductions per layer,
nothing kept of the activation); gradient norms per filter are reduced from ``weight.grad``
after backward. Both stay on the training device as small tensors; nothing is copied to the
CPU until :meth:`LayerStats.snapshot` is called, as often as a page shows them.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.engine import Callback, StepInfo
from core.models.base import SteerableModel


@dataclass
class StatsSnapshot:
    """Statistics at one step, on the CPU. Arrays are per filter (output channel / unit)."""

    step: int
    activation: dict[str, np.ndarray]
    grad_norm: dict[str, np.ndarray]
    layer_grad_norm: dict[str, float]


def watched_layers(model: SteerableModel) -> dict[str, nn.Module]:
    """Convolution and linear layers, in forward order of the model's layer groups."""
    named = dict(model.named_modules())
    out: dict[str, nn.Module] = {}
    for names in model.layer_groups.values():
        for name in names:
            for sub_name, sub in named[name].named_modules():
                if isinstance(sub, (nn.Conv2d, nn.Linear)):
                    out[f"{name}.{sub_name}" if sub_name else name] = sub
    return out


class LayerStats(Callback):
    """Engine callback that records per-filter mean |activation| and gradient norm on every
    training step, plus each layer's gradient-norm history (for a layer-by-step heatmap).

    Use as a context manager or call :meth:`close` to remove the hooks.
    """

    def __init__(self, model: SteerableModel, *, history: int = 2000) -> None:
        self.model = model
        self.layers = watched_layers(model)
        self._act: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in self.layers.items()]
        self._grad_hist: list[torch.Tensor] = []  # one (n_layers,) tensor per step, on device
        self._steps: list[int] = []
        self._history = history
        self._last: tuple[int, dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            if not module.training:
                return  # only training steps count; evaluation passes are not statistics
            with torch.no_grad():
                out = output.detach()
                count = out.numel() // out.shape[1]
                # abs() then two plain sums: on CPU about 4x faster than a fused
                # vector_norm(ord=1) over dims (0, 2, 3), measured on 64x32x28x28
                per = out.abs().sum(dim=(2, 3)) if out.dim() == 4 else out.abs()
                self._act[name] = per.sum(0) / count
        return hook

    def on_step(self, info: StepInfo) -> None:
        # Called after optimizer.step(); .grad still holds this step's gradients.
        with torch.no_grad():
            grads: dict[str, torch.Tensor] = {}
            layer_norms = []
            for name, module in self.layers.items():
                g = module.weight.grad
                if g is None:  # frozen layer: no backward ran through it
                    per = torch.zeros(module.weight.shape[0], device=module.weight.device)
                else:
                    per = torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1)
                    if module.bias is not None and module.bias.grad is not None:
                        per = torch.sqrt(per.square() + module.bias.grad.square())
                grads[name] = per
                layer_norms.append(torch.linalg.vector_norm(per))
            acts = dict(self._act)
            with self._lock:
                self._last = (info.step, acts, grads)
                self._grad_hist.append(torch.stack(layer_norms))
                self._steps.append(info.step)
                if len(self._grad_hist) > self._history:
                    del self._grad_hist[0], self._steps[0]

    def snapshot(self) -> StatsSnapshot | None:
        """The latest step's statistics copied to the CPU, or None before the first step."""
        with self._lock:
            last = self._last
        if last is None:
            return None
        step, acts, grads = last
        return StatsSnapshot(
            step=step,
            activation={k: v.float().cpu().numpy() for k, v in acts.items()},
            grad_norm={k: v.float().cpu().numpy() for k, v in grads.items()},
            layer_grad_norm={k: float(torch.linalg.vector_norm(v)) for k, v in grads.items()},
        )

    def grad_history(self) -> tuple[list[int], list[str], np.ndarray]:
        """(steps, layer names, array of shape (layers, steps)) of per-layer gradient norms."""
        with self._lock:
            steps = list(self._steps)
            hist = list(self._grad_hist)
        names = list(self.layers)
        if not hist:
            return steps, names, np.zeros((len(names), 0), dtype=np.float32)
        return steps, names, torch.stack(hist, 1).float().cpu().numpy()

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "LayerStats":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
