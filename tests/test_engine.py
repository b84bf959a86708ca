"""Training engine: learning, determinism, freezing, stop/pause, NaN roll-back, fine-tuning."""
from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from core.engine import (
    Callback,
    TrainConfig,
    TrainControl,
    apply_freeze,
    evaluate,
    fine_tune,
    fit,
    frozen_groups,
    pick_device,
)
from core.models import build_model


def _model(data, arch="seed-cnn"):
    c, h, _ = data.image_shape
    return build_model(arch, c, h, data.num_classes, seed=0)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_loss_goes_down_and_accuracy_up(tiny_data):
    model = _model(tiny_data)
    before = evaluate(model, *tiny_data.split("val"))
    result = fit(model, tiny_data.split("train"), tiny_data.split("val"), config=TrainConfig(epochs=6, batch_size=16, lr=0.05))
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.history[-1].val_acc > before.accuracy
    assert result.history[-1].val_acc >= 0.9


def test_deterministic_under_seed(tiny_data):
    a, b = _model(tiny_data), _model(tiny_data)
    cfg = TrainConfig(epochs=2, batch_size=16, seed=7)
    fit(a, tiny_data.split("train"), None, config=cfg)
    fit(b, tiny_data.split("train"), None, config=cfg)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


@pytest.mark.parametrize("arch", ["seed-cnn", "vgg6"])
def test_frozen_groups_stay_bit_identical(tiny_data, arch):
    model = _model(tiny_data, arch)
    frozen = list(model.layer_groups)[:2]
    apply_freeze(model, frozen)
    before = _state(model)
    fit(model, tiny_data.split("train"), None, config=TrainConfig(epochs=2, batch_size=16))
    names = dict(model.named_modules())
    for group in model.layer_groups:
        for mod_name in model.layer_groups[group]:
            keys = [k for k in before if k.startswith(mod_name + ".")]
            same = all(torch.equal(before[k], model.state_dict()[k]) for k in keys)
            if group in frozen:
                assert same, f"{mod_name} changed although frozen"  # BatchNorm running stats too
                assert all(not p.requires_grad for p in names[mod_name].parameters())
            elif any(p.numel() for p in names[mod_name].parameters()):
                assert not same, f"{mod_name} did not train"
    assert frozen_groups(model) == tuple(frozen)


def test_freezing_mid_run_leaves_parameters_identical_from_then_on(tiny_data):
    model = _model(tiny_data)
    control = TrainControl()
    seen = {}

    class FreezeAt(Callback):
        def on_step(self, info):
            if info.step == 3:
                control.set_frozen(["conv1", "conv2"])
                seen["at"] = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("conv1", "conv2"))}
            if info.step == 4:
                seen["frozen_in_step"] = info.frozen

    fit(model, tiny_data.split("train"), None, config=TrainConfig(epochs=2, batch_size=8), callbacks=[FreezeAt()], control=control)
    assert seen["frozen_in_step"] == ("conv1", "conv2")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in seen["at"].items())


def test_non_finite_loss_rolls_back_to_last_epoch_not_worse_than_start(tiny_data):
    """NaN in epoch 2: the weights after epoch 1 (no val set: any finished epoch counts)."""
    model = _model(tiny_data)
    snapshots = {}

    class Keep(Callback):
        def on_step(self, info):
            snapshots[info.step] = _state(model)

    def poison(model, batch):
        poison.calls += 1
        return torch.tensor(float("nan")) if poison.calls == 8 else batch.logits.sum() * 0

    poison.calls = 0  # 48 train examples / batch 8 = 6 steps per epoch: call 8 is in epoch 2
    result = fit(model, tiny_data.split("train"), None, config=TrainConfig(epochs=3, batch_size=8),
                 loss_terms={"poison": poison}, callbacks=[Keep()])
    assert result.diverged and result.status == "diverged" and result.rolled_back
    assert result.kept_epochs == 1 and "after epoch 1" in result.message
    assert result.steps == 7
    after_epoch_1 = snapshots[5]
    assert all(torch.equal(after_epoch_1[k], v) for k, v in model.state_dict().items())


