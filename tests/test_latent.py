"""Latent moves (seed 000): projection branch, loss, move list, workflow on a workbench."""
from __future__ import annotations

import dataclasses

import copy

import numpy as np
import pytest
import torch

from core.engine import Batch, TrainConfig, fine_tune, predict
from core.feedback.latent.loss import (
    PAPER_WEIGHTS,
    LatentMoveLoss,
    Move,
    MoveList,
    candidates,
    class_centroids,
    implied_labels,
)
from core.feedback.latent.workflow import (
    UPDATE,
    UpdateSettings,
    latent_view,
    load_moves,
    load_or_fit_projection,
    save_moves,
    start_update,
)
from core.models import build_model
from core.feedback.latent.projection import fit_projection, projection_r2
from core.session.store import Store
from core.session.workbench import Workbench


def _trained(data, epochs=3):
    from core.engine import fit

    model = build_model("seed-cnn", 1, 16, data.num_classes, seed=0)
    fit(model, data.split("train"), None, config=TrainConfig(epochs=epochs, batch_size=16, lr=0.02))
    return model


def test_branch_reproduces_pca_on_held_out_features(tiny_data):
    model = _trained(tiny_data)
    _, train_f = predict(model, tiny_data.split("train")[0], with_features=True)
    _, pool_f = predict(model, tiny_data.split("pool")[0], with_features=True)
    branch = fit_projection(train_f.numpy())
    assert projection_r2(branch, pool_f.numpy()) > 0.999
    assert 0 < float(branch.explained_variance_ratio.sum()) <= 1
    # a branch that no longer computes its PCA (weights disturbed) is caught
    with torch.no_grad():
        branch.linear.weight.add_(torch.randn_like(branch.linear.weight))
    assert projection_r2(branch, pool_f.numpy()) < 0.9


def test_loss_is_differentiable_into_the_backbone(tiny_data):
    model = _trained(tiny_data, epochs=1)
    _, f = predict(model, tiny_data.split("train")[0], with_features=True)
    branch = fit_projection(f.numpy())
    x, y = tiny_data.split("pool")
    term = LatentMoveLoss(branch, x[:5], torch.zeros(5, 2))
    model.train()
    feats = model.features(x[:4])
    loss = term(model, Batch(x[:4], y[:4], torch.arange(4), feats, model.head(feats)))
    loss.backward()
    assert model.conv1.weight.grad is not None and float(model.conv1.weight.grad.abs().sum()) > 0
    assert all(not p.requires_grad for p in term.branch.parameters())  # the map's axes stay fixed


def test_fine_tune_moves_points_toward_targets_and_others_less(tiny_data):
    model = _trained(tiny_data)
    _, f = predict(model, tiny_data.split("train")[0], with_features=True)
    branch = fit_projection(f.numpy())
    pool_x, _ = tiny_data.split("pool")
    before = branch.project(model, pool_x)
    moved = np.arange(4)
    targets = torch.tensor(before[moved] + np.array([[2.0, -1.5]] * 4), dtype=torch.float32)
    tuned = copy.deepcopy(model)
    fine_tune(tuned, tiny_data, {"latent": LatentMoveLoss(branch, pool_x[moved], targets)},
              {"cls": 0.89, "latent": 0.11 * 10}, epochs=3, config=TrainConfig(lr=0.04, batch_size=16))
    after = branch.project(tuned, pool_x)
    d_before = np.linalg.norm(before[moved] - targets.numpy(), axis=1)
    d_after = np.linalg.norm(after[moved] - targets.numpy(), axis=1)
    assert (d_after < d_before).all()
    shift = np.linalg.norm(after - before, axis=1)
    rest = np.setdiff1d(np.arange(len(before)), moved)
    assert shift[moved].mean() > shift[rest].mean()


def test_move_list_undo_redo_clear_restore_exactly():
    ml = MoveList()
    ml.add([Move(1, (0, 0), (1, 1))])
    s1 = dict(ml.moves)
    ml.add([Move(2, (5, 5), (6, 6)), Move(3, (7, 7), (8, 8))])
    s2 = dict(ml.moves)
    ml.add([Move(1, (1, 1), (2, 2))])  # moving again keeps the original source
    assert ml.moves[1] == Move(1, (0, 0), (2, 2))
    s3 = dict(ml.moves)
    ml.clear()
    assert len(ml) == 0
    assert ml.undo() and ml.moves == s3
    assert ml.undo() and ml.moves == s2
    assert ml.undo() and ml.moves == s1
    assert ml.redo() and ml.moves == s2
    ml.add([Move(9, (0, 0), (0, 1))])
    assert not ml.redo()  # a new gesture drops the redo history
    assert ml.undo() and ml.moves == s2
    again = MoveList.from_items(ml.items())
    assert again.moves == ml.moves


