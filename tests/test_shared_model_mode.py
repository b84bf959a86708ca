"""Issue 29: a shared in-memory model (a workbench's current version, a base model) is never
switched between train and eval mode. Pages and jobs of several tabs run it at once; one of
them switching it let another's forward pass run in train mode, and BatchNorm then updated
its running statistics: the model in memory drifted from its checkpoint."""
from __future__ import annotations

import threading

import numpy as np
import torch

from core.feedback.attention.workflow import annotate_like_a_person, bias_report, pool_view
from core.monitor.embed import layer_activations
from core.engine import evaluate, fit, predict, TrainConfig
from core.explain.gradcam import gradcam
from core.explain.saliency import saliency_maps
from core.feedback.grid.workflow import gradient_in_mask
from core.models import build_model, for_inference, in_eval_mode, read_checkpoint
from core.monitor.stats import activation_maps
from core.session.store import Store
from core.session.workbench import Workbench


def _shared_vgg6(workspace, data):
    """A workbench's current model (vgg6, with BatchNorm) and its checkpoint on disk."""
    store = Store(workspace)
    base = build_model("vgg6", data.image_shape[0], data.image_shape[1], data.num_classes, seed=0)
    with torch.no_grad():  # running statistics away from their defaults, so a drift shows either way
        for m in base.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(1))
                m.running_var.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(2))
    wb = Workbench.create(store, data, "tiny", base)
    return wb, read_checkpoint(wb.version(0).checkpoint)["model"]


class _ModeSwitches:
    """Counts ``.train()`` / ``.eval()`` calls on a model (``eval()`` calls ``train(False)``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[tuple[str, bool]] = []
        self._lock = threading.Lock()
        for name, m in model.named_modules():
            original = m.train

            def spy(mode: bool = True, _original=original, _name=name):
                with self._lock:
                    self.calls.append((_name, bool(mode)))
                return _original(mode)

            m.train = spy  # an instance attribute: only this model's modules are watched


def _same_state(model: torch.nn.Module, state: dict) -> list[str]:
    """Names of the weights and buffers that differ from ``state``."""
    return [k for k, v in model.state_dict().items() if not torch.equal(v.cpu(), state[k])]


def test_the_shared_model_is_in_eval_mode_and_stays_as_its_checkpoint_under_concurrent_use(workspace, tiny_data):
    """Two threads evaluate the shared vgg6 and draw its Grad-CAMs (and the rest of what pages
    draw from it) at the same time, over and over: nobody switches its mode, and afterwards
    every weight and buffer (running means, variances, batch counts) equals the checkpoint."""
    wb, checkpoint = _shared_vgg6(workspace, tiny_data)
    model = wb.model
    assert in_eval_mode(model)  # a shared model stays in eval mode
    switches = _ModeSwitches(model)
    data = tiny_data
    x, y = data.images[:24], data.labels[:24]
    ids = np.arange(24)
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def evaluating() -> None:
        try:
            start.wait(10)
            for _ in range(12):
                evaluate(model, *data.split("val"), batch_size=8)
                predict(model, x, batch_size=5, with_features=True)
                layer_activations(model, "conv3", x, batch_size=8)
                activation_maps(model, "conv2", x[0])
                bias_report(model, data)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def explaining() -> None:
        try:
            start.wait(10)
            for _ in range(12):
                gradcam(model, x, y)
                pool_view(model, x, ids, {"cams", "features"}, batch_size=8)
                annotate_like_a_person(model, data, [int(i) for i in data.ids("test")[:4]])
                saliency_maps(model, x[:4], y[:4], "gradient")
                gradient_in_mask(model, x, data.masks[:24], y, batch_size=8)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=evaluating), threading.Thread(target=explaining)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert switches.calls == []  # never .train() / .eval() on the shared model
    assert in_eval_mode(model)
    assert _same_state(model, checkpoint) == []


def test_concurrent_gradcams_on_one_model_are_each_their_own(tiny_data):
    """Grad-CAM hooks the shared model's layer: another thread's forward pass through the same
    model must neither feed this thread's map nor be changed by this thread's hook."""
    model = build_model("vgg6", 1, 16, tiny_data.num_classes, seed=0).eval()
    a, b = tiny_data.images[:8], tiny_data.images[8:13]
    want_a, want_b = gradcam(model, a).cams, gradcam(model, b).cams
    want_logits = predict(model, b)[0]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(images, want, evaluate_too: bool) -> None:
        try:
            start.wait(10)
            for _ in range(25):
                got = gradcam(model, images).cams
                assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
                if evaluate_too:
                    assert torch.allclose(predict(model, images)[0], want_logits, atol=1e-5)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(a, want_a, False)), threading.Thread(target=run, args=(b, want_b, True))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors


def test_a_model_in_train_mode_is_read_through_a_copy_and_left_alone(tiny_data):
    """A caller's own model in train mode (frozen BatchNorm groups in eval mode): evaluation
    and explanations use an eval-mode copy; the model keeps every module's mode and buffer."""
    model = build_model("vgg6", 1, 16, tiny_data.num_classes, seed=0).train()
    model.bn1.eval()  # as a frozen group's BatchNorm is during training
    modes = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = tiny_data.images[:6], tiny_data.labels[:6]
    logits = predict(model, x)[0]
    gradcam(for_inference(model), x, y)
    saliency_maps(model, x, y, "smoothgrad", smoothgrad_samples=2)
    layer_activations(model, "conv2", x)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert _same_state(model, state) == []
    reference = for_inference(model)
    assert reference is not model and in_eval_mode(reference) and not in_eval_mode(model)
    assert torch.allclose(logits, reference(x), atol=1e-6)  # eval-mode logits: running statistics used
    assert for_inference(reference) is reference  # a model in eval mode is used as it is: no copy


def test_fit_trains_its_own_model_and_hands_it_on_in_eval_mode(tiny_data):
    """The engine switches only the model it trains (a workbench's deep copy), and leaves it in
    eval mode, so the version made from it is shared in eval mode."""
    model = build_model("vgg6", 1, 16, tiny_data.num_classes, seed=0)
    fit(model, tiny_data.split("train"), tiny_data.split("val"), config=TrainConfig(epochs=1, batch_size=16))
    assert in_eval_mode(model)
    fit(model, tiny_data.split("train"), None, config=TrainConfig(epochs=1, batch_size=16, lr=float("nan")))
    assert in_eval_mode(model)  # however the run ends (here: diverged at once)
