"""Differentiable batched Grad-CAM: agrees with pytorch-grad-cam, leaves the model as it was
(mode, .grad, hooks), is one pass per batch, and can train the attention."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.explain import gradcam, gradcam_batches, layer_of, normalize_cams
from core.models import build_model

ZOO = [("seed-cnn", 1, 28), ("vgg6", 3, 32), ("resnet18", 3, 32)]


def _model(arch, c, s, seed=0):
    return build_model(arch, c, s, 10, seed=seed)


def _no_hooks(model) -> bool:
    return all(not m._forward_hooks and not m._backward_hooks and not getattr(m, "_forward_pre_hooks", {})
               for m in model.modules())


@pytest.mark.parametrize("arch,c,s", ZOO)
@pytest.mark.parametrize("given_targets", [True, False])
def test_agrees_with_pytorch_grad_cam(arch, c, s, given_targets):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(1)
    model = _model(arch, c, s).eval()  # pytorch-grad-cam puts the model in eval mode: compare in the same mode
    x = torch.rand(6, c, s, s)
    targets = torch.randint(0, 10, (6,)) if given_targets else None
    ours = gradcam(model, x, targets, upsample=False)
    with pgc.GradCAM(model=model, target_layers=[layer_of(model)]) as cam:
        ref = cam(input_tensor=x, targets=None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets])
    # pytorch-grad-cam's own normalisation (min-max with eps, before and after resizing), applied to ours
    mine = scale_cam_image(scale_cam_image(ours.cams.numpy(), (s, s)), None)
    assert np.abs(mine - ref).max() < 1e-4
    # and our own upsampled, min-max normalised maps: the same picture
    up = normalize_cams(gradcam(model, x, targets).cams).numpy()
    scale = ours.cams.flatten(1).max(1).values
    sizable = (scale > 1e-3).numpy()  # eps dominates maps of tiny scale (an untrained vgg6): compare the others
    if arch != "vgg6":
        assert sizable.any()
    if sizable.any():
        assert np.abs(up - ref)[sizable].max() < 1e-4


@pytest.mark.parametrize("arch,c,s", ZOO)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("create_graph", [True, False])
def test_leaves_mode_grads_and_hooks_as_they_were(arch, c, s, training, create_graph):
    model = _model(arch, c, s).train(training)
    grads = {}
    for i, (name, p) in enumerate(model.named_parameters()):
        if i % 2 == 0:  # some parameters hold a gradient from an earlier step, others none
            p.grad = torch.full_like(p, 0.5)
        grads[name] = None if p.grad is None else p.grad.clone()
    modes = [m.training for m in model.modules()]
    out = gradcam(model, torch.rand(4, c, s, s), create_graph=create_graph)
    assert out.cams.shape == (4, s, s) and out.logits.shape == (4, 10) and out.targets.shape == (4,)
    assert [m.training for m in model.modules()] == modes
    for name, p in model.named_parameters():
        assert (p.grad is None) == (grads[name] is None), name
        if p.grad is not None:
            assert torch.equal(p.grad, grads[name]), name
    assert _no_hooks(model)


def test_no_hook_left_after_an_error():
    model = _model("seed-cnn", 1, 28)
    with pytest.raises(RuntimeError):
        gradcam(model, torch.rand(2, 3, 28, 28))  # wrong channel count: the forward pass fails
    assert _no_hooks(model)
    with pytest.raises(KeyError, match="has no layer"):
        gradcam(model, torch.rand(2, 1, 28, 28), layer="conv9")


def test_one_batch_equals_image_by_image():
    model = _model("seed-cnn", 1, 28).eval()
    x = torch.rand(5, 1, 28, 28)
    batch = gradcam(model, x).cams
    single = torch.cat([gradcam(model, x[i:i + 1]).cams for i in range(5)])
    assert torch.allclose(batch, single, atol=1e-6)


def test_maps_keep_their_graph_and_train_the_attention():
    model = _model("seed-cnn", 1, 28).train()
    out = gradcam(model, torch.rand(4, 1, 28, 28), create_graph=True)
    assert out.cams.requires_grad
    (g,) = torch.autograd.grad(out.cams.sum(), model.conv1.weight)
    assert g.abs().sum() > 0  # the map depends on the first conv layer: a loss on it reaches the backbone
    plain = gradcam(model, torch.rand(4, 1, 28, 28))
    assert not plain.cams.requires_grad and plain.cams.grad_fn is None


def test_frozen_layers_below_still_give_maps():
    model = _model("seed-cnn", 1, 28).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    out = gradcam(model, torch.rand(3, 1, 28, 28))
    assert out.cams.shape == (3, 28, 28) and torch.isfinite(out.cams).all()


def test_batches_for_a_pool_are_downsampled_and_detached():
    model = _model("seed-cnn", 1, 28).eval()
    x = torch.rand(10, 1, 28, 28)
    cams, logits = gradcam_batches(model, x, batch_size=4, size=7)
    assert cams.shape == (10, 7, 7) and logits.shape == (10, 10) and not cams.requires_grad
    full = gradcam(model, x, upsample=False).cams  # 14 x 14 at conv4
    pooled = torch.nn.functional.adaptive_avg_pool2d(full[:, None], 7)[:, 0]
    assert torch.allclose(cams, pooled, atol=1e-6)