def test_exploding_weights_roll_back_to_the_start(tiny_data):
    model = _model(tiny_data)
    start = _state(model)

    class Explode(Callback):
        def on_step(self, info):
            if info.step == 1:  # corrupt the weights after a step, as a huge update would
                with torch.no_grad():
                    model.fc1.weight.fill_(float("inf"))

    result = fit(model, tiny_data.split("train"), None, config=TrainConfig(epochs=1, batch_size=8), callbacks=[Explode()])
    assert result.diverged and result.kept_epochs == 0 and "before the run" in result.message
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())


def test_learning_rate_1_on_seed_cnn_diverges_and_restores_the_start():
    """The reported bug: lr 1.0 on Home drove the loss to ~6e25 and the run was saved."""
    from core.data import load_dataset

    data = load_dataset("digits")
    model = _model(data)
    start = _state(model)
    result = fit(model, data.split("train"), data.split("val"), config=TrainConfig(epochs=2, lr=1.0))
    assert result.diverged and result.status == "diverged"
    assert result.kept_epochs == 0
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())


def test_runaway_loss_after_a_good_epoch_keeps_that_epoch(tiny_data):
    """A finite cross-entropy far above the first step's (the guard's second test) ends the
    run; the epoch before it kept the validation accuracy, so its weights are kept."""
    model = _model(tiny_data)

    def runaway(model, batch):  # from step 13 on, gradient ascent on the cross-entropy
        runaway.calls += 1
        ce = F.cross_entropy(batch.logits, batch.y)
        return -500.0 * ce if runaway.calls > 12 else ce * 0

    runaway.calls = 0  # 48 train examples / batch 8 = 6 steps per epoch: epochs 1-2 are clean
    result = fit(model, tiny_data.split("train"), tiny_data.split("val"),
                 config=TrainConfig(epochs=4, batch_size=8, lr=0.05), loss_terms={"runaway": runaway})
    assert result.diverged and "classification loss ran away" in result.message
    assert 2 <= result.kept_epochs < 4  # the clean epochs (and one the ascent had not yet spoiled)
    assert len(result.history) == result.kept_epochs


def test_a_large_term_switched_on_mid_run_is_not_a_divergence(tiny_data):
    """CI found it: a grid penalty switched on after the pause starts near 60 while the
    fine-tune's first cross-entropy was 0.05; the guard watched the summed loss and called a
    healthy run diverged. It watches the cross-entropy; a non-finite term still ends the run."""
    model = _model(tiny_data)

    def big(model, batch):  # 500 from step 7 on, with a real (small) gradient
        big.calls += 1
        return (500.0 + 1e-3 * batch.logits.pow(2).mean()) if big.calls > 6 else batch.logits.sum() * 0

    big.calls = 0
    result = fit(model, tiny_data.split("train"), tiny_data.split("val"),
                 config=TrainConfig(epochs=3, batch_size=8, lr=0.05), loss_terms={"big": big})
    assert not result.diverged and result.status == "done" and len(result.history) == 3
    assert result.history[-1].train_loss > 400  # the term is in the reported loss


def test_divergence_guard_rule():
    from core.engine import DivergenceError, DivergenceGuard

    guard = DivergenceGuard(factor=10, margin=5)
    guard.check(2.3, epoch=0, step=0)
    assert guard.limit == pytest.approx(23.0)
    for step, loss in enumerate([2.2, 3.5, 1.9, 40.0, 2.0], start=1):  # one noisy batch is absorbed
        guard.check(loss, epoch=0, step=step)
    with pytest.raises(DivergenceError, match="ran away"):
        for step in range(6, 20):
            guard.check(60.0, epoch=0, step=step)
    small = DivergenceGuard(factor=10, margin=5)
    small.check(0.05, epoch=0, step=0)
    assert small.limit == pytest.approx(5.05)
    with pytest.raises(DivergenceError, match="nan"):
        small.check(float("nan"), epoch=0, step=1)


def test_check_train_settings_messages():
    from core.engine import check_train_settings

    check_train_settings(5, 0.02)
    check_train_settings(1, 1.0)
    with pytest.raises(ValueError, match="learning rate must be between"):
        check_train_settings(5, 5.0)
    with pytest.raises(ValueError, match="learning rate"):
        check_train_settings(5, float("nan"))
    with pytest.raises(ValueError, match="Epochs must be a whole number"):
        check_train_settings(0, 0.02)


