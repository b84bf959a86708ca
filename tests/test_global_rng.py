"""Issue 29: neither building a model (done in background threads) nor SmoothGrad (done by
pages) touches torch's global random generator. They reseeded it for the length of the call
and put it back afterwards, so the state after the call was the caller's, but any other
thread drawing meanwhile got the reseeded numbers. Seen from inside the computation, the
global generator must be exactly the caller's."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import core.models as models
from core.explain.saliency import saliency_maps, smoothgrad
from core.models import build_model, model_from_checkpoint, save_checkpoint
from core.models.zoo import ARCHITECTURES


@pytest.fixture
def reseeds(monkeypatch):
    """Every call that reseeds or resets the global generator, by name."""
    calls: list[str] = []
    for owner, name in [(torch, "manual_seed"), (torch.random, "manual_seed"), (torch, "set_rng_state"),
                        (torch.random, "set_rng_state"), (torch, "seed"), (torch.random, "seed")]:
        original = getattr(owner, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)
    return calls


@pytest.mark.parametrize(("arch", "c", "size"), [("seed-cnn", 1, 28), ("vgg6", 3, 32), ("resnet18", 3, 32)])
def test_build_model_draws_its_weights_from_its_own_generator(monkeypatch, reseeds, arch, c, size):
    torch.manual_seed(1234)
    caller = torch.get_rng_state()
    inside: list[torch.Tensor] = []
    real = ARCHITECTURES[arch]

    def probed(*args):
        model = real(*args)  # every initial weight drawn by now
        inside.append(torch.get_rng_state())
        return model

    monkeypatch.setitem(models.ARCHITECTURES, arch, probed)
    reseeds.clear()
    a = build_model(arch, c, size, 10, seed=3)
    assert reseeds == [] and torch.equal(inside[0], caller)  # the global generator untouched throughout
    assert torch.equal(torch.get_rng_state(), caller)
    b = build_model(arch, c, size, 10, seed=3)
    other = build_model(arch, c, size, 10, seed=4)
    # deterministic under the seed, and the very weights torch.manual_seed(seed) gave before
    monkeypatch.setitem(models.ARCHITECTURES, arch, real)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        before = real(c, size, 10)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]) and torch.equal(v, before.state_dict()[k]), k
    assert any(not torch.equal(v, other.state_dict()[k]) for k, v in a.state_dict().items() if v.is_floating_point())


def test_loading_a_checkpoint_draws_nothing_from_the_global_generator(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(build_model("vgg6", 3, 32, 4, seed=0), path, list("abcd"))
    torch.manual_seed(5)
    caller = torch.get_rng_state()
    model_from_checkpoint(path)
    assert torch.equal(torch.get_rng_state(), caller)


class _Probe(nn.Module):
    """A model that records the global generator's state at every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.net = build_model("seed-cnn", 1, 16, 4, seed=0).eval()
        self.states: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.states.append(torch.get_rng_state())
        return self.net(x)


def test_smoothgrad_noise_comes_from_its_own_seeded_generator(tiny_data, reseeds):
    probe = _Probe().eval()
    x, y = tiny_data.images[:5], tiny_data.labels[:5]
    torch.manual_seed(99)
    caller = torch.get_rng_state()
    reseeds.clear()
    a = saliency_maps(probe, x, y, "smoothgrad", smoothgrad_samples=6, seed=7)
    assert reseeds == []
    assert probe.states and all(torch.equal(s, caller) for s in probe.states)  # as the caller left it, throughout
    assert torch.equal(torch.get_rng_state(), caller)
    # deterministic under the seed, whatever the batching; another seed, other noise
    b = saliency_maps(probe, x, y, "smoothgrad", smoothgrad_samples=6, seed=7, batch_size=2)
    c = saliency_maps(probe, x, y, "smoothgrad", smoothgrad_samples=6, seed=8)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not np.allclose(a, c)


def test_smoothgrad_is_the_mean_absolute_gradient_over_the_noisy_copies(tiny_data):
    """What Captum's NoiseTunnel(Saliency) computes, with the noise drawn image by image."""
    from core.explain.saliency import input_gradients

    model = build_model("seed-cnn", 1, 16, 4, seed=0).eval()
    x, y = tiny_data.images[:3], tiny_data.labels[:3]
    got = smoothgrad(model, x, y, samples=5, stdev=0.2, generator=torch.Generator().manual_seed(11), chunk=2)
    g = torch.Generator().manual_seed(11)
    for k in range(3):
        noise = torch.randn((5, *x.shape[1:]), generator=g)
        want = input_gradients(model, x[k:k + 1] + 0.2 * noise, y[k:k + 1].expand(5)).abs().mean(0)
        torch.testing.assert_close(got[k], want, rtol=1e-5, atol=1e-7)
