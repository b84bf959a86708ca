"""The latent workflow's bookkeeping (issue 29): what an Update counts as fixed, what Undo can
bring back after an Update, and the progress the slow steps report."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

import core.feedback.latent.workflow as lw
from core.engine import predict
from core.feedback.latent.loss import Move, MoveList, candidates
from core.feedback.latent.workflow import (
    LatentView,
    finish_update,
    heldout_metrics,
    latent_view,
    load_moves,
    load_or_fit_projection,
    moved_counts,
    pending_update,
    save_moves,
    update_summary,
)
from core.models import build_model
from core.session.store import Store
from core.session.workbench import Workbench


def _view(version, labels, preds, coords=None):
    labels, preds = np.asarray(labels), np.asarray(preds)
    n = len(labels)
    coords = np.zeros((n, 2)) if coords is None else np.asarray(coords, float)
    probs = np.eye(max(labels.max(), preds.max()) + 1)[preds]
    return LatentView(version, np.arange(100, 100 + n), coords, labels, preds, probs, 1.0)


def test_result_counts_only_the_moved_mistakes():
    """Seven points moved: four mistakes and three neighbours the model already got right.
    All seven are right after the Update: that is 4 / 4 mistakes fixed, not 7 / 7."""
    labels = [0, 0, 0, 0, 1, 1, 1, 2]  # the last point is not moved
    before = _view(0, labels, [1, 1, 2, 2, 1, 1, 1, 2])  # rows 0-3 wrong, rows 4-6 right
    after = _view(1, labels, [0, 0, 0, 0, 1, 1, 1, 2])
    moves = MoveList({100 + i: Move(100 + i, (0, 0), (1, 1)) for i in range(7)})
    summary = update_summary(None, before, after, moves, {"test_acc": 0.5}, {"test_acc": 0.6})
    assert summary["mistakes"] == 4 and summary["mistakes_fixed"] == 4
    assert summary["right_before"] == 3 and summary["right_broken"] == 0
    assert summary["moved_total"] == 7

    # one mistake stays wrong and one right neighbour breaks: neither changes the other's count
    after2 = _view(1, labels, [0, 0, 0, 1, 1, 1, 0, 2])
    counts = moved_counts(update_summary(None, before, after2, moves, {}, {})["moved"])
    assert counts == {"moved_total": 7, "mistakes": 4, "mistakes_fixed": 3, "right_before": 3, "right_broken": 1}


def _workbench(workspace, tiny_data):
    model = build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0)
    return Workbench.create(Store(workspace), tiny_data, "tiny", model)


def test_after_an_update_undo_cannot_bring_back_the_applied_moves(workspace, tiny_data):
    """The applied moves leave the list with their whole undo/redo history, also after a
    reload from the store; a move made while the update ran stays, drawn from its new place."""
    wb = _workbench(workspace, tiny_data)
    branch = load_or_fit_projection(wb)
    view = latent_view(wb, branch)
    a, b, c = (int(e) for e in view.ids[:3])
    moves = MoveList()
    moves.add([Move(a, tuple(view.coords[0]), (2.0, 2.0))])
    moves.add([Move(b, tuple(view.coords[1]), (-2.0, 1.0))])
    save_moves(wb, moves)
    pending = pending_update(view, moves, heldout_metrics(wb), wb.current_version)
    # a move made while the fine-tune ran (another tab): not applied, so it must survive
    during = load_moves(wb)
    during.add([Move(c, tuple(view.coords[2]), (0.5, 0.5))])
    save_moves(wb, during)
    tuned = copy.deepcopy(wb.model)
    with torch.no_grad():
        next(tuned.parameters()).add_(0.05)  # another model: the projection moves
    wb.commit_version(tuned, "latent edit: 2 moves")  # what the Update's job does
    after = latent_view(wb, branch)
    summary = finish_update(wb, pending, after)

    saved = load_moves(wb)
    assert list(saved.moves) == [c]
    assert saved.moves[c].target == (0.5, 0.5)
    assert saved.moves[c].source == pytest.approx(tuple(after.coords[2]))  # the new projection's place
    assert saved.undo_stack == [] and saved.redo_stack == []
    assert not saved.undo()  # nothing of the old projection comes back
    assert saved.version == 1  # the kept move belongs to the new version now
    assert summary["version"] == 1 and summary["version_before"] == 0


def test_reset_history_keeps_only_what_is_given():
    ml = MoveList()
    ml.add([Move(1, (0, 0), (1, 1))])
    ml.add([Move(2, (0, 0), (1, 1))])
    ml.undo()
    ml.reset_history([Move(3, (0, 0), (2, 2))])
    assert list(ml.moves) == [3] and not ml.undo_stack and not ml.redo_stack
    ml.reset_history()
    assert len(ml) == 0 and not ml.undo()


def test_slow_steps_report_progress_step_by_step(workspace, tiny_data, monkeypatch):
    """Features k / n in chunks, then the PCA or the projection; the result is the same as in
    one pass."""
    monkeypatch.setattr(lw, "PROGRESS_CHUNK", 8)
    wb = _workbench(workspace, tiny_data)
    calls = []
    branch = load_or_fit_projection(wb, progress=lambda *a: calls.append(a))
    n_train = len(tiny_data.ids("train"))
    steps = [c for c in calls if c[0] == "Computing training features"]
    assert [c[1] for c in steps] == [0, *range(8, n_train, 8), n_train] and all(c[2] == n_train for c in steps)
    assert calls[-1] == ("Fitting the 2D projection (PCA)", 1, 1)

    calls.clear()
    view = latent_view(wb, branch, progress=lambda *a: calls.append(a))
    n_pool = len(tiny_data.ids("pool"))
    pool_steps = [c for c in calls if c[0] == "Computing pool features"]
    assert pool_steps[0] == ("Computing pool features", 0, n_pool) and pool_steps[-1][1] == n_pool
    assert len(pool_steps) == 1 + -(-n_pool // 8)
    assert calls[-1] == ("Projecting onto the map", 1, 1)
    logits, feats = predict(wb.model, tiny_data.split("pool")[0], with_features=True)
    assert np.allclose(view.features, feats.numpy(), atol=1e-5)
    assert np.array_equal(view.preds, logits.argmax(1).numpy())


def test_heldout_metrics_come_from_the_version_record(workspace, tiny_data, monkeypatch):
    """Pressing Update does not evaluate the test split again: the version already holds it."""
    wb = _workbench(workspace, tiny_data)
    expected = wb.version(0).metrics
    monkeypatch.setattr(lw, "evaluate", lambda *a, **k: pytest.fail("evaluated the test split again"))
    got = heldout_metrics(wb)
    assert got == {"test_acc": expected["test_acc"], "test_per_class_acc": expected["test_per_class_acc"]}


def test_candidates_match_the_brute_force_neighbours():
    rng = np.random.default_rng(3)
    coords = rng.normal(size=(300, 2))
    probs = rng.dirichlet(np.ones(5), 300)
    labels = rng.integers(0, 5, 300)
    got = candidates(coords, probs, labels, k=10, top=20)
    d = ((coords[:, None] - coords[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    share = (labels[np.argsort(d, 1)[:, :10]] != labels[:, None]).mean(1)
    foreign = np.argsort(-share, kind="stable")[:20]
    assert np.array_equal(got["foreign"], foreign[share[foreign] > 0.5])
    srt = np.sort(probs, 1)
    assert np.array_equal(got["uncertain"], np.argsort(srt[:, -1] - srt[:, -2])[:20])
    one = candidates(coords[:1], probs[:1], labels[:1])
    assert one["foreign"].size == 0 and one["uncertain"].tolist() == [0]


def test_an_empty_pool_gives_an_empty_view(workspace, tiny_data):
    """A dataset whose pool split is empty gets an empty view (the page then says so), not a
    traceback from projecting no features."""
    tiny_data.splits["pool"] = np.zeros(0, dtype=np.int64)
    wb = _workbench(workspace, tiny_data)
    view = latent_view(wb, load_or_fit_projection(wb))
    assert len(view.ids) == 0 and view.coords.shape == (0, 2) and np.isnan(view.r2)


def test_moves_remember_their_version_and_keep_on_rebases_them(workspace, tiny_data):
    """Issue 29: the moves are saved with the version they were made on (in the same
    transaction as the moves); keep_on moves each source to the same point's position in the
    new version's projection, keeps the targets and is one undo step (Undo brings back the
    moves with their old version); discard is undoable alike; Update refuses stale moves."""
    from core.feedback.latent.workflow import HISTORY_KEY, VersionedMoveList, discard, keep_on, start_update, UpdateSettings

    wb = _workbench(workspace, tiny_data)
    branch = load_or_fit_projection(wb)
    v0 = latent_view(wb, branch)
    a, b = (int(e) for e in v0.ids[:2])
    moves = load_moves(wb)
    moves.add([Move(a, tuple(v0.coords[0]), (2.0, 2.0)), Move(b, tuple(v0.coords[1]), (-1.0, 0.5))], on=v0.version)
    save_moves(wb, moves)
    assert wb.get_state(HISTORY_KEY)["version"] == 0  # on disk, with the moves
    saved = load_moves(wb)
    assert isinstance(saved, VersionedMoveList) and saved.version == 0 and not saved.made_on_other_than(0)

    tuned = copy.deepcopy(wb.model)
    with torch.no_grad():
        next(tuned.parameters()).add_(0.05)
    wb.commit_version(tuned, "another tab trained")  # v1: the projection moves
    v1 = latent_view(wb, branch)
    assert not np.allclose(v1.coords[:2], v0.coords[:2])
    saved = load_moves(wb)
    assert saved.made_on_other_than(v1.version)
    with pytest.raises(ValueError, match="made on v0"):
        saved.add([Move(int(v1.ids[2]), tuple(v1.coords[2]), (0.0, 0.0))], on=v1.version)
    with pytest.raises(ValueError, match="made on v0"):
        start_update(wb, branch, saved, v1, UpdateSettings(dataclasses.replace(lw.UPDATE, epochs=1)))

    assert keep_on(saved, v1) == 2
    save_moves(wb, saved)
    kept = load_moves(wb)
    assert kept.version == 1 and not kept.made_on_other_than(1)
    assert kept.moves[a].source == pytest.approx(tuple(v1.coords[0])) and kept.moves[a].target == (2.0, 2.0)
    assert kept.moves[b].source == pytest.approx(tuple(v1.coords[1])) and kept.moves[b].target == (-1.0, 0.5)
    assert kept.undo()  # one step back: the moves as made on v0, with their version
    assert kept.version == 0 and kept.moves[a].source == pytest.approx(tuple(v0.coords[0]))
    assert kept.redo() and kept.version == 1

    discard(kept, 1)
    save_moves(wb, kept)
    gone = load_moves(wb)
    assert len(gone) == 0 and not gone.made_on_other_than(1)
    assert gone.undo() and gone.version == 1 and set(gone.moves) == {a, b}  # the kept ones come back


def test_moves_of_an_older_release_count_as_made_on_the_current_version(workspace, tiny_data):
    """A history saved without a version (older release): no version, so never stale."""
    from core.feedback.latent.workflow import HISTORY_KEY

    wb = _workbench(workspace, tiny_data)
    wb.replace_annotations("latent", [(int(tiny_data.ids("pool")[0]), {"source": [0, 0], "target": [1, 1]})],
                           state={HISTORY_KEY: {"undo": [[]], "redo": []}})
    moves = load_moves(wb)
    assert len(moves) == 1 and moves.version is None and moves.undo_versions == [None]
    assert not moves.made_on_other_than(0) and not moves.made_on_other_than(5)
    # read by a page that shows v3: taken as made on v3, and saved so
    shown = load_moves(wb, 3)
    assert shown.version == 3 and shown.undo_versions == [3] and not shown.made_on_other_than(3)
    again = load_moves(wb)
    assert again.version == 3 and again.undo_versions == [3] and again.made_on_other_than(4)


def test_centroid_targets_spread_around_the_class_centroid_and_refuse_an_absent_class():
    from types import SimpleNamespace

    coords = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [12.0, 10.0]])
    labels, preds = np.array([0, 0, 1, 1]), np.array([0, 0, 1, 0])
    view = SimpleNamespace(coords=coords, labels=labels, preds=preds, probs=np.zeros((4, 3)))
    targets = lw.centroid_targets(view, [7, 8, 9], 1, seed=3)
    # class 1's centroid over the points the model gets right: (10, 10) alone
    assert len(targets) == 3 and all(abs(x - 10) < 0.3 and abs(y - 10) < 0.3 for x, y in targets)
    assert len({t for t in targets}) == 3  # spread, not one pixel
    assert targets == lw.centroid_targets(view, [7, 8, 9], 1, seed=3)  # deterministic under the seed
    assert targets != lw.centroid_targets(view, [7, 8, 9], 1, seed=4)
    with pytest.raises(ValueError, match="no points on the map"):
        lw.centroid_targets(view, [7], 2)  # class 2 has no point
