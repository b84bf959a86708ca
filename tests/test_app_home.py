"""AppTest tests of the entry script and the Home page."""
from __future__ import annotations

import time

import torch
import pytest

from apptest_helpers import app_workspace, new_app, no_exceptions, workbench_of  # noqa: F401  (fixture)

from core.engine import TrainConfig
from core.session.runs import JobOptions


def _texts(at) -> str:
    parts = [m.value for m in at.markdown] + [m.value for m in at.caption]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    parts += [e.value for e in at.error] + [w.value for w in at.warning] + [s.value for s in at.success]
    return "\n".join(str(p) for p in parts)


@pytest.mark.slow
def test_default_start_shows_accuracy_and_puts_id_in_url(app_workspace):
    at = new_app(app_workspace).run()
    no_exceptions(at)
    labels = {m.label: m.value for m in at.metric}
    assert labels["Test accuracy"].endswith("%") and float(labels["Test accuracy"][:-1]) > 10
    assert labels["Version"] == "v0"
    wb = workbench_of(at)
    assert at.query_params["wb"] == [wb.id] or at.query_params["wb"] == wb.id
    assert "Model version:** v0" in _texts(at)


@pytest.mark.slow
def test_dataset_switch_opens_new_workbench(app_workspace):
    at = new_app(app_workspace).run()
    first = workbench_of(at).id
    at.selectbox(key="sb-dataset").set_value("biased-digits")
    at.button(key="sb-open").click().run()
    no_exceptions(at)
    wb = workbench_of(at)
    assert wb.id != first and wb.data.name.startswith("biased-digits")
    assert wb.data.image_shape[0] == 3
    assert "untrained" in _texts(at)


