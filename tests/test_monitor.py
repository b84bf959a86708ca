"""Per-filter statistics match a direct computation."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from core.engine import TrainConfig, apply_freeze, fit
from core.models import build_model
from core.monitor import LayerStats, watched_layers


def test_statistics_match_direct_computation(tiny_data):
    model = build_model("vgg6", 1, 16, tiny_data.num_classes, seed=0)
    x, y = tiny_data.split("train")
    reference = copy.deepcopy(model)
    # lr = 0 and no weight decay: the step leaves the weights as they were
    cfg = TrainConfig(epochs=1, batch_size=len(x), lr=0.0, weight_decay=0.0, momentum=0.0, seed=0)
    with LayerStats(model) as stats:
        fit(model, (x, y), None, config=cfg, callbacks=[stats])
        snap = stats.snapshot()
        steps, names, hist = stats.grad_history()
    assert snap is not None and steps == [0] and hist.shape == (len(names), 1)

    # the same batch order as the engine (one batch, permuted by the seed)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    xb, yb = x[perm], y[perm]
    reference.train()
    acts = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o)) for n, m in watched_layers(reference).items()]
    loss = F.cross_entropy(reference(xb), yb)
    loss.backward()
    for h in hooks:
        h.remove()
    for name, module in watched_layers(reference).items():
        out = acts[name].detach()
        dims = (0, 2, 3) if out.dim() == 4 else (0,)
        torch.testing.assert_close(torch.from_numpy(snap.activation[name]), out.abs().mean(dim=dims), rtol=1e-4, atol=1e-6)
        g = module.weight.grad.reshape(module.weight.shape[0], -1)
        direct = (g.pow(2).sum(1) + module.bias.grad.pow(2)).sqrt()
        torch.testing.assert_close(torch.from_numpy(snap.grad_norm[name]), direct, rtol=1e-4, atol=1e-6)
        assert abs(snap.layer_grad_norm[name] - float(direct.norm())) < 1e-4 * max(1.0, float(direct.norm()))


def test_frozen_layers_report_zero_gradient_and_hooks_are_removed(tiny_data):
    model = build_model("seed-cnn", 1, 16, tiny_data.num_classes)
    apply_freeze(model, ["conv1"])
    with LayerStats(model) as stats:
        fit(model, tiny_data.split("train"), None, config=TrainConfig(epochs=1, batch_size=16), callbacks=[stats])
        snap = stats.snapshot()
        _, names, hist = stats.grad_history()
    assert float(snap.grad_norm["conv1"].sum()) == 0.0
    assert float(snap.grad_norm["conv2"].sum()) > 0.0
    assert hist.shape[1] == 3 and (hist[names.index("conv1")] == 0).all()
    assert all(not m._forward_hooks for m in watched_layers(model).values())
