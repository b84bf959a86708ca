"""Grad-CAM (Selvaraju et al. 2017) for a whole batch in one forward and one backward pass,
as torch tensors that keep their graph when asked, so a loss can train the attention.

Why not pytorch-grad-cam or Captum: pytorch-grad-cam returns numpy, calls ``model.eval()``
and ``model.zero_grad()`` and cannot be back-propagated; Captum's LayerGradCam is torch but
computes attributions through a generic path that is slower for this use. Here the gradient
is taken with ``torch.autograd.grad`` with respect to the layer's output only: no parameter
``.grad`` is read, written or accumulated, and the backward pass stops at that layer.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.models.base import SteerableModel


@dataclass
class CamResult:
    """Grad-CAMs of a batch and what produced them.

    ``cams``: (N, H, W) non-negative maps (ReLU of the weighted sum of the layer's feature
    maps), upsampled bilinearly to the image size unless ``upsample=False`` (then the
    layer's own h x w). ``logits``: (N, K) from the same forward pass. ``targets``: (N,) the
    class each map explains.
    """

    cams: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor


@contextmanager
def _capture(module: nn.Module, *, graph_below: bool) -> Iterator[list[torch.Tensor]]:
    """Run the block's forward pass keeping the output of ``module``; the hook is always
    removed and the grad mode restored. The hook acts only in the calling thread: another
    thread's forward pass through the same (shared) model runs as if it were not there.

    Without ``graph_below`` the layers below ``module`` run without autograd (nothing is
    kept for a backward pass that will stop at ``module`` anyway): the hook switches
    autograd on for the rest of the forward pass, from a fresh leaf at the layer's output.
    """
    store: list[torch.Tensor] = []
    owner = threading.get_ident()

    def hook(_module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor | None:
        if threading.get_ident() != owner:  # another thread running the same (shared) model: not ours
            return None
        if not graph_below:
            torch.set_grad_enabled(True)
        if not graph_below or not output.requires_grad:  # (frozen layers below: still differentiable here)
            output = output.detach().requires_grad_(True)
        store.append(output)
        return output

    handle = module.register_forward_hook(hook)
    previous = torch.is_grad_enabled()
    torch.set_grad_enabled(graph_below)
    try:
        yield store
    finally:
        torch.set_grad_enabled(previous)
        handle.remove()


def layer_of(model: SteerableModel, layer: str | None = None) -> nn.Module:
    """The module named ``layer`` (default: the model's ``gradcam_layer``)."""
    name = layer or model.gradcam_layer
    modules = dict(model.named_modules())
    if name not in modules:
        raise KeyError(f"{type(model).__name__} has no layer {name!r}; its Grad-CAM layer is {model.gradcam_layer!r}")
    return modules[name]


def gradcam(
    model: SteerableModel,
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    layer: str | None = None,
    create_graph: bool = False,
    upsample: bool = True,
) -> CamResult:
    """Grad-CAMs of ``images`` at ``layer`` (default: the model's Grad-CAM layer), one
    forward and one backward pass for the whole batch.

    ``targets``: the class each map explains (default: the predicted class). With
    ``create_graph=True`` the maps keep their graph back to the weights, so a loss built on
    them trains the attention (use inside a training step); otherwise they are detached.
    The model's train/eval mode and its parameters' ``.grad`` are left as they were, and no
    hook stays behind. Runs on the model's device; ``images`` are moved there.
    """
    device = next(model.parameters()).device
    x = images.to(device)
    module = layer_of(model, layer)
    with _capture(module, graph_below=create_graph) as acts:
        logits = model(x)
        if not acts:
            raise RuntimeError(f"layer {layer or model.gradcam_layer!r} did not run in the forward pass")
        act = acts[-1]
        if targets is None:
            targets = logits.detach().argmax(1)
        targets = targets.to(device).long()
        score = logits.gather(1, targets[:, None]).sum()  # images are independent: one backward for all
        (grads,) = torch.autograd.grad(score, act, create_graph=create_graph)
        torch.set_grad_enabled(create_graph)  # the map itself needs a graph only inside a loss
        weights = grads.mean(dim=(2, 3), keepdim=True)  # global-average-pooled gradients per channel
        cams = F.relu((weights * act).sum(dim=1))  # (N, h, w)
        if upsample and cams.shape[-2:] != x.shape[-2:]:
            cams = F.interpolate(cams[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    if not create_graph:
        cams, logits = cams.detach(), logits.detach()
    return CamResult(cams, logits, targets)


def normalize_cams(cams: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Each map scaled to [0, 1] by its own min and max (as pytorch-grad-cam shows them)."""
    flat = cams.flatten(1)
    lo = flat.min(1).values[:, None, None]
    hi = flat.max(1).values[:, None, None]
    return (cams - lo) / (hi - lo + eps)


def gradcam_batches(
    model: SteerableModel,
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    layer: str | None = None,
    batch_size: int = 256,
    size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(CAMs, logits) for a large set of images, batch by batch, detached, on the CPU.

    ``size``: side of the returned maps (downsampled with area averaging, e.g. 14 for the GMM
    sampler); default the layer's own resolution (no upsampling: cheaper to keep).
    """
    cams, logits = [], []
    for start in range(0, len(images), batch_size):
        t = None if targets is None else targets[start:start + batch_size]
        out = gradcam(model, images[start:start + batch_size], t, layer=layer, upsample=False)
        c = out.cams
        if size is not None and c.shape[-1] != size:
            c = F.adaptive_avg_pool2d(c[:, None], size)[:, 0]
        cams.append(c.float().cpu())
        logits.append(out.logits.float().cpu())
    if not cams:
        return torch.zeros(0, size or 1, size or 1), torch.zeros(0, model.info.num_classes)
    return torch.cat(cams), torch.cat(logits)
