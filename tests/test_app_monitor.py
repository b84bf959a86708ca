"""AppTest tests of the Training monitor and Layer freezing pages."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from apptest_helpers import ROOT, app_workspace, new_app, no_exceptions, workbench_of  # noqa: F401  (fixture)

from core.feedback.selection.loss import KIND as SELECTION
from core.monitor.live import Monitors, freeze_saving

pytestmark = pytest.mark.slow  # every test here takes over ~1.5 s: out of the fast lane

MONITOR = str(Path(ROOT) / "pages" / "monitor.py")
FREEZING = str(Path(ROOT) / "pages" / "freezing.py")


def _open(ws, page):
    at = new_app(ws).run()
    at.switch_page(page).run()
    no_exceptions(at)
    return at


def _wait(job, until=lambda j: not j.running, timeout=180):
    deadline = time.time() + timeout
    while not until(job) and time.time() < deadline:
        time.sleep(0.05)
    assert until(job), f"timed out; job status {job.status}"


def _texts(at) -> str:
    return "\n".join([m.value for m in at.markdown] + [m.value for m in at.caption] + [m.value for m in at.success]
                     + [m.value for m in at.info])


def test_monitor_trains_in_background_with_live_statistics(app_workspace):
    at = _open(app_workspace, MONITOR)
    wb = workbench_of(at)
    start = wb.current_version
    at.number_input(key="mon-epochs").set_value(2)
    at.button(key="mon-start").click().run()
    no_exceptions(at)
    job = wb.jobs.current
    assert job is not None and job.attached, "the job carries the monitor's callbacks"
    _wait(job)
    assert job.status == "done", job.error
    mons = Monitors.of(job.attached)
    snap = mons.stats.snapshot()
    assert set(snap.activation) == set(wb.model.layer_groups)  # seed-cnn: one watched layer per group
    assert mons.probe.latest() is not None and mons.probe.latest().activations.shape[0] > 0
    assert [r["group"] for r in mons.settle.table()] == list(wb.model.layer_groups)
    at.run()
    no_exceptions(at)
    assert wb.current_version == start + 1
    assert len(at.get("plotly_chart")) >= 1  # the live curves of the finished job
    at.session_state["mon-view"] = "Network"
    at.run()
    no_exceptions(at)
    assert len(at.get("plotly_chart")) >= 2  # per-layer bars and the gradient heatmap
    assert any("Filters sorted by mean activation" in c.value for c in at.caption)  # the activation maps


def test_pause_at_epoch_end_then_resume_and_stop(app_workspace):
    at = _open(app_workspace, MONITOR)
    wb = workbench_of(at)
    at.toggle(key="mon-pae").set_value(True).run()
    assert wb.settings["pause_at_epoch_end"] is True  # saved at once
    at.number_input(key="mon-epochs").set_value(3)
    at.button(key="mon-start").click().run()
    job = wb.jobs.current
    _wait(job, lambda j: j.control.waiting, timeout=120)
    steps_at_pause = job.view()["done_steps"]
    assert len(job.view()["epochs"]) == 1
    at.run()
    no_exceptions(at)
    assert "Paused" in "\n".join(str(p.value) for p in at.get("progress")) or job.view()["status"] == "paused"
    at.button(key="mon-resume").click().run()
    _wait(job, lambda j: j.view()["done_steps"] > steps_at_pause or not j.running, timeout=60)
    assert job.view()["steps"][steps_at_pause][0] == steps_at_pause  # continues from the next step
    _wait(job, lambda j: j.control.waiting or not j.running, timeout=120)
    at.run()
    at.button(key="mon-stop").click().run()
    _wait(job)
    assert job.status == "stopped"
    at.toggle(key="mon-pae").set_value(False).run()
    assert wb.settings["pause_at_epoch_end"] is False
    no_exceptions(at)


def test_select_in_embedding_and_retrain_reports_fixed_examples(app_workspace):
    at = _open(app_workspace, MONITOR)
    wb = workbench_of(at)
    at.session_state["mon-view"] = "Embedding"
    at.run()
    no_exceptions(at)
    stream = at.session_state["mon-stream"]
    assert stream.layout is not None and stream.layout.shape[1] == 2
    acts, preds = at.session_state["mon-acts"]
    from app.monitor_widgets import PROBE_N, probe_sample

    ids, _, labels = probe_sample(wb, PROBE_N)
    n = len(preds)
    wrong = ids[:n][preds != labels[:n].numpy()].tolist()
    right = ids[:n][preds == labels[:n].numpy()].tolist()
    chosen = sorted(wrong[:6] + right[:4])
    at.session_state["mon-emb-chart"] = {"selection": {"points": [{"customdata": int(e), "curve_number": 1, "point_index": 0}
                                                                  for e in chosen], "point_indices": [], "box": [], "lasso": []}}
    at.run()
    no_exceptions(at)
    assert f"Selected: {len(chosen)} examples, {len(wrong[:6])} misclassified" in _texts(at)
    assert sorted(a.example_id for a in wb.annotations(SELECTION)) == chosen  # on disk
    start = wb.current_version
    at.button(key="mon-retrain-go").click().run()
    no_exceptions(at)
    job = wb.jobs.current
    assert wb.get_state("monitor.retrain")["ids"] == chosen  # saved (in the store) before the page says it started
    _wait(job)
    assert job.status == "done", job.error
    at.run()
    at.run()
    no_exceptions(at)
    assert wb.current_version == start + 1
    report = wb.get_state("monitor.retrain")["report"]
    assert report["n"] == len(chosen) and report["wrong_before"] == len(wrong[:6])
    assert "now right" in _texts(at)
    assert wb.get_state("monitor.retrain")["report"] == report
    assert not list(wb.store.workbench_dir(wb.id).glob("*.json"))
    assert wb.versions()[-1].feedback["kind"] == SELECTION


def test_freeze_switches_save_and_reach_a_running_job(app_workspace):
    at = _open(app_workspace, FREEZING)
    wb = workbench_of(at)
    groups = list(wb.model.layer_groups)
    at.toggle(key=f"frz-g-{groups[0]}").set_value(True).run()
    no_exceptions(at)
    assert wb.settings["frozen"] == [groups[0]]
    first = wb.model.group_parameters(groups[0])[0].detach().clone()
    at.number_input(key="frz-epochs").set_value(6)
    at.button(key="frz-start").click().run()
    job = wb.jobs.current
    assert job.control.frozen() == {groups[0]}
    _wait(job, lambda j: len(j.view()["epochs"]) >= 2 or not j.running, timeout=120)
    at.toggle(key=f"frz-g-{groups[1]}").set_value(True).run()
    assert job.control.frozen() == {groups[0], groups[1]}  # reaches the running job
    _wait(job)
    assert job.status == "done", job.error
    at.run()
    no_exceptions(at)
    view = job.view()
    assert view["freeze_events"][-1][1] == tuple(sorted([groups[0], groups[1]]))
    assert any(f"froze {groups[1]}" in c.value for c in at.caption)
    # the saving: the median after, against before or "too few epochs to tell", and what was compared
    saving = freeze_saving(view["epochs"])
    metric = at.metric[0]
    assert metric.label == "Time per epoch after freezing" and metric.value == f"{saving.after.median:.2f} s"
    assert metric.delta == ("too few epochs to tell" if saving.saving is None else
                            f"{-100 * saving.saving:+.0f}% vs {saving.before.median:.2f} s before")
    assert any(c.value.startswith("Median time per epoch:") and "Left out: epoch" in c.value for c in at.caption)
    assert wb.versions()[-1].feedback["frozen"] == sorted([groups[0], groups[1]])
    assert np.array_equal(wb.model.group_parameters(groups[0])[0].detach().numpy(), first.numpy())  # frozen throughout
    for g in groups[:2]:
        at.toggle(key=f"frz-g-{g}").set_value(False).run()
    assert wb.settings["frozen"] == []
    no_exceptions(at)


def test_embedding_update_setting_reaches_the_probe_and_the_page_says_when_it_updates(app_workspace):
    at = _open(app_workspace, MONITOR)
    wb = workbench_of(at)
    at.session_state["mon-view"] = "Embedding"
    at.run()
    no_exceptions(at)
    pace = next(c.value for c in at.caption if "embedding" in c.value.lower() and "training" in c.value.lower())
    assert pace.startswith("Not training: the embedding shows the current version")
    at.number_input(key="mon-emb-every").set_value(7.0).run()
    at.number_input(key="mon-emb-n").set_value(100).run()
    at.toggle(key="mon-pae").set_value(True).run()  # the job waits after epoch 1: still running when read
    at.number_input(key="mon-epochs").set_value(2)
    at.button(key="mon-start").click().run()
    job = wb.jobs.current
    probe = Monitors.of(job.attached).probe
    assert probe.interval_s == 7.0 and probe.count == 100  # the job started with the page's settings
    _wait(job, lambda j: j.control.waiting, timeout=120)
    at.number_input(key="mon-emb-every").set_value(4.0).run()
    no_exceptions(at)
    assert probe.interval_s == 4.0  # and follows a change while it runs
    text = "\n".join(c.value for c in at.caption)
    assert "The embedding updates about every" in text and f"each probe of the {probe.count} points shown" in text
    at.button(key="mon-stop").click().run()
    _wait(job)
    at.toggle(key="mon-pae").set_value(False).run()
