"""Input-gradient saliency: the gradient of the true class's log-probability with respect to
the pixels, as a torch tensor that keeps its graph when asked (the grid feedback penalises it
inside a loss), and maps for display through Captum (SmoothGrad, Integrated Gradients,
DeepLift) or our Grad-CAM.

What each display method explains:

- ``gradient``: |d log p_y / d x|, summed over channels (the quantity the grid penalty
  constrains, Ross et al. 2017);
- ``smoothgrad``: the mean |gradient| of log p_y over noisy copies of the image (Smilkov et
  al. 2017), what Captum's ``NoiseTunnel(Saliency)`` computes, with the noise drawn from a
  seeded generator of its own (Captum's comes from torch's global one);
- ``integrated_gradients``: Captum ``IntegratedGradients`` of log p_y from a black image,
  |attribution| summed over channels;
- ``deeplift``: Captum ``DeepLift`` of the target's *logit* from a black image (Captum
  recommends logits: its rescale rule has no multiplier for a softmax), |attribution| summed
  over channels. Captum keeps state on each ReLU / max-pool module, so a module called more
  than once in a forward pass (seed-cnn calls its one ``relu`` six times and its ``pool``
  twice; ResNet blocks reuse theirs) gives wrong multipliers: DeepLift runs on a traced copy
  (``torch.fx``) in which every call has a module of its own and no ReLU is in-place;
- ``gradcam``: :func:`core.explain.gradcam` of the target's logit.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from core.explain.gradcam import gradcam
from core.models import for_inference
from core.models.base import SteerableModel

METHODS = ("gradient", "smoothgrad", "integrated_gradients", "deeplift", "gradcam")
SMOOTHGRAD_SAMPLES = 16
SMOOTHGRAD_STDEV = 0.15  # noise sd as a fraction of the image's value range ([0, 1] here)
IG_STEPS = 32


def _targets(targets: torch.Tensor | np.ndarray | list[int], n: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(targets) if not isinstance(targets, torch.Tensor) else targets).long().reshape(-1)
    if len(t) != n:
        raise ValueError(f"{n} images but {len(t)} targets")
    return t.to(device)


def input_gradients(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, *,
                    create_graph: bool = False) -> torch.Tensor:
    """``d log p_y / d x`` (N, C, H, W) for each image and its target class ``y``, one forward
    and one backward pass for the batch.

    Taken with ``torch.autograd.grad`` with respect to the input only, so no parameter
    ``.grad`` is read or written, and the model's train/eval mode is left as it is (the caller
    decides: a training step keeps train mode). With ``create_graph=True`` the result keeps
    its graph back to the weights, so a loss built on it (the grid penalty) trains them; the
    published code of seed 002 took this gradient without it, and its penalty never moved a
    weight. Otherwise the result is detached. Runs on the model's device.
    """
    device = next(model.parameters()).device
    x = images.detach().to(device).requires_grad_(True)
    y = _targets(targets, len(x), device)
    with torch.enable_grad():
        logp = F.log_softmax(model(x), dim=1)
        score = logp.gather(1, y[:, None]).sum()  # images are independent: one backward for all
        (grads,) = torch.autograd.grad(score, x, create_graph=create_graph)
    return grads if create_graph else grads.detach()


# ----------------------------------------------------------------------------- display maps
class _LogProb(nn.Module):
    """The model followed by log-softmax: what gradient, SmoothGrad and IG explain."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.model(x), dim=1)


def separate_modules(model: nn.Module) -> fx.GraphModule:
    """A traced copy of ``model`` in which every call of a module is a module of its own (a
    module called k times becomes k deep copies with the same weights) and every ReLU is
    out-of-place: what Captum's DeepLift needs. Raises ``torch.fx``'s error for a model that
    cannot be traced symbolically."""
    gm = fx.symbolic_trace(copy.deepcopy(model))
    seen: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        target = str(node.target)
        count = seen.get(target, 0)
        seen[target] = count + 1
        module = gm.get_submodule(target)
        if count:
            new = f"{target.replace('.', '_')}__call{count}"
            gm.add_submodule(new, copy.deepcopy(module))
            node.target = new
    for m in gm.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    gm.recompile()
    return gm


def _abs_channels(attr: torch.Tensor) -> np.ndarray:
    return attr.detach().abs().sum(dim=1).float().cpu().numpy()


def _deeplift(model: nn.Module, x: torch.Tensor, y: torch.Tensor, baseline: float) -> torch.Tensor:
    from captum.attr import DeepLift

    try:
        traced = separate_modules(model)
    except Exception as exc:  # a model fx cannot trace: refuse rather than show wrong multipliers
        raise ValueError(f"DeepLift needs a model torch.fx can trace (to give each ReLU call its own module); "
                         f"{type(model).__name__} cannot be traced ({exc}). Use integrated_gradients instead.") from exc
    traced.eval()
    for p in traced.parameters():
        p.requires_grad_(False)
    with warnings.catch_warnings():  # Captum announces the hooks it sets (and removes) on the copy
        warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
        return DeepLift(traced).attribute(x.detach().clone().requires_grad_(True),
                                          baselines=torch.full_like(x, baseline), target=y)