def test_stop_between_steps(tiny_data):
    control = TrainControl()

    class StopAt(Callback):
        def on_step(self, info):
            if info.step == 2:
                control.request_stop()

    result = fit(_model(tiny_data), tiny_data.split("train"), None, config=TrainConfig(epochs=5, batch_size=8),
                 callbacks=[StopAt()], control=control)
    assert result.stopped and result.steps == 3


def test_pause_at_epoch_end_and_resume_continues_same_step(tiny_data):
    control = TrainControl()
    control.pause_at_epoch_end = True
    steps = []

    class Rec(Callback):
        def on_step(self, info):
            steps.append(info.step)

    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fit(
        _model(tiny_data), tiny_data.split("train"), None, config=TrainConfig(epochs=2, batch_size=16),
        callbacks=[Rec()], control=control)))
    t.start()
    for _ in range(200):
        if control.waiting:
            break
        t.join(0.05)
    assert control.waiting and control.paused
    n_first = len(steps)
    t.join(0.3)
    assert len(steps) == n_first  # nothing runs while paused
    control.resume()
    t.join(30)
    assert not t.is_alive()
    assert steps == list(range(2 * n_first))
    assert out["r"].steps == 2 * n_first


@pytest.mark.slow
def test_a_pause_mid_epoch_is_left_out_of_the_epoch_time(tiny_data):
    """The Monitor's pause blocks the engine between steps; that wait is not running time, so
    the paused epoch's time stays near the unpaused ones (Layer freezing compares them)."""
    control = TrainControl()
    pause_s = 2.0

    class PauseOnce(Callback):
        def on_step(self, info):
            if info.epoch == 1 and not control.paused and control.paused_seconds == 0:
                control.pause()  # as the Monitor's PAUSE button: the engine waits before the next step
                threading.Timer(pause_s, control.resume).start()

    result = fit(_model(tiny_data), tiny_data.split("train"), None, config=TrainConfig(epochs=3, batch_size=8),
                 callbacks=[PauseOnce()], control=control)
    times = [e.epoch_time for e in result.history]
    assert len(times) == 3
    assert control.paused_seconds >= pause_s - 0.1  # the pause really happened, mid epoch 2
    assert times[1] < times[2] + 0.5 * pause_s, times  # epoch 3 is the warm unpaused one (epoch 1 warms up)


def test_fine_tune_adds_weighted_terms_with_example_ids(tiny_data):
    """fine_tune's loss is weights["cls"] x CE + the weighted terms, each term seeing the batch's
    example ids: its weights equal, tensor by tensor, those of a hand-written SGD loop on
    0.5 x CE + 0.1 x term over the same batches."""
    seen_ids = set()

    def term(model, batch):
        seen_ids.update(batch.ids.tolist())
        return batch.features.pow(2).mean()

    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.04, seed=3, device="cpu")
    model = _model(tiny_data)
    steps = []

    class Rec(Callback):
        def on_step(self, info):
            steps.append((info.loss, info.terms["feat"]))

    result = fine_tune(model, tiny_data, {"feat": term}, {"cls": 0.5, "feat": 0.1}, epochs=2, config=cfg,
                       callbacks=[Rec()])
    assert len(result.history) == 2 and result.steps == len(steps)
    assert seen_ids == set(tiny_data.ids("train").tolist())

    # the same training written out by hand
    ref = _model(tiny_data)
    images, labels = tiny_data.split("train")
    opt = torch.optim.SGD(ref.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    ref_steps = []
    for _ in range(cfg.epochs):
        ref.train()
        for idx in torch.randperm(len(images), generator=generator).split(cfg.batch_size):
            opt.zero_grad(set_to_none=True)
            feats = ref.features(images[idx])
            ce = torch.nn.functional.cross_entropy(ref.head(feats), labels[idx])
            extra = feats.pow(2).mean()
            loss = 0.5 * ce + 0.1 * extra
            ref_steps.append((float(loss.detach()), float(extra.detach())))
            loss.backward()
            opt.step()
    assert steps == pytest.approx(ref_steps, rel=1e-5)  # the recorded loss is the weighted sum
    got, want = model.state_dict(), ref.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-5, atol=1e-6), name
    # and the weights matter: CE at weight 1 ends elsewhere
    other = _model(tiny_data)
    fine_tune(other, tiny_data, {"feat": term}, {"cls": 1.0, "feat": 0.1}, epochs=2, config=cfg)
    assert not torch.allclose(other.conv1.weight, ref.conv1.weight, rtol=1e-5, atol=1e-6)


