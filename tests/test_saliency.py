"""Input gradients and display saliency maps: the gradient is the one autograd gives (with its
graph when asked, which the grid penalty needs), every display method gives finite
non-negative (N, H, W) maps, DeepLift runs on a traced copy with one module per call, and
nothing is left changed on the model (mode, .grad, running statistics)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.explain.saliency import (
    METHODS,
    _deeplift,
    input_gradients,
    saliency_maps,
    separate_modules,
)
from core.models import build_model


def _model(arch="seed-cnn", c=1, s=16, seed=0):
    return build_model(arch, c, s, 4, seed=seed)


def _manual_gradients(model, x, y):
    x = x.clone().requires_grad_(True)
    F.log_softmax(model(x), 1)[torch.arange(len(y)), y].sum().backward()
    return x.grad


def _set_some_grads(model):
    """Half the parameters hold a gradient from an earlier step, the others none."""
    before = {}
    for i, (name, p) in enumerate(model.named_parameters()):
        p.grad = torch.full_like(p, 0.25) if i % 2 == 0 else None
        before[name] = None if p.grad is None else p.grad.clone()
    return before


def _grads_unchanged(model, before):
    for name, p in model.named_parameters():
        if before[name] is None:
            assert p.grad is None, name
        else:
            assert torch.equal(p.grad, before[name]), name
    return True


@pytest.mark.parametrize("training", [True, False])
def test_input_gradients_match_autograd_and_leave_the_model_alone(tiny_data, training):
    model = _model().train(training)
    x, y = tiny_data.images[:5], tiny_data.labels[:5]
    before = _set_some_grads(model)
    g = input_gradients(model, x, y)
    assert g.shape == x.shape and not g.requires_grad
    assert _grads_unchanged(model, before) and model.training == training
    model.zero_grad(set_to_none=True)
    manual = _manual_gradients(model, x, y)
    assert torch.allclose(g, manual, atol=1e-7) and manual.abs().sum() > 0
    # with its graph: the same values, and a graph back to the weights
    g2 = input_gradients(model, x, y, create_graph=True)
    assert g2.requires_grad and torch.allclose(g2, manual, atol=1e-7)
    (w,) = torch.autograd.grad(g2.pow(2).sum(), model.conv1.weight)
    assert w.abs().sum() > 0
    # targets as a list or numpy array; a count mismatch is an error
    assert torch.allclose(input_gradients(model, x, y.tolist()), g)
    assert torch.allclose(input_gradients(model, x, y.numpy()), g)
    with pytest.raises(ValueError, match="5 images but 4 targets"):
        input_gradients(model, x, y[:4])


def test_input_gradients_do_not_depend_on_other_images_in_the_batch(tiny_data):
    """One backward for the batch sums the images' scores: each image's gradient must still be its own."""
    model = _model().eval()
    x, y = tiny_data.images[:6], tiny_data.labels[:6]
    together = input_gradients(model, x, y)
    alone = torch.cat([input_gradients(model, x[i:i + 1], y[i:i + 1]) for i in range(6)])
    assert torch.allclose(together, alone, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_finite_non_negative_maps_and_restores_the_model(tiny_data, method):
    model = _model().train()
    x, y = tiny_data.images[:5], tiny_data.labels[:5]
    before = _set_some_grads(model)
    maps = saliency_maps(model, x, y, method, smoothgrad_samples=4, ig_steps=8)
    assert maps.shape == (5, 16, 16) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and (maps >= 0).all()
    assert (maps.reshape(5, -1).max(1) > 0).all()  # none is blank
    assert model.training and _grads_unchanged(model, before)
    # batched in chunks: the same maps (smoothgrad's noise is drawn per chunk, so compare the others)
    if method != "smoothgrad":
        assert np.allclose(saliency_maps(model, x, y, method, batch_size=2, ig_steps=8), maps, atol=1e-6)


def test_gradient_map_is_the_channel_sum_of_absolute_input_gradients():
    model = _model("seed-cnn", c=3).eval()
    x, y = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3])
    expected = input_gradients(model, x, y).abs().sum(1).numpy()
    assert np.allclose(saliency_maps(model, x, y, "gradient"), expected)


def test_smoothgrad_is_seeded_and_leaves_the_global_generator_alone(tiny_data):
    model = _model()
    x, y = tiny_data.images[:3], tiny_data.labels[:3]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = saliency_maps(model, x, y, "smoothgrad", smoothgrad_samples=4, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = saliency_maps(model, x, y, "smoothgrad", smoothgrad_samples=4, seed=7)
    c = saliency_maps(model, x, y, "smoothgrad", smoothgrad_samples=4, seed=8)
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_eval_mode_keeps_batchnorm_statistics():
    model = build_model("vgg6", 3, 16, 4, seed=0).train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    for method in ("gradient", "integrated_gradients", "deeplift"):
        saliency_maps(model, x, y, method, ig_steps=4)
    assert model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())


def test_deeplift_on_seed_cnn_sums_to_the_logit_difference(tiny_data):
    """seed-cnn calls its one ReLU six times and its pool twice. Captum refuses such a model;
    on the traced copy DeepLift is exact: attributions sum to logit(x) - logit(baseline)."""
    from captum.attr import DeepLift

    model = _model().eval()
    x, y = tiny_data.images[:6], tiny_data.labels[:6]
    with warnings.catch_warnings(), pytest.raises(Exception, match="used more than once"):
        warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
        DeepLift(model).attribute(x.clone().requires_grad_(True), baselines=torch.zeros_like(x), target=y)
    attr = _deeplift(model, x, y, 0.0).detach()
    with torch.no_grad():
        rows = torch.arange(6)
        delta = model(x)[rows, y] - model(torch.zeros_like(x))[rows, y]
    assert torch.allclose(attr.sum(dim=(1, 2, 3)), delta, rtol=1e-3, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("arch,c", [("seed-cnn", 1), ("resnet18", 3)])
def test_separate_modules_computes_the_same_function(arch, c):
    model = build_model(arch, c, 16, 4, seed=0).eval()
    gm = separate_modules(model)
    x = torch.rand(3, c, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-6)
    called = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert len(called) == len(set(called))  # every call has a module of its own
    assert not any(isinstance(m, torch.nn.ReLU) and m.inplace for m in gm.modules())
    if arch == "seed-cnn":
        assert sum(isinstance(m, torch.nn.ReLU) for m in gm.modules()) == 6
        assert sum(isinstance(m, torch.nn.MaxPool2d) for m in gm.modules()) == 2
        assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 1  # the original is untouched
    with torch.no_grad():  # a copy: changing its weights leaves the model's alone
        next(gm.parameters()).add_(1.0)
        assert not torch.allclose(gm(x), model(x))


def test_bad_method_targets_and_empty_input(tiny_data):
    model = _model()
    x, y = tiny_data.images[:3], tiny_data.labels[:3]
    with pytest.raises(ValueError, match="Unknown saliency method 'lime'"):
        saliency_maps(model, x, y, "lime")
    with pytest.raises(ValueError, match="3 images but 2 targets"):
        saliency_maps(model, x, y[:2])
    assert saliency_maps(model, x[:0], y[:0]).shape == (0, 16, 16)