def saliency_maps(model: SteerableModel, images: torch.Tensor, targets: torch.Tensor | np.ndarray | list[int],
                  method: str = "gradient", *, eval_mode: bool = True, batch_size: int = 64,
                  smoothgrad_samples: int = SMOOTHGRAD_SAMPLES, smoothgrad_stdev: float = SMOOTHGRAD_STDEV,
                  ig_steps: int = IG_STEPS, baseline: float = 0.0, seed: int = 0) -> np.ndarray:
    """Non-negative saliency maps (N, H, W), float32, of ``images`` for classes ``targets``,
    for display (see the module docstring for what each ``method`` explains; scale each map
    yourself, e.g. by its maximum, to show it).

    ``eval_mode``: compute in eval mode (BatchNorm uses and keeps its running statistics):
    on ``model`` itself when it is in eval mode, as shared models always are, else on an
    eval-mode copy (:func:`core.models.for_inference`); ``model``'s mode is never switched
    (another thread may be using it). ``eval_mode=False``: the model as it is. No parameter
    ``.grad`` is touched. ``baseline``: the constant image IG and DeepLift start from (black).
    SmoothGrad's noise is drawn from a generator of its own seeded with ``seed`` (torch's
    global generator is neither used nor reseeded), so a map does not flicker between reruns.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown saliency method {method!r}; choose from {', '.join(METHODS)}.")
    device = next(model.parameters()).device
    n = len(images)
    y_all = _targets(targets, n, device)
    if n == 0:
        return np.zeros((0, *images.shape[-2:]), np.float32)
    if eval_mode:
        model = for_inference(model)
    grads_before = [p.grad for p in model.parameters()]
    generator = torch.Generator().manual_seed(int(seed))
    try:
        compute = _method(model, method, smoothgrad_samples, smoothgrad_stdev, ig_steps, baseline, generator)
        out = [compute(images[s:s + batch_size].detach().to(device), y_all[s:s + batch_size])
               for s in range(0, n, batch_size)]
    finally:
        for p, g in zip(model.parameters(), grads_before):  # Captum's gradients go through autograd.grad,
            if p.grad is not g:  # but a custom forward might not: leave .grad as it was
                p.grad = g
    return np.concatenate(out).astype(np.float32)


def smoothgrad(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, *, samples: int = SMOOTHGRAD_SAMPLES,
               stdev: float = SMOOTHGRAD_STDEV, generator: torch.Generator | None = None,
               chunk: int = 8) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017), as Captum's ``NoiseTunnel(Saliency)`` computes it:
    the mean over ``samples`` noisy copies (Gaussian noise of sd ``stdev``) of each image of
    |d log p_y / d x|, (N, C, H, W). The noise comes from ``generator`` (on the CPU; a fresh
    unseeded one when None), drawn image by image in order, never from torch's global
    generator; ``chunk`` noisy copies of each image go through the model at a time."""
    generator = generator if generator is not None else torch.Generator()
    n, shape = len(images), tuple(images.shape[1:])
    if n == 0 or samples < 1:
        return torch.zeros_like(images)
    # image by image, so an image's noise depends on its place in the call, not on the batching
    noise = torch.stack([torch.randn((samples, *shape), generator=generator) for _ in range(n)])
    noise = noise.to(images.device, images.dtype)
    targets = torch.as_tensor(targets, device=images.device).long().reshape(-1)
    total = torch.zeros_like(images)
    for s in range(0, samples, chunk):
        part = noise[:, s:s + chunk]  # (n, c, C, H, W)
        c = part.shape[1]
        noisy = (images[:, None] + float(stdev) * part).reshape(n * c, *shape)
        grads = input_gradients(model, noisy, targets.repeat_interleave(c)).abs()
        total += grads.reshape(n, c, *shape).sum(1)
    return total / samples


def _method(model: nn.Module, method: str, samples: int, stdev: float, steps: int, baseline: float,
            generator: torch.Generator) -> Callable[[torch.Tensor, torch.Tensor], np.ndarray]:
    """One batch's maps for ``method`` (SmoothGrad's noise from ``generator``)."""
    if method == "gradient":
        return lambda x, y: _abs_channels(input_gradients(model, x, y))
    if method == "gradcam":
        return lambda x, y: gradcam(model, x, y).cams.float().cpu().numpy()
    if method == "deeplift":
        return lambda x, y: _abs_channels(_deeplift(model, x, y, baseline))
    if method == "smoothgrad":  # not Captum's NoiseTunnel: it draws its noise from torch's global generator
        return lambda x, y: _abs_channels(smoothgrad(model, x, y, samples=samples, stdev=stdev, generator=generator))
    from captum.attr import IntegratedGradients

    logprob = _LogProb(model)
    return lambda x, y: _abs_channels(IntegratedGradients(logprob).attribute(
        x, baselines=baseline, target=y, n_steps=steps, internal_batch_size=max(len(x), 1) * 8))
