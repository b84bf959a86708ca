"""AppTest tests of the Latent space page: selection, moves, undo/redo, update and reset."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from apptest_helpers import ROOT, app_workspace, new_app, no_exceptions, workbench_of  # noqa: F401  (fixture)

from core.feedback.latent.workflow import RESULT_KEY, load_moves
from core.session.runs import JobOptions

pytestmark = pytest.mark.slow  # every test here takes over ~1.5 s: out of the fast lane

PAGE = str(Path(ROOT) / "pages" / "latent.py")


def _open(ws):
    at = new_app(ws).run()
    at.switch_page(PAGE).run()
    no_exceptions(at)
    return at


def _select(at, example_ids):
    """What the plotly component returns for a box selection of these points."""
    key = f"lat-chart-{at.session_state['lat-chart-n']}"
    at.session_state[key] = {"selection": {"points": [{"customdata": int(e), "curve_number": 0, "point_index": 0}
                                                      for e in example_ids], "point_indices": [], "box": [], "lasso": []}}
    return at.run()


def _open_again(at):
    """A refresh: a new session on the same ?wb= (same server, same registry)."""
    from streamlit.testing.v1 import AppTest

    again = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=60)
    again.query_params["wb"] = workbench_of(at).id
    again.run()
    again.switch_page(PAGE).run()
    no_exceptions(again)
    return again


def test_box_selection_and_move_to_centroid_is_saved_before_shown(app_workspace):
    at = _open(app_workspace)
    wb = workbench_of(at)
    view = at.session_state["lat-view"]
    wrong = view.ids[view.wrong][:3].tolist() or view.ids[:3].tolist()
    _select(at, wrong)
    no_exceptions(at)
    assert any(f"{len(wrong)} selected" in m.value for m in at.markdown)
    chart_before = at.session_state["lat-chart-n"]
    at.selectbox(key="lat-target-class").set_value(wb.data.classes[1])
    at.button(key="lat-move-centroid").click().run()
    no_exceptions(at)
    saved = load_moves(wb)
    assert sorted(saved.moves) == sorted(wrong)
    assert any(f"Moves: {len(wrong)}" in m.value for m in at.markdown)
    # the same chart (its zoom survives: issue 13); the selection just moved is not offered again
    assert at.session_state["lat-chart-n"] == chart_before
    assert not any("selected" in m.value for m in at.markdown)

    at.button(key="lat-undo").click().run()
    assert len(load_moves(wb)) == 0
    at.button(key="lat-redo").click().run()
    assert sorted(load_moves(wb).moves) == sorted(wrong)
    at.button(key="lat-clear").click().run()
    assert len(load_moves(wb)) == 0
    no_exceptions(at)


def test_update_makes_a_version_and_a_summary_then_reset(app_workspace):
    """Issue 29: the result counts the moved mistakes only (a moved point the model already
    got right is not "now right"), and after the Update its moves are history: Undo is off,
    says why, and stays off after a refresh; Update too, until a new move."""
    at = _open(app_workspace)
    wb = workbench_of(at)
    start = wb.current_version
    view = at.session_state["lat-view"]
    picked = [int(view.ids[view.wrong][0]), int(view.ids[~view.wrong][0])]  # one mistake, one right
    _select(at, picked)
    at.number_input(key="lat-dx").set_value(1.0).run()  # the offset button is enabled once dx != 0
    at.button(key="lat-move-offset").click().run()
    assert len(load_moves(wb)) == 2
    at.number_input(key="lat-epochs").set_value(1)
    at.button(key="lat-update").click().run()
    no_exceptions(at)
    job = wb.jobs.current
    deadline = time.time() + 180
    while job.running and time.time() < deadline:
        time.sleep(0.2)
    assert job.status == "done", job.error
    at.run()
    at.run()
    no_exceptions(at)
    result = wb.get_state(RESULT_KEY)  # in the store, not a JSON side file
    assert not list(wb.store.workbench_dir(wb.id).glob("*.json"))
    assert result["moved_total"] == 2 and result["version"] == wb.current_version == start + 1
    assert result["mistakes"] == 1 and result["right_before"] == 1
    labels = {m.label: m.value for m in at.metric}
    assert "Moved images now right" not in labels
    assert labels["Moved mistakes now right"] in ("0 / 1", "1 / 1") and labels["Version"] == f"v{start + 1}"
    assert any("already got right" in c.value for c in at.caption)
    assert len(load_moves(wb)) == 0  # the moves went into the version's feedback
    assert not _stale_warning(at)  # the page's own Update is no "other version"
    assert wb.versions()[-1].feedback["kind"] == "latent"

    def undo_is_history(app, redo: bool = False):
        assert app.button(key="lat-undo").disabled and app.button(key="lat-redo").disabled is not redo
        assert app.button(key="lat-update").disabled
        assert any("takes back only moves not yet applied" in c.value and f"restore v{start}" in c.value
                   for c in app.caption), [c.value for c in app.caption]

    undo_is_history(at)
    fresh = _open_again(at)  # the history is in the store: a refresh does not bring the moves back
    undo_is_history(fresh)
    assert len(load_moves(wb)) == 0

    # a new move can be undone, back to the empty list, and no further
    view = fresh.session_state["lat-view"]
    _select(fresh, [int(view.ids[1])])
    fresh.number_input(key="lat-dx").set_value(0.5).run()
    fresh.button(key="lat-move-offset").click().run()
    assert len(load_moves(wb)) == 1 and not fresh.button(key="lat-undo").disabled
    fresh.button(key="lat-undo").click().run()
    assert len(load_moves(wb)) == 0
    undo_is_history(fresh, redo=True)  # the new move can be redone; the applied ones are still history
    at.run()

    at.button(key="lat-reset").click().run()
    no_exceptions(at)
    assert wb.current_version == start and wb.get_state(RESULT_KEY) is None
    assert at.button(key="lat-undo").disabled  # no way back to moves made on the model just left


def test_preparing_the_map_reports_its_steps(app_workspace, monkeypatch):
    """Issue 29: the waits of a first visit (features of the training sample, the PCA, the
    pool's features, the projection) report k / n to the page's progress bar."""
    import core.feedback.latent.workflow as lw

    seen: list[tuple] = []

    def recording(real):
        def wrapper(*args, progress=None, **kwargs):
            assert progress is not None, f"{real.__name__} was called without a progress callback"

            def both(step, done, total):
                seen.append((step, done, total))
                progress(step, done, total)  # the page's own callback draws without failing
            return real(*args, progress=both, **kwargs)
        return wrapper

    real_view = lw.latent_view
    monkeypatch.setattr(lw, "load_or_fit_projection", recording(lw.load_or_fit_projection))
    monkeypatch.setattr(lw, "latent_view", lambda wb, branch, progress=None: recording(real_view)(
        wb, branch, progress=progress))
    at = _open(app_workspace)
    no_exceptions(at)
    steps = {s for s, _, _ in seen}
    assert {"Computing training features", "Computing pool features", "Projecting onto the map"} <= steps \
        or {"Computing pool features", "Projecting onto the map"} <= steps, steps
    pool = [(d, t) for s, d, t in seen if s == "Computing pool features"]
    assert pool[0][0] == 0 and pool[-1][0] == pool[-1][1] == len(at.session_state["lat-view"].ids)
    assert not at.status  # the box is gone once the page is ready


def test_result_window_shows_only_latent_updates_of_the_current_version(app_workspace):
    """Issue 13: a Home training run is not drawn in the result window, and a saved result
    of another version is not drawn on this version's projection."""
    from core.engine import TrainConfig

    at = _open(app_workspace)
    wb = workbench_of(at)
    job = wb.train(TrainConfig(epochs=1, batch_size=256), JobOptions("home run"))
    assert job.wait(120) and job.status == "done"
    wb.put_state(RESULT_KEY, {"version": wb.current_version - 1, "moved": [], "targets": {}, "before_coords": {}})
    at.run()
    no_exceptions(at)
    texts = " ".join(str(x.value) for x in list(at.caption) + list(at.info) + list(at.success))
    assert "home run" not in texts and "Finished" not in texts
    assert f"the current version is v{wb.current_version}" in texts
    assert any("Press **Update**" in i.value for i in at.info)
    wb.put_state(RESULT_KEY, None)


def _move_sources(at):
    """The start of each move line in the map chart (the trace named "moves")."""
    import json

    key = f"lat-chart-{at.session_state['lat-chart-n']}"
    chart = next(c for c in at.get("plotly_chart") if c.proto.id and key in c.proto.id)
    traces = [t for t in json.loads(chart.proto.spec)["data"] if t.get("name") == "moves"]
    return [(x, y) for t in traces for x, y in list(zip(t["x"], t["y"]))[::3]]


def _stale_warning(at):
    return [w.value for w in at.warning if "made on v" in w.value]


def test_moves_made_on_another_version_wait_for_keep_or_discard(app_workspace):
    """Issue 29: with moves pending on v1, another tab restores v0. The page says so in one
    line, draws no arrows from v1's positions, and Update stays off (a click does nothing)
    until the person keeps the moves on v0 (sources re-based onto v0's positions of the same
    points, targets kept, one undo step) or discards them (undoable); the store follows."""
    import copy

    import numpy as np
    import torch

    at = _open(app_workspace)
    wb = workbench_of(at)
    start = wb.current_version
    tuned = copy.deepcopy(wb.model)
    with torch.no_grad():
        next(tuned.parameters()).add_(0.05)
    wb.commit_version(tuned, "trained in another tab")  # v1: the projection moves
    at.run()
    no_exceptions(at)
    v1 = at.session_state["lat-view"]
    assert v1.version == start + 1 and not _stale_warning(at)
    picked = [int(e) for e in v1.ids[:2]]
    _select(at, picked)
    at.number_input(key="lat-dx").set_value(1.0).run()
    at.button(key="lat-move-offset").click().run()
    saved = load_moves(wb)
    assert sorted(saved.moves) == sorted(picked) and saved.version == start + 1
    targets = {e: m.target for e, m in saved.moves.items()}

    sources = _move_sources(at)
    assert sources == pytest.approx([tuple(v1.coords[v1.index_of()[e]]) for e in saved.moves])

    wb.restore(start)  # another tab (or Home's version table) goes back to v0 ...
    at.button(key="lat-update").click().run()  # ... just before this tab's Update click: nothing starts
    no_exceptions(at)
    assert wb.jobs.current is None or wb.jobs.current.kind != "latent"
    v0 = at.session_state["lat-view"]
    assert v0.version == start
    assert _stale_warning(at) == [f"**2 moves were made on v{start + 1}; the model is now v{start}.** Keep or discard "
                                  "them before **Update**."]
    assert at.button(key="lat-update").disabled and at.button(key="lat-clear").disabled
    _select(at, [int(v0.ids[3])])  # no new move on top of v1's until the choice is made
    assert at.button(key="lat-move-offset").disabled and at.button(key="lat-move-centroid").disabled
    assert _move_sources(at) == []  # no lines from v1's positions drawn on v0's scatter
    assert wb.current_version == start and load_moves(wb).version == start + 1

    at.button(key="lat-stale-discard").click().run()
    no_exceptions(at)
    assert len(load_moves(wb)) == 0 and not _stale_warning(at)
    at.button(key="lat-undo").click().run()  # undoable: the moves come back, still made on v1
    assert sorted(load_moves(wb).moves) == sorted(picked) and load_moves(wb).version == start + 1
    assert _stale_warning(at) and at.button(key="lat-update").disabled

    at.button(key="lat-stale-keep").click().run()
    no_exceptions(at)
    kept = load_moves(wb)
    idx = v0.index_of()
    assert kept.version == start and {e: m.target for e, m in kept.moves.items()} == targets
    for e, m in kept.moves.items():
        assert m.source == pytest.approx(tuple(v0.coords[idx[e]]))
    assert not np.allclose([kept.moves[e].source for e in picked], [v1.coords[v1.index_of()[e]] for e in picked])
    assert not _stale_warning(at) and not at.button(key="lat-update").disabled
    assert _move_sources(at) == pytest.approx([tuple(v0.coords[idx[e]]) for e in kept.moves])
    at.button(key="lat-undo").click().run()  # one undo step: back to the moves made on v1, and the question
    assert load_moves(wb).version == start + 1 and _stale_warning(at)
    at.button(key="lat-redo").click().run()
    assert load_moves(wb).version == start and not _stale_warning(at)
    assert at.button(key="lat-reset").label == f"Reset to v{start}"
    no_exceptions(at)


def test_moves_saved_without_a_version_count_as_made_on_the_current_one(app_workspace):
    """Issue 29: moves an older release saved (no version) are taken as made on the version
    shown, without a message, and from then on carry it."""
    from core.feedback.latent.workflow import HISTORY_KEY

    at = _open(app_workspace)
    wb = workbench_of(at)
    e = int(at.session_state["lat-view"].ids[0])
    wb.replace_annotations("latent", [(e, {"source": [0.0, 0.0], "target": [1.0, 1.0]})],
                           state={HISTORY_KEY: {"undo": [[]], "redo": []}})
    at.run()
    no_exceptions(at)
    assert not _stale_warning(at) and not at.button(key="lat-update").disabled
    saved = load_moves(wb)
    assert list(saved.moves) == [e] and saved.version == wb.current_version
    assert saved.undo_versions == [wb.current_version]