def test_device_choice(monkeypatch):
    from core import engine

    assert pick_device("cpu") == torch.device("cpu") and pick_device("CPU") == torch.device("cpu")
    # no accelerator: "auto" and None are the CPU; asking for one names what there is
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(engine, "_mps_available", lambda: False)
    assert pick_device(None) == pick_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA was asked for but is not available; available: cpu"):
        pick_device("cuda")
    with pytest.raises(ValueError, match="MPS was asked for but is not available; available: cpu"):
        pick_device("mps")
    # only MPS: the default is MPS
    monkeypatch.setattr(engine, "_mps_available", lambda: True)
    assert pick_device(None) == torch.device("mps") and pick_device("mps") == torch.device("mps")
    assert pick_device("cpu") == torch.device("cpu")  # a device asked for wins over the default
    # CUDA (simulated): preferred over MPS by default, and the exact device asked for is the one given
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device(None) == torch.device("cuda") and pick_device("auto") == torch.device("cuda")
    assert pick_device("cuda:1") == torch.device("cuda", 1) and pick_device("mps") == torch.device("mps")
    assert engine.available_devices() == ["cpu", "cuda", "mps"]


def test_fit_trains_on_the_device_the_config_asks_for(tiny_data, monkeypatch):
    """fit resolves config.device through pick_device and moves the model there; on a machine
    with CUDA it really trains there."""
    from core import engine

    asked = []
    real = engine.pick_device
    monkeypatch.setattr(engine, "pick_device", lambda pref=None: asked.append(pref) or real("cpu"))
    model = _model(tiny_data)
    fit(model, tiny_data.split("train"), None, config=TrainConfig(epochs=1, batch_size=32, device="cuda:1"))
    assert asked == ["cuda:1"] and {p.device.type for p in model.parameters()} == {"cpu"}
    monkeypatch.setattr(engine, "pick_device", real)
    if torch.cuda.is_available():
        model = _model(tiny_data)
        fit(model, tiny_data.split("train"), None, config=TrainConfig(epochs=1, batch_size=32, device="cuda"))
        assert {p.device.type for p in model.parameters()} == {"cuda"}


def test_evaluate_confusion_matches_predictions(tiny_data):
    model = _model(tiny_data)
    ev = evaluate(model, *tiny_data.split("test"))
    assert ev.confusion.sum() == len(tiny_data.ids("test"))
    assert ev.accuracy == pytest.approx((ev.preds == ev.labels).mean())
    assert ev.probs.shape == (len(ev.labels), tiny_data.num_classes)


# --------------------------------------------------------------------------- precision and compile


class _FirstLosses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_step(self, info) -> None:
        self.losses.append(info.loss)


def test_bf16_runs_the_training_forward_in_bfloat16_and_still_learns(tiny_data):
    seen: list[tuple[bool, torch.dtype]] = []
    fp32, bf16 = _model(tiny_data), _model(tiny_data)
    start = _state(bf16)
    last_linear = [m for m in bf16.modules() if isinstance(m, torch.nn.Linear)][-1]  # the logits' layer
    handle = last_linear.register_forward_hook(lambda mod, inp, out: seen.append((mod.training, out.dtype)))
    a, b = _FirstLosses(), _FirstLosses()
    fit(fp32, tiny_data.split("train"), None, config=TrainConfig(epochs=2, batch_size=16, seed=3), callbacks=[a])
    result = fit(bf16, tiny_data.split("train"), tiny_data.split("val"),
                 config=TrainConfig(epochs=2, batch_size=16, seed=3, precision="bf16"), callbacks=[b])
    handle.remove()
    assert [dtype for training, dtype in seen if training] == [torch.bfloat16] * len(b.losses)  # each training step
    assert {dtype for training, dtype in seen if not training} == {torch.float32}  # evaluation stays float32
    assert all(p.dtype == torch.float32 for p in bf16.parameters())  # the weights stay float32 (autocast)
    assert not result.diverged and all(torch.isfinite(torch.tensor(b.losses)))
    assert any(not torch.equal(start[k], v) for k, v in bf16.state_dict().items())
    # the option changes the arithmetic (it is not ignored), within bf16's precision of fp32
    assert b.losses[0] != a.losses[0] and abs(b.losses[0] - a.losses[0]) < 0.05 * a.losses[0]
    assert result.history[-1].val_acc is not None


