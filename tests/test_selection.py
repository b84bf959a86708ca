"""Selected examples (seed 003): the loss term, the retrain plan, retraining, the helpers."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support import predict_ids

from core.engine import Batch, Callback, TrainConfig, evaluate, fit
from core.feedback.selection.loss import (
    KIND,
    RETRAIN,
    RetrainSettings,
    SelectedExamplesLoss,
    box_select,
    most_confused_pair,
    plan_retrain,
    retrain_on_selection,
    selection_report,
)
from core.models import build_model

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine two
    OpenMP threads make each step up to 50x slower; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMALL = RetrainSettings(iterations=12, selected_per_batch=4, train=dataclasses.replace(RETRAIN, batch_size=16, lr=0.02, seed=0))


def _trained(data, epochs=4):
    model = build_model("seed-cnn", 1, 16, data.num_classes, seed=0)
    fit(model, data.split("train"), None, config=TrainConfig(epochs=epochs, batch_size=16, lr=0.02))
    return model


class _Steps(Callback):
    def __init__(self) -> None:
        self.steps = []

    def on_step(self, info) -> None:
        self.steps.append(info)


def _batch(model, x, y):
    feats = model.features(x)
    return Batch(x, y, torch.arange(len(x)), feats, model.head(feats))


# ----------------------------------------------------------------------------- loss term
def test_loss_is_ce_on_the_selected_examples_and_reaches_the_backbone(tiny_data):
    model = build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0)
    x, y = tiny_data.split("pool")
    term = SelectedExamplesLoss(x[:7], y[:7], per_batch=3, seed=5)
    twin = SelectedExamplesLoss(x[:7], y[:7], per_batch=3, seed=5)
    model.train()
    tx, ty = tiny_data.split("train")
    value = term(model, _batch(model, tx[:8], ty[:8]))
    idx = twin.next_indices()
    assert len(idx) == 3
    expected = F.cross_entropy(model(x[:7][idx]), y[:7][idx])
    assert torch.allclose(value, expected, atol=1e-6)
    # not the CE of the training batch, and not the CE of other selected rows
    assert not torch.allclose(value, F.cross_entropy(model(tx[:8]), ty[:8]))
    value.backward()
    assert model.conv1.weight.grad is not None and float(model.conv1.weight.grad.abs().sum()) > 0


def test_loss_cycles_through_every_selected_example_before_repeating(tiny_data):
    x, y = tiny_data.split("pool")
    term = SelectedExamplesLoss(x[:6], y[:6], per_batch=4, seed=0)
    first = torch.cat([term.next_indices() for _ in range(3)])  # 12 draws = two full passes
    assert sorted(first[:6].tolist()) == list(range(6))
    assert sorted(first[6:].tolist()) == list(range(6))
    term.reset()
    assert torch.equal(torch.cat([term.next_indices() for _ in range(3)]), first)
    # more per batch than selected: repeats across passes only
    big = SelectedExamplesLoss(x[:3], y[:3], per_batch=7, seed=0)
    assert np.bincount(big.next_indices().numpy(), minlength=3).tolist() in ([3, 2, 2], [2, 3, 2], [2, 2, 3])


def test_weights_make_the_loss_the_mean_ce_over_one_mixed_batch(tiny_data):
    plan = plan_retrain(tiny_data, tiny_data.ids("pool")[:5], SMALL)
    assert set(plan.weights) == {"cls", KIND}
    assert plan.weights["cls"] == pytest.approx(12 / 16) and plan.weights[KIND] == pytest.approx(4 / 16)
    model = build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0)
    fx, fy = plan.train[0][:12], plan.train[1][:12]
    sx, sy = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    mixed = F.cross_entropy(model(torch.cat([fx, sx])), torch.cat([fy, sy]))
    parts = plan.weights["cls"] * F.cross_entropy(model(fx), fy) + plan.weights[KIND] * F.cross_entropy(model(sx), sy)
    assert torch.allclose(mixed, parts, atol=1e-6)


# ----------------------------------------------------------------------------- plan
def test_plan_runs_exactly_iterations_steps_with_fill_from_the_train_split_only(tiny_data):
    selected = tiny_data.ids("pool")[:5]
    plan = plan_retrain(tiny_data, selected, SMALL)
    train_ids = set(tiny_data.ids("train").tolist())
    assert len(plan.train[0]) == len(plan.train[1]) == len(plan.train_ids) == 12 * 12
    assert set(plan.train_ids.tolist()) <= train_ids
    assert not set(plan.train_ids.tolist()) & set(selected.tolist())
    assert torch.equal(plan.train[0], tiny_data.images[plan.train_ids])
    assert torch.equal(plan.train[1], tiny_data.labels[plan.train_ids])
    # 144 fill examples from 48 training ones: three full passes, each example exactly 3 times
    assert np.bincount(plan.train_ids.numpy())[sorted(train_ids)].tolist() == [3] * 48
    assert plan.config.epochs == 1 and plan.config.batch_size == 12 and plan.steps == 12
    assert plan.config.lr == SMALL.train.lr and plan.config.seed == SMALL.train.seed
    assert plan.selected_ids.tolist() == sorted(selected.tolist())
    assert plan.feedback()["kind"] == KIND and plan.feedback()["example_ids"] == sorted(selected.tolist())

    model = build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0)
    steps = _Steps()
    result = retrain_on_selection(model, tiny_data, selected, SMALL, callbacks=[steps])
    assert result.steps == 12 and len(steps.steps) == 12
    assert all(KIND in s.terms for s in steps.steps)
    assert len(result.history) == 1 and result.history[0].val_acc is not None


def test_plan_ids_can_come_from_any_split_and_duplicates_count_once(tiny_data):
    ids = [int(tiny_data.ids("test")[0]), int(tiny_data.ids("train")[0]), int(tiny_data.ids("test")[0])]
    plan = plan_retrain(tiny_data, np.array(ids), SMALL)
    loss = plan.loss_terms[KIND]
    assert len(loss) == 2
    assert torch.equal(loss.labels, tiny_data.labels[torch.as_tensor(sorted(set(ids)))])


# ----------------------------------------------------------------------------- retraining
def test_retraining_makes_mislabelled_selected_examples_predicted_as_their_labels(tiny_data):
    model = _trained(tiny_data)
    pool = tiny_data.ids("pool")
    selected = pool[tiny_data.labels[torch.as_tensor(pool)].numpy() != 0][:6]
    sel_t = torch.as_tensor(selected)
    # deliberately mislabel the selection: mark each with a vertical stripe no training image
    # has and call it class 0; the base model still sees its horizontal bar's class
    data = copy.deepcopy(tiny_data)
    data.images[sel_t, :, :, :3] = 1.0
    data.labels[sel_t] = 0
    preds_before = predict_ids(model, data, selected)
    assert (preds_before == tiny_data.labels[sel_t].numpy()).all()
    val_before = evaluate(model, *data.split("val")).accuracy

    settings = RetrainSettings(iterations=40, selected_per_batch=4, train=dataclasses.replace(RETRAIN, batch_size=16, lr=0.02, seed=0))
    tuned = copy.deepcopy(model)
    retrain_on_selection(tuned, data, selected, settings)
    preds_after = predict_ids(tuned, data, selected)
    report = selection_report(data.labels[sel_t].numpy(), preds_before, preds_after)
    assert report["wrong_before"] == 6 and report["fixed"] == 6 and report["fixed_fraction"] == 1.0
    assert evaluate(tuned, *data.split("val")).accuracy >= val_before - 0.1  # the rest is kept

    # plain training on random batches (no selection) leaves them as they were
    baseline = copy.deepcopy(model)
    fit(baseline, data.split("train"), None, config=TrainConfig(epochs=10, batch_size=16, lr=0.02))
    assert (predict_ids(baseline, data, selected) == preds_before).all()


def test_retraining_is_deterministic_under_a_seed(tiny_data):
    model = build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0)
    selected = tiny_data.ids("pool")[:5]
    a, b, c = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    retrain_on_selection(a, tiny_data, selected, SMALL)
    retrain_on_selection(b, tiny_data, selected, SMALL)
    retrain_on_selection(c, tiny_data, selected, SMALL.seeded(1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    p1, p2 = plan_retrain(tiny_data, selected, SMALL), plan_retrain(tiny_data, selected, SMALL)
    assert torch.equal(p1.train_ids, p2.train_ids)
    assert not torch.equal(p1.train_ids, plan_retrain(tiny_data, selected, SMALL.seeded(1)).train_ids)


# ----------------------------------------------------------------------------- helpers
def test_most_confused_pair_counts_both_directions():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    preds = np.array([0, 1, 1, 1, 2, 1, 1, 0, 3, 3])
    # mistakes: 0->1 twice, 1->2 once, 2->1 twice, 2->0 once: (1, 2) has 3, (0, 1) has 2
    assert most_confused_pair(labels, preds) == (1, 2)
    # one direction only, and the pair comes back ordered
    assert most_confused_pair(np.array([3, 3, 0]), np.array([1, 1, 0])) == (1, 3)
    # ties go to the smallest pair
    assert most_confused_pair(np.array([0, 2, 3]), np.array([1, 3, 2])) == (2, 3)
    assert most_confused_pair(np.array([2, 0]), np.array([3, 1])) == (0, 1)
    with pytest.raises(ValueError, match="no mistake"):
        most_confused_pair(np.array([0, 1, 2]), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="labels but"):
        most_confused_pair(np.array([0, 1]), np.array([0]))


def test_box_select_is_inclusive_and_takes_bounds_in_any_order():
    coords = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [1.0, 3.0], [-1.0, 1.0], [1.5, 0.5]])
    assert box_select(coords, (0.0, 2.0, 0.0, 2.0)).tolist() == [0, 1, 2, 5]
    assert box_select(coords, (2.0, 0.0, 2.0, 0.0)).tolist() == [0, 1, 2, 5]
    assert box_select(coords, (0.5, 1.5, 0.5, 3.0)).tolist() == [1, 3, 5]
    assert box_select(coords, (5.0, 6.0, 5.0, 6.0)).tolist() == []
    assert box_select(coords, (1.0, 1.0, 1.0, 1.0)).tolist() == [1]
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        box_select(np.zeros((3, 3)), (0, 1, 0, 1))
    with pytest.raises(ValueError, match="x0, x1, y0, y1"):
        box_select(coords, (0, 1, 0))  # type: ignore[arg-type]


def test_selection_report_counts_fixed_and_broken():
    labels = np.array([0, 1, 2, 3, 0])
    before = np.array([1, 1, 0, 3, 2])  # wrong: 0, 2, 4
    after = np.array([0, 0, 2, 3, 2])  # fixed 0 and 2; broke 1; 4 still wrong
    r = selection_report(labels, before, after)
    assert r == {"n": 5, "wrong_before": 3, "right_before": 2, "right_after": 3, "fixed": 2, "broken": 1,
                 "fixed_fraction": pytest.approx(2 / 3), "right_after_fraction": pytest.approx(3 / 5)}
    assert np.isnan(selection_report(labels, labels, labels)["fixed_fraction"])
    with pytest.raises(ValueError, match="Lengths differ"):
        selection_report(labels, before, after[:4])


# ----------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_a_clear_message(tiny_data):
    with pytest.raises(ValueError, match="selection is empty"):
        plan_retrain(tiny_data, [], SMALL)
    with pytest.raises(ValueError, match=r"Unknown example ids 96"):
        plan_retrain(tiny_data, [0, 96], SMALL)
    with pytest.raises(ValueError, match=r"Unknown example ids -1"):
        plan_retrain(tiny_data, [-1, 3], SMALL)
    with pytest.raises(ValueError, match="must be integers"):
        plan_retrain(tiny_data, [0.5], SMALL)
    with pytest.raises(ValueError, match="smaller than batch_size"):
        RetrainSettings(selected_per_batch=16, train=dataclasses.replace(RETRAIN, batch_size=16))
    with pytest.raises(ValueError, match="iterations must be at least 1"):
        RetrainSettings(iterations=0)
    with pytest.raises(ValueError, match="selected_per_batch must be at least 1"):
        RetrainSettings(selected_per_batch=0)
    with pytest.raises(ValueError, match="lr must be positive"):
        RetrainSettings(train=dataclasses.replace(RETRAIN, lr=0.0))
    empty_train = copy.deepcopy(tiny_data)
    empty_train.splits["train"] = np.zeros(0, np.int64)
    with pytest.raises(ValueError, match="train split is empty"):
        plan_retrain(empty_train, [0], SMALL)
    x, y = tiny_data.split("pool")
    with pytest.raises(ValueError, match="at least one selected"):
        SelectedExamplesLoss(x[:0], y[:0], per_batch=4)
