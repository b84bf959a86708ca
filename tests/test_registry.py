"""One live workbench per id: shared by every caller, separate per id, dropped when idle."""
from __future__ import annotations

import shutil
import threading

import pytest
from support import live_ids

from core.engine import TrainConfig
from core.session.jobs import ComputeBudget
from core.models import build_model
from core.session.registry import WorkbenchRegistry
from core.session.store import Store
from core.session.workbench import Workbench, WorkbenchError
from core.session.runs import JobOptions


def _create(store, data):
    return Workbench.create(store, data, "tiny", build_model("seed-cnn", 1, 16, data.num_classes, seed=0))


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_every_caller_gets_the_same_live_workbench(workspace, tiny_data):
    store = Store(workspace)
    wb_id = _create(store, tiny_data).id
    reg = WorkbenchRegistry(store, loader=lambda s, seed=0: tiny_data)
    got = []
    threads = [threading.Thread(target=lambda: got.append(reg.get(wb_id))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 4 and all(g is got[0] for g in got)  # two tabs never open one id twice
    other = reg.add(_create(store, tiny_data))
    assert other is not got[0] and other.jobs is not got[0].jobs and other.model is not got[0].model


def test_a_job_started_through_one_caller_is_seen_by_another(workspace, tiny_data):
    store = Store(workspace)
    budget = ComputeBudget(1)
    reg = WorkbenchRegistry(store, loader=lambda s, seed=0: tiny_data, budget=budget)
    wb_id = _create(store, tiny_data).id
    tab_a, tab_b = reg.get(wb_id), reg.get(wb_id)
    job = tab_a.train(TrainConfig(epochs=1, batch_size=16), JobOptions("from tab a"))
    assert tab_b.jobs.current is job
    assert job.wait(60) and job.status == "done"
    assert tab_b.current_version == tab_a.current_version == 1


def test_idle_workbenches_are_dropped_and_reopen_from_the_store(workspace, tiny_data):
    store = Store(workspace)
    clock = Clock()
    reg = WorkbenchRegistry(store, loader=lambda s, seed=0: tiny_data, idle_s=60, clock=clock)
    wb = reg.add(_create(store, tiny_data))
    busy = reg.add(_create(store, tiny_data))
    job = busy.train(TrainConfig(epochs=500, batch_size=8), JobOptions("long"))
    clock.now = 61
    assert reg.evict_idle() == [wb.id]  # the one with a running job stays
    assert live_ids(reg) == [busy.id]
    again = reg.get(wb.id)
    assert again is not wb and again.current_version == wb.current_version
    job.stop()
    assert job.wait(60)


def test_unknown_and_versionless_workbenches(workspace, tiny_data):
    store = Store(workspace)
    reg = WorkbenchRegistry(store, loader=lambda s, seed=0: tiny_data)
    with pytest.raises(KeyError):
        reg.get("0123456789ab")
    orphan = store.create_workbench("tiny", "seed-cnn", {})  # as an older release could leave behind
    with pytest.raises(WorkbenchError, match="no model versions"):
        reg.get(orphan.id)


def test_deleted_workspace_forgets_live_workbenches(workspace, tiny_data):
    store = Store(workspace)
    reg = WorkbenchRegistry(store, loader=lambda s, seed=0: tiny_data)
    wb = reg.add(_create(store, tiny_data))
    shutil.rmtree(workspace)
    with pytest.raises(KeyError):
        reg.get(wb.id)
    assert live_ids(reg) == []


def test_workbench_list_rename_note_and_delete_with_files(workspace, tiny_data):
    """Issue 13: the list has every workbench with its version count; a name and a note are
    kept; delete removes rows and files, and is refused while a job runs."""
    import time

    from core.engine import Callback

    store = Store(workspace)
    reg = WorkbenchRegistry(store, loader=lambda s, seed=0: tiny_data)
    a = reg.add(_create(store, tiny_data))
    b_id = _create(store, tiny_data).id  # not live: set_label goes to the store
    job = a.train(TrainConfig(epochs=1, batch_size=16), JobOptions("one"))
    assert job.wait(60) and job.status == "done"
    reg.set_label(a.id, name="  digits run ", note="try lr 0.05 next")
    reg.set_label(b_id, name="second")
    rows = {r["id"]: r for r in store.workbench_summaries()}
    assert rows[a.id]["versions"] == 2 and rows[b_id]["versions"] == 1
    assert rows[a.id]["name"] == "digits run" and rows[a.id]["note"] == "try lr 0.05 next"
    assert rows[b_id]["name"] == "second" and a.settings["name"] == "digits run"
    assert store.workbench_summaries()[0]["id"] in (a.id, b_id)
    with pytest.raises(ValueError):
        reg.set_label(a.id, name="x" * 81)

    class Slow(Callback):
        def on_step(self, info):
            time.sleep(0.05)

    running = a.train(TrainConfig(epochs=20, batch_size=8), JobOptions("long", listeners=[Slow()]))
    with pytest.raises(ValueError, match="stop its job"):
        reg.delete(a.id)
    running.stop()
    assert running.wait(60)
    folder = store.workbench_dir(a.id)
    assert any(folder.glob("v*.pt"))
    reg.delete(a.id)
    assert not folder.exists() and store.get_workbench(a.id) is None and a.id not in live_ids(reg)
    assert [r["id"] for r in store.workbench_summaries()] == [b_id]
    with pytest.raises(KeyError):
        reg.delete(a.id)
