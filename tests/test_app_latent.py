"""AppTest tests of the Latent space page: selection, moves, undo/redo, update and reset."""
from __future__ import annotations

import time
from pathlib import Path

from apptest_helpers import ROOT, app_workspace, new_app, no_exceptions, workbench_of  # noqa: F401  (fixture)

from core.latent_workspace import RESULT_KEY, load_moves

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


def test_preparing_the_workspace_reports_its_steps(app_workspace, monkeypatch):
    """Issue 29: the waits of a first visit (features of the training sample, the PCA, the
    pool's features, the projection) report k / n to the page's progress bar."""
    import core.latent_workspace as lw

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
    assert {"Computing training features", "Computing pool features", "Projecting into the workspace"} <= steps \
        or {"Computing pool features", "Projecting into the workspace"} <= steps, steps
    pool = [(d, t) for s, d, t in seen if s == "Computing pool features"]
    assert pool[0][0] == 0 and pool[-1][0] == pool[-1][1] == len(at.session_state["lat-view"].ids)
    assert not at.status  # the box is gone once the page is ready


def test_result_window_shows_only_latent_updates_of_the_current_version(app_workspace):
    """Issue 13: a Home training run is not drawn in the result window, and a saved result
    of another version is not drawn on this version's projection."""
    from core.engine import TrainConfig

    at = _open(app_workspace)
    wb = workbench_of(at)
    job = wb.start_training(TrainConfig(epochs=1, batch_size=256), description="home run")
    assert job.wait(120) and job.status == "done"
    wb.put_state(RESULT_KEY, {"version": wb.current_version - 1, "moved": [], "targets": {}, "before_coords": {}})
    at.run()
    no_exceptions(at)
    texts = " ".join(str(x.value) for x in list(at.caption) + list(at.info) + list(at.success))
    assert "home run" not in texts and "Finished" not in texts
    assert f"the current version is v{wb.current_version}" in texts
    assert any("Press **Update**" in i.value for i in at.info)
    wb.put_state(RESULT_KEY, None)
