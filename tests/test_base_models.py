"""Base-model settings per dataset, keeping the best validation epoch, and the near-chance
warning (issue 28 item 1: never a base model at chance without a word)."""
from __future__ import annotations

import torch
import pytest

from apptest_helpers import ROOT, app_workspace, new_app, no_exceptions, workbench_of  # noqa: F401  (fixture)
from support import make_tiny_dataset

from core.session.base_models import DEFAULT_BASE_CONFIG, BaseModels, base_config, chance_warning
from core.data import load_dataset
from core.engine import Callback, TrainConfig, evaluate, fit
from core.models import build_model, read_checkpoint
from core.session.store import Store
from core.session.workbench import train_base_model, version_metrics
from core.session.runs import JobOptions


# ----------------------------------------------------------------------------- base_config
def test_base_config_lowers_the_learning_rate_for_shortcut_sets_only():
    digits, biased = load_dataset("digits"), load_dataset("biased-digits")
    plain = base_config("digits", digits)
    assert plain == DEFAULT_BASE_CONFIG and plain.lr == 0.02 and plain.epochs == 10 and plain.keep_best
    for source in ("biased-digits", "biased-digits?rho=0.99", "biased-digits:digits", "decoy-digits",
                   "texture-digits?x=1"):
        cfg = base_config(source, biased)
        assert cfg.lr == 0.005 and cfg.keep_best and cfg.epochs == plain.epochs, source
    assert base_config("biased-digits", biased, seed=3).seed == 3
    assert base_config("tiny", make_tiny_dataset(channels=3)).lr == 0.005  # a small colour set
    assert base_config("tiny", make_tiny_dataset(channels=1)).lr == 0.02


def test_base_models_train_with_base_config_when_none_is_given(tmp_path, monkeypatch):
    import core.session.base_models as bm

    seen = []

    def fake_train(data, arch, *, config, callbacks, control):
        seen.append(config)
        raise RuntimeError("not training in this test")

    monkeypatch.setattr(bm, "train_base_model", fake_train)
    data = make_tiny_dataset(channels=3)
    job = BaseModels(Store(tmp_path / "ws")).status(data, "biased-digits:tiny", "seed-cnn", train=True).job
    assert job.wait(30) and job.status == "failed"
    assert seen == [base_config("biased-digits:tiny", data)]


# ----------------------------------------------------------------------------- keep_best
class _Collapse(Callback):
    """Zeroes every weight after epoch ``at`` has been evaluated: later epochs stay at chance."""

    def __init__(self, model, at: int) -> None:
        self.model, self.at = model, at

    def on_epoch(self, info) -> None:
        if info.epoch == self.at:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.zero_()


def _collapsing_run(keep_best: bool):
    data = make_tiny_dataset()
    model = build_model("seed-cnn", 1, 16, 4, seed=0)
    cfg = TrainConfig(epochs=4, batch_size=16, lr=0.05, seed=0, keep_best=keep_best)
    result = fit(model, data.split("train"), data.split("val"), config=cfg, callbacks=[_Collapse(model, 1)])
    return model, result, evaluate(model, *data.split("val")).accuracy


def test_keep_best_restores_the_best_epoch_after_a_collapse_and_says_so():
    model, result, val_acc = _collapsing_run(keep_best=True)
    accs = [h.val_acc for h in result.history]
    best = max(range(len(accs)), key=lambda i: accs[i])
    assert accs[-1] < accs[best] - 0.05  # the run did collapse
    assert result.restored_best and result.best_epoch == best + 1 and not result.rolled_back
    assert abs(val_acc - accs[best]) < 1e-6  # the model holds the best epoch's weights
    assert result.message == (f"validation accuracy fell from {100 * accs[best]:.1f}% at epoch {best + 1} to "
                              f"{100 * accs[-1]:.1f}% at epoch {len(accs)}; kept epoch {best + 1}'s weights")


def test_without_keep_best_the_model_is_the_last_epoch():
    model, result, val_acc = _collapsing_run(keep_best=False)
    assert not result.restored_best and result.best_epoch is None and result.message == ""
    assert abs(val_acc - result.history[-1].val_acc) < 1e-6


