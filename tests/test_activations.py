"""core.explain.activations.capture: equal to a manual forward, stops after the last wanted layer,
leaves hooks, modes and weights as they were (also when the forward raises)."""
from __future__ import annotations

import pytest
import torch

from core.explain.activations import capture, detached
from core.models import build_model


def _x(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ["seed-cnn", "vgg6"])
def test_capture_equals_a_manual_forward_and_stops_after_the_last_layer(arch):
    model = build_model(arch, 1, 16, 4, seed=0).eval()
    x = _x()
    calls = {"fc1": 0, "head": 0}
    last = "fc3" if arch == "seed-cnn" else "fc2"
    hs = [model.fc1.register_forward_hook(lambda *a: calls.__setitem__("fc1", calls["fc1"] + 1)),
          getattr(model, last).register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))]
    got = capture(model, ["conv2", "fc1"], x, batch_size=4, reduce=detached)
    for h in hs:
        h.remove()
    assert calls == {"fc1": 2, "head": 0}  # two batches; nothing after fc1 ran
    seen = {}
    hs = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o)) for n in ("conv2", "fc1")]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    torch.testing.assert_close(got.of("conv2"), seen["conv2"])
    torch.testing.assert_close(got.of("fc1"), seen["fc1"])
    assert all(not m._forward_hooks for m in model.modules())


def test_hooks_mode_and_buffers_unchanged_when_the_forward_raises():
    model = build_model("vgg6", 1, 16, 4, seed=0)
    model.train()
    model.bn1.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def boom(m, batch):
        m(batch)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        capture(model, ["conv3"], _x(), stop_after=False, forward=boom, switch_mode=True)
    assert model.training and not model.bn1.training and model.bn2.training
    assert all(not m._forward_hooks for m in model.modules())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k])
