"""Issue 29: deleting a workbench races neither a reopen of it nor a job of it that ends late.
Real threads; each race is forced by holding one side at the point where the other used to
slip in."""
from __future__ import annotations

import threading

import pytest
from support import live_ids

import core.session.registry as registry_module
from core.engine import Callback, TrainConfig
from core.models import build_model
from core.session.registry import WorkbenchRegistry
from core.session.store import Store
from core.session.workbench import Workbench
from core.session.runs import JobOptions


def _create(store, data):
    return Workbench.create(store, data, "tiny", build_model("seed-cnn", 1, 16, data.num_classes, seed=0))


def test_a_delete_waits_for_an_open_of_the_same_id_and_leaves_nothing_live(workspace, tiny_data, monkeypatch):
    """Tab A opens the workbench (it is not in memory) while tab B deletes it. Before, the
    delete ran while the open was half done, and the open then registered a live workbench
    whose rows and files were gone."""
    store = Store(workspace)
    wb_id = _create(store, tiny_data).id
    reg = WorkbenchRegistry(store, loader=lambda s, seed=0: tiny_data)
    opened, go_on = threading.Event(), threading.Event()
    real_open = Workbench.open

    class SlowOpen(Workbench):
        @classmethod
        def open(cls, *args, **kwargs):
            wb = real_open(*args, **kwargs)
            opened.set()
            assert go_on.wait(30)
            return wb

    monkeypatch.setattr(registry_module, "Workbench", SlowOpen)
    got: list = []
    tab_a = threading.Thread(target=lambda: got.append(reg.get(wb_id)))
    tab_b = threading.Thread(target=lambda: reg.delete(wb_id))
    tab_a.start()
    assert opened.wait(30)
    tab_b.start()
    tab_b.join(1.0)
    assert tab_b.is_alive()  # the delete waits for the open of the same id
    go_on.set()
    tab_a.join(30)
    tab_b.join(30)
    assert not tab_a.is_alive() and not tab_b.is_alive()
    assert live_ids(reg) == []
    assert store.get_workbench(wb_id) is None and not store.workbench_dir(wb_id).exists()
    with pytest.raises(KeyError):
        reg.get(wb_id)


def test_two_ids_open_at_the_same_time(workspace, tiny_data, monkeypatch):
    """The open lock is per id: a slow open of one workbench does not hold up another's."""
    store = Store(workspace)
    slow_id, quick_id = _create(store, tiny_data).id, _create(store, tiny_data).id
    reg = WorkbenchRegistry(store, loader=lambda s, seed=0: tiny_data)
    opened, go_on = threading.Event(), threading.Event()
    real_open = Workbench.open

    class SlowOpen(Workbench):
        @classmethod
        def open(cls, store_, wb_id, **kwargs):
            wb = real_open(store_, wb_id, **kwargs)
            if wb_id == slow_id:
                opened.set()
                assert go_on.wait(30)
            return wb

    monkeypatch.setattr(registry_module, "Workbench", SlowOpen)
    slow = threading.Thread(target=lambda: reg.get(slow_id))
    slow.start()
    assert opened.wait(30)
    quick = threading.Thread(target=lambda: reg.get(quick_id))
    quick.start()
    quick.join(10)
    done_while_slow_open = not quick.is_alive()
    go_on.set()
    slow.join(30)
    quick.join(30)
    assert done_while_slow_open and sorted(live_ids(reg)) == sorted([slow_id, quick_id])


class _HoldAtEpochEnd(Callback):
    def __init__(self) -> None:
        self.reached, self.release = threading.Event(), threading.Event()

    def on_epoch(self, info) -> None:
        self.reached.set()
        assert self.release.wait(30)


def test_a_job_that_ends_after_its_workbench_was_deleted_saves_nothing_and_makes_no_folder(workspace, tiny_data,
                                                                                           monkeypatch):
    """A tab starts a fine-tune just after another tab's delete checked that nothing runs (the
    delete is held there). The job ends after the delete: before, its commit made the
    deleted workbench's folder again (and then failed on the missing row)."""
    store = Store(workspace)
    reg = WorkbenchRegistry(store, loader=lambda s, seed=0: tiny_data)
    wb = reg.add(_create(store, tiny_data))
    folder = store.workbench_dir(wb.id)
    checked, go_on = threading.Event(), threading.Event()
    real_delete = store.delete_workbench

    def held_delete(wb_id, **kwargs):
        checked.set()  # the registry found no running job
        assert go_on.wait(30)
        return real_delete(wb_id, **kwargs)

    monkeypatch.setattr(store, "delete_workbench", held_delete)
    deleting = threading.Thread(target=lambda: reg.delete(wb.id))
    deleting.start()
    assert checked.wait(30)
    hold = _HoldAtEpochEnd()
    job = wb.train(TrainConfig(epochs=1, batch_size=16), JobOptions("late", listeners=[hold]))
    assert hold.reached.wait(60)  # trained, not yet committed
    go_on.set()
    deleting.join(30)
    assert not deleting.is_alive() and not folder.exists()
    hold.release.set()
    assert job.wait(60)
    assert not folder.exists()  # the commit did not make the folder again
    assert job.status == "failed" and "was deleted" in (job.error or "")
    assert store.get_workbench(wb.id) is None and live_ids(reg) == []
    with pytest.raises(KeyError):
        store.commit_version(wb.id, lambda path: path.write_bytes(b"x"), parent=0, description="after")
    assert not folder.exists()