def test_an_unknown_precision_is_refused_before_any_step(tiny_data):
    model = _model(tiny_data)
    start = _state(model)
    with pytest.raises(ValueError, match=r"precision must be one of fp32, bf16; got 'fp8'"):
        fit(model, tiny_data.split("train"), None, config=TrainConfig(epochs=1, precision="fp8"))
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())


def test_compile_trains_through_the_compiled_model_as_eager_does(tiny_data, monkeypatch):
    """The compiled module computes every step's logits. TorchDynamo traces the real model;
    the "eager" backend (no code generation: seconds, not a minute) keeps the test quick,
    and its results equal eager mode's, so the losses must agree closely."""
    calls = {"compiled": 0, "steps": 0}
    real_compile = torch.compile

    def compile_eagerly(module, **kwargs):
        compiled = real_compile(module, backend="eager")

        def forward(x):
            calls["steps"] += 1
            return compiled(x)
        calls["compiled"] += 1
        forward.__wrapped__ = compiled
        return forward

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    eager, compiled = _model(tiny_data), _model(tiny_data)
    a, b = _FirstLosses(), _FirstLosses()
    fit(eager, tiny_data.split("train"), None, config=TrainConfig(epochs=1, batch_size=16, seed=5), callbacks=[a])
    fit(compiled, tiny_data.split("train"), None, config=TrainConfig(epochs=1, batch_size=16, seed=5, compile=True),
        callbacks=[b])
    assert calls["compiled"] == 1 and calls["steps"] == len(b.losses) > 0
    assert max(abs(x - y) for x, y in zip(a.losses, b.losses)) < 1e-4


def test_compile_is_refused_with_extra_loss_terms(tiny_data):
    model = _model(tiny_data)
    with pytest.raises(ValueError, match="compile is for plain training"):
        fit(model, tiny_data.split("train"), None, config=TrainConfig(epochs=1, compile=True),
            loss_terms={"zero": lambda m, batch: batch.logits.sum() * 0})


def test_steps_with_loss_terms_clip_the_gradient_norm_and_plain_steps_do_not(tiny_data):
    """TrainConfig.term_grad_norm: with an extra term, one SGD step moves the weights by at
    most lr x (clip + weight decay x |w|); without terms, or with the clip off, the same
    steep gradient moves them much further."""
    x, y = tiny_data.split("train")
    x, y = x[:8], y[:8]

    def steep(model, batch):  # a term with a huge, weight-dependent gradient
        return 1e4 * batch.logits.pow(2).mean()

    def moved(config, terms):
        model = _model(tiny_data)
        start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        fit(model, (x, y), None, config=config, loss_terms=terms)
        end = torch.cat([p.detach().flatten() for p in model.parameters()])
        return float((end - start).norm()), float(start.norm())

    one_step = dict(epochs=1, batch_size=8, lr=0.01, diverge_factor=None)
    clipped, w0 = moved(TrainConfig(**one_step), {"steep": steep})
    assert clipped <= 0.01 * (5.0 + 5e-4 * w0) * 1.001
    unclipped, _ = moved(TrainConfig(**one_step, term_grad_norm=None), {"steep": steep})
    assert unclipped > 10 * clipped
    # plain CE is never clipped: a huge learning rate still takes its full step
    plain, _ = moved(TrainConfig(epochs=1, batch_size=8, lr=50.0, diverge_factor=None), None)
    assert plain > 50.0 * 5.0