def test_bad_folder_path_keeps_dataset_and_says_why(app_workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STEERBOARD_DATA_ROOTS", str(tmp_path))  # the current directory is a root only when listed
    at = new_app(app_workspace).run()
    before = workbench_of(at).id
    at.selectbox(key="sb-dataset").set_value("Folder or archive…")
    at.text_input(key="sb-folder").set_value("no-such-folder")
    at.button(key="sb-open").click().run()
    no_exceptions(at)
    assert workbench_of(at).id == before
    errors = " ".join(e.value for e in at.error)
    assert "Could not open that dataset" in errors and "no-such-folder" in errors and "no such file" in errors


def test_empty_folder_inside_root_is_a_readable_error(app_workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STEERBOARD_DATA_ROOTS", str(tmp_path))
    (tmp_path / "empty").mkdir()
    at = new_app(app_workspace).run()
    at.selectbox(key="sb-dataset").set_value("Folder or archive…")
    at.text_input(key="sb-folder").set_value("empty")
    at.button(key="sb-open").click().run()
    no_exceptions(at)
    errors = " ".join(e.value for e in at.error)
    assert "Could not open that dataset" in errors and "no images" in errors


def test_outside_root_path_is_refused(app_workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    at = new_app(app_workspace).run()
    before = workbench_of(at).id
    for path in ("/etc", "../../../../etc", str(tmp_path / ".." / "x")):
        at.selectbox(key="sb-dataset").set_value("Folder or archive…")
        at.text_input(key="sb-folder").set_value(path)
        at.button(key="sb-open").click().run()
        no_exceptions(at)
        assert workbench_of(at).id == before
        assert "outside the folders" in " ".join(e.value for e in at.error), path


@pytest.mark.slow
def test_restore_a_version_and_reopen_by_url(app_workspace):
    at = new_app(app_workspace).run()
    wb = workbench_of(at)
    job = wb.train(TrainConfig(epochs=1, lr=0.02), JobOptions("one more epoch"))
    assert job.wait(120) and job.status == "done", job.error
    at.run()
    no_exceptions(at)
    assert {m.label: m.value for m in at.metric}["Version"] == "v1"
    assert "Finished: version v1" in _texts(at) and _training_charts(at) == 1
    at.selectbox(key=_pick_key(wb)).set_value(0).run()
    at.button(key="versions-restore").click().run()
    no_exceptions(at)
    assert {m.label: m.value for m in at.metric}["Version"] == "v0"
    assert "Restored v0" in _texts(at)
    # issue 29: the finished job's banner and chart were about v1; after the restore they go, in every tab
    assert "Finished: version v1" not in _texts(at) and _training_charts(at) == 0
    other = new_app_tab(wb.id)
    assert "Finished: version v1" not in _texts(other) and _training_charts(other) == 0

    # a new session (a refresh, or after a restart) with the id in the URL finds the same workbench
    again = new_app(app_workspace, {"wb": wb.id}).run()
    no_exceptions(again)
    reopened = workbench_of(again)
    assert reopened.id == wb.id and reopened.current_version == 0
    assert [v.number for v in reopened.versions()] == [0, 1]


def _training_charts(at) -> int:
    """How many training charts (loss and accuracy per epoch) the page shows."""
    import json

    return sum(any(a.get("text") == "Accuracy per epoch" for a in json.loads(c.proto.spec)["layout"].get("annotations", []))
               for c in at.get("plotly_chart"))


def new_app_tab(wb_id: str):
    """Another tab of the same server on ``wb_id`` (the server-wide registry is kept)."""
    from streamlit.testing.v1 import AppTest

    from apptest_helpers import ENTRY

    tab = AppTest.from_file(ENTRY, default_timeout=60)
    tab.query_params["wb"] = wb_id
    return tab.run()


def _pick_key(wb) -> str:
    return f"versions-pick-{wb.current_version}-{len(wb.versions())}"


@pytest.mark.slow
def test_picker_follows_the_current_version_and_train_again_reproduces_it(app_workspace):
    """Issue 13: after a run the picker shows the new current version (not the one it first
    showed), and "Train again, same seed" retrains from the parent to identical weights."""
    at = new_app(app_workspace).run()
    wb = workbench_of(at)
    assert at.selectbox(key=_pick_key(wb)).value == wb.current_version
    start = wb.current_version
    job = wb.train(TrainConfig(epochs=1, lr=0.02, seed=77, device="cpu"), JobOptions("seeded"))
    assert job.wait(120) and job.status == "done", job.error
    at.run()
    no_exceptions(at)
    new = wb.current_version
    assert new == start + 1 and at.selectbox(key=_pick_key(wb)).value == new
    assert "77" in at.dataframe[0].value["seed"].tolist()
    at.button(key="versions-again").click().run()
    no_exceptions(at)
    again = wb.jobs.current
    assert again is not None and again.wait(120) and again.status == "done", again.error
    at.run()
    no_exceptions(at)
    assert wb.current_version == new + 1 and wb.version(new + 1).parent == start
    a = torch.load(wb.version(new).checkpoint, weights_only=True)["model"]
    b = torch.load(wb.version(new + 1).checkpoint, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert at.selectbox(key=_pick_key(wb)).value == new + 1


@pytest.mark.slow
def test_unknown_and_malformed_ids_start_fresh_and_say_so(app_workspace):
    for bad, words in (("0123456789ab", "No workbench"), ("<script>", "malformed")):
        at = new_app(app_workspace, {"wb": bad}).run()
        no_exceptions(at)
        assert words in " ".join(w.value for w in at.warning)
        assert workbench_of(at).id != bad


@pytest.mark.slow
def test_training_from_the_page_runs_in_background(app_workspace):
    at = new_app(app_workspace).run()
    at.number_input(key="train-epochs").set_value(1)
    at.number_input(key="train-seed").set_value(321)
    at.button(key="train-start").click().run()
    no_exceptions(at)
    wb = workbench_of(at)
    job = wb.jobs.current
    assert job is not None and job.kind == "train"
    deadline = time.time() + 120
    while job.running and time.time() < deadline:
        time.sleep(0.2)
    at.run()
    no_exceptions(at)
    assert wb.current_version == 1
    assert "Finished: version v1" in _texts(at)
    assert wb.version(1).feedback["seed"] == 321  # the typed seed is the run's, saved with the version


@pytest.mark.slow
def test_a_second_tab_shares_the_job_and_a_second_start_is_refused(app_workspace):
    from streamlit.testing.v1 import AppTest

    from apptest_helpers import ENTRY

    one = new_app(app_workspace).run()
    wb = workbench_of(one)
    two = AppTest.from_file(ENTRY, default_timeout=60)  # same server (registry), same ?wb=
    two.query_params["wb"] = wb.id
    two.run()
    assert workbench_of(two) is wb
    one.number_input(key="train-epochs").set_value(200)
    one.button(key="train-start").click().run()
    job = wb.jobs.current
    assert job is not None and job.running
    two.button(key="train-start").click().run()  # drawn before the job started: still enabled there
    no_exceptions(two)
    assert wb.jobs.current is job  # refused: no second job
    assert two.button(key="train-start").disabled  # the shared job is shown, Train is off, and says why
    assert any("A job is running on this workbench" in c.value for c in two.caption)
    assert not two.button(key="train-stop").disabled  # with its own Stop
    two.button(key="train-stop").click().run()
    assert job.wait(60) and job.status == "stopped" and wb.current_version == 0
    one.run()
    no_exceptions(one)
    assert any("Keep as new version" == b.label for b in one.button)


@pytest.mark.slow
def test_examples_tab_draws_only_while_open_and_keeps_its_filters(app_workspace):
    """The Examples tab's images are not part of every Home run (they held up the first Home after a
    server start); opening the tab draws them, and its filters survive closing it."""
    at = new_app(app_workspace).run()
    no_exceptions(at)
    assert not [w for w in at.selectbox if w.key == "ex-class"]
    at.session_state["home-tab"] = "Examples"  # what a click on the tab sets (on_change="rerun")
    at.run()
    no_exceptions(at)
    at.selectbox(key="ex-class").set_value("3").run()
    assert at.number_input(key="ex-n").value == 24
    assert "Caption: true class → predicted class" in _texts(at) or "No test examples" in str(at.info)
    at.session_state["home-tab"] = "Per class"
    at.run()
    assert not [w for w in at.selectbox if w.key == "ex-class"]
    at.session_state["home-tab"] = "Examples"
    at.run()
    assert at.selectbox(key="ex-class").value == "3"


@pytest.mark.slow
def test_a_workspace_another_server_holds_is_refused_with_a_message(tmp_path):
    """A replica started on a workspace another server uses: every entry (Home, a study link)
    says which server holds it and what to do, before any workbench or study is touched."""
    import subprocess
    import sys

    from apptest_helpers import ROOT, prepare_workspace

    ws = prepare_workspace(tmp_path / "workspace")  # its base model cached, so the last run draws Home
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from core.session.store import claim_workspace; "
                               "claim_workspace(sys.argv[1]); print('held', flush=True); time.sleep(120)", str(ws)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for query in ({}, {"study": "0" * 32}):
            at = new_app(ws, query)
            at.run()
            no_exceptions(at)
            assert len(at.error) == 1, [e.value for e in at.error]
            message = at.error[0].value
            assert f"in use by another steerboard server (pid {holder.pid} on " in message
            assert "own STEERBOARD_WORKSPACE" in message
            assert not at.metric and "wb" not in at.query_params
        assert not (ws / "workbenches").exists()  # no workbench was made
    finally:
        holder.kill()
        holder.wait()
    at = new_app(ws)  # the holder is gone: this server claims the workspace and starts
    at.run(timeout=120)
    no_exceptions(at)
    assert not at.error and any(m.label == "Test accuracy" for m in at.metric)


@pytest.mark.slow
def test_home_shows_the_shortcut_meter_only_for_data_with_masks(app_workspace):
    at = new_app(app_workspace).run()
    no_exceptions(at)
    assert workbench_of(at).data.masks is None  # plain digits: no object masks, no meter
    assert "Shortcut meter" not in {m.label for m in at.metric}
    at.selectbox(key="sb-dataset").set_value("biased-digits")
    at.button(key="sb-open").click().run()
    no_exceptions(at)
    wb = workbench_of(at)
    assert wb.data.name.startswith("biased-digits")
    meter = {m.label: m for m in at.metric}["Shortcut meter"]
    m = wb.version(wb.current_version).metrics
    assert meter.value == f"{100 * m['shortcut_swapped_acc']:.1f}%"
    assert f"vs {100 * m['shortcut_plain_acc']:.1f}% plain" in meter.delta
    assert "background" in meter.help
    assert (f"accuracy with backgrounds swapped **{100 * m['shortcut_swapped_acc']:.1f}%** vs "
            f"{100 * m['shortcut_plain_acc']:.1f}% plain") in _texts(at)