def test_keep_best_changes_nothing_when_the_last_epoch_is_fine():
    data = make_tiny_dataset()
    states = []
    for keep_best in (False, True):
        model = build_model("seed-cnn", 1, 16, 4, seed=0)
        cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, seed=0, keep_best=keep_best)
        result = fit(model, data.split("train"), data.split("val"), config=cfg)
        assert not result.restored_best
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_the_base_model_job_says_when_it_kept_the_best_epoch(tmp_path, monkeypatch):
    import core.session.base_models as bm

    def collapsing(data, arch, *, config, callbacks, control):  # base training that collapses after epoch 2
        model = build_model(arch, 1, 16, data.num_classes, seed=config.seed)
        result = fit(model, data.split("train"), data.split("val"), config=config,
                     callbacks=[*callbacks, _Collapse(model, 1)], control=control)
        return model, result

    monkeypatch.setattr(bm, "train_base_model", collapsing)
    cfg = TrainConfig(epochs=4, batch_size=16, lr=0.05, seed=0, keep_best=True)
    job = BaseModels(Store(tmp_path / "ws")).status(make_tiny_dataset(), "tiny", "seed-cnn", train=True,
                                                    config=cfg).job
    assert job.wait(60) and job.status == "done", job.error
    assert "kept epoch" in job.view()["message"]
    meta = read_checkpoint(job.result)["meta"]
    assert "kept epoch" in meta["message"] and meta["config"]["keep_best"] is True and meta["config"]["lr"] == 0.05
    assert meta["metrics"]["val_acc"] > 0.9  # the best epoch's weights were saved, not the collapsed ones


@pytest.mark.slow
def test_biased_digits_base_model_learns_with_its_base_settings():
    """At the old lr 0.02 this base model ended at chance (val 0.46 after epoch 10, test 9.9%)."""
    data = load_dataset("biased-digits")
    model, result = train_base_model(data, "seed-cnn", config=base_config("biased-digits", data))
    metrics = version_metrics(model, data)
    assert metrics["val_acc"] >= 0.9, [h.val_acc for h in result.history]
    assert chance_warning(metrics, data.num_classes) is None


# ----------------------------------------------------------------------------- chance_warning
def test_chance_warning_flags_accuracy_near_chance():
    line = chance_warning({"val_acc": 0.102, "test_acc": 0.5}, 10)
    assert line == ("This model is at chance level (val 10.2%, chance 10%): train it again from Home with a lower "
                    "learning rate (e.g. 0.005), or Reset to base.")
    assert chance_warning({"val_acc": 0.14}, 10) is not None
    assert chance_warning({"val_acc": 0.16}, 10) is None
    assert "(test 9.9%" in chance_warning({"test_acc": 0.099}, 10)  # no val split: the test accuracy
    assert chance_warning({"val_acc": 0.55}, 2) is not None and chance_warning({"val_acc": 0.65}, 2) is None
    assert "Reset to base" not in chance_warning({"val_acc": 0.1}, 10, can_reset=False)
    assert chance_warning({}, 10) is None and chance_warning(None, 10) is None
    assert chance_warning({"val_acc": float("nan")}, 10) is None and chance_warning({"val_acc": 0.0}, 1) is None


def _chance_lines(at) -> list[str]:
    return [w.value for w in at.warning if "at chance level" in w.value]


@pytest.mark.slow
def test_sidebar_warns_on_every_page_when_the_current_version_is_at_chance(app_workspace):
    at = new_app(app_workspace).run()
    no_exceptions(at)
    assert _chance_lines(at) == []  # the cached base model is well above chance
    wb = workbench_of(at)
    dead = build_model(wb.arch, *wb.data.image_shape[:2], wb.data.num_classes, seed=0)
    with torch.no_grad():
        for p in dead.parameters():
            p.zero_()  # every image gets the same logits: one class, chance level
    wb.commit_version(dead, "collapsed")
    assert wb.version(wb.current_version).metrics["val_acc"] < 0.15
    at.run()
    no_exceptions(at)
    lines = _chance_lines(at)
    assert len(lines) == 1 and "lower learning rate" in lines[0] and "Reset to base" in lines[0]
    at.switch_page(str(ROOT / "pages" / "latent.py")).run()
    no_exceptions(at)
    assert len(_chance_lines(at)) == 1
    wb.restore(0)
    at.run()
    no_exceptions(at)
    assert _chance_lines(at) == []


def test_a_workbench_run_that_collapses_keeps_its_best_epoch_and_the_version_says_so(workspace):
    """Home's Train (keep_best on): the version holds the best epoch's weights, its description
    and feedback say which epoch, and the job's message says why."""
    from core.session.store import Store
    from core.session.workbench import Workbench

    data = make_tiny_dataset()
    wb = Workbench.create(Store(workspace), data, "tiny", build_model("seed-cnn", 1, 16, 4, seed=0))
    cfg = TrainConfig(epochs=4, batch_size=16, lr=0.05, seed=0, keep_best=True)
    job = wb.train(cfg, JobOptions("trained", attach=lambda m: [_Collapse(m, 1)]))
    assert job.wait(120) and job.status == "done", job.error
    record = wb.version(wb.current_version)
    best = record.feedback["kept_best_epoch"]
    assert best in (1, 2) and f"kept epoch {best}" in record.description
    assert "validation accuracy fell from" in job.message
    assert record.metrics["val_acc"] > 0.3  # not the zeroed (chance) weights of the last epochs