def test_centroids_implied_labels_candidates():
    coords = np.array([[0, 0], [0.1, 0], [5, 5], [5.1, 5], [0.05, 0.02]], float)
    labels = np.array([0, 0, 1, 1, 1])
    preds = np.array([0, 0, 1, 1, 0])
    cent = class_centroids(coords, labels, preds, 3)
    assert np.allclose(cent[0], [0.05, 0]) and np.allclose(cent[1], [5.05, 5]) and np.isnan(cent[2]).all()
    assert implied_labels(np.array([[5, 5], [0, 0]]), coords, preds, k=2).tolist() == [1, 0]
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.55, 0.45]])
    cand = candidates(coords, probs, labels, k=2, top=2)
    assert cand["uncertain"][0] == 4
    assert 4 in cand["foreign"]  # a class-1 point among class-0 points


def test_workflow_on_a_workbench_persists_projection_moves_and_version(workspace, tiny_data):
    store = Store(workspace)
    wb = Workbench.create(store, tiny_data, "tiny", _trained(tiny_data))
    branch = load_or_fit_projection(wb)
    again = load_or_fit_projection(wb)
    assert torch.equal(branch.linear.weight, again.linear.weight)
    view = latent_view(wb, branch)
    assert view.coords.shape == (len(tiny_data.ids("pool")), 2) and view.r2 > 0.99
    ml = MoveList()
    e = int(view.ids[0])
    ml.add([Move(e, tuple(view.coords[0]), (3.0, 3.0))])
    save_moves(wb, ml)
    assert load_moves(wb).moves == ml.moves
    job = start_update(wb, branch, ml, view, UpdateSettings(dataclasses.replace(UPDATE, epochs=1, batch_size=16)))
    assert job.wait(60) and job.status == "done", job.error
    record = wb.versions()[-1]
    assert record.number == 1 and record.feedback["kind"] == "latent"
    assert record.feedback["moves"][0]["example_id"] == e
    with pytest.raises(ValueError, match="Move at least one point"):
        start_update(wb, branch, MoveList(), view, UpdateSettings())
    assert PAPER_WEIGHTS == {"cls": 0.89, "latent": 0.11}


def test_lift_targets_is_mean_of_nearest_features():
    from core.feedback.latent.loss import lift_targets

    coords = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], float)
    feats = np.array([[1, 0], [3, 0], [0, 5], [0, 7]], float)
    lifted = lift_targets(np.array([[0, 0.4], [10, 10.6]]), coords, feats, k=2)
    assert np.allclose(lifted, [[2, 0], [0, 6]])


def test_lifted_variant_pulls_features_toward_lifted_target(tiny_data):
    model = _trained(tiny_data)
    pool_x, _ = tiny_data.split("pool")
    _, f = predict(model, tiny_data.split("train")[0], with_features=True)
    branch = fit_projection(f.numpy())
    _, pool_f = predict(model, pool_x, with_features=True)
    moved = np.arange(3)
    target_feats = pool_f[-3:].clone()  # features of other examples
    targets = torch.tensor(branch.project(model, pool_x)[-3:], dtype=torch.float32)
    before = float((pool_f[moved] - target_feats).norm(dim=1).mean())
    tuned = copy.deepcopy(model)
    term = LatentMoveLoss(branch, pool_x[moved], targets, feature_targets=target_feats)
    fine_tune(tuned, tiny_data, {"latent": term}, {"cls": 0.89, "latent": 0.5}, epochs=3,
              config=TrainConfig(lr=0.04, batch_size=16))
    _, after_f = predict(tuned, pool_x[moved], with_features=True)
    assert float((after_f - target_feats).norm(dim=1).mean()) < before


def test_every_variant_builds_a_loss(workspace, tiny_data):
    from core.feedback.latent.loss import VARIANTS
    from core.feedback.latent.workflow import build_loss

    wb = Workbench.create(Store(workspace), tiny_data, "tiny", _trained(tiny_data, epochs=1))
    branch = load_or_fit_projection(wb)
    view = latent_view(wb, branch)
    ml = MoveList()
    ml.add([Move(int(view.ids[0]), tuple(view.coords[0]), (1.0, 1.0))])
    for variant in VARIANTS:
        term = build_loss(wb, branch, ml, view, variant)
        assert (term.implied_labels is not None) == (variant == "implied-label")
        assert (term.feature_targets is not None) == (variant == "lifted")
    with pytest.raises(ValueError, match="Unknown variant"):
        build_loss(wb, branch, ml, view, "magic")
