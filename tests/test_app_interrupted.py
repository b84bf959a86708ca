"""After a restart, the interrupted job's notice shows in every tab that opens the workbench, and
again after a refresh, until someone dismisses it or a new job starts (issue 29: it appeared in
the first tab only, once). The state is the workbench's, on disk."""
from __future__ import annotations

import pytest
from apptest_helpers import new_app, no_exceptions
from test_workbench_views import _dead_job

from core.engine import TrainConfig
from core.session.runs import JobOptions

pytestmark = pytest.mark.slow  # every test here takes over ~1.5 s: out of the fast lane

NOTICE = "was interrupted at step 17 of 90 by a server restart"


def _notice_shown(at) -> bool:
    return any(NOTICE in w.value for w in at.warning)


def _workbench(tmp_path):
    from core.data import load_dataset
    from core.models import build_model
    from core.session.store import Store
    from core.session.workbench import Workbench

    store = Store(tmp_path / "ws")
    wb = Workbench.create(store, load_dataset("digits"), "digits", build_model("seed-cnn", 1, 28, 10, seed=0))
    _dead_job(store, wb.id)  # a job a killed server left "running"
    return wb.id


def _tab(wb_id):
    from streamlit.testing.v1 import AppTest

    from apptest_helpers import ENTRY

    tab = AppTest.from_file(ENTRY, default_timeout=60)  # same server (its caches are kept)
    tab.query_params["wb"] = wb_id
    return tab.run()


def test_every_tab_sees_the_interrupted_notice_until_it_is_dismissed(tmp_path):
    wb_id = _workbench(tmp_path)
    one = new_app(tmp_path / "ws", {"wb": wb_id}).run()  # the restarted server's first tab
    no_exceptions(one)
    assert _notice_shown(one)
    two = _tab(wb_id)  # a second tab (or a colleague) opening the same workbench
    assert _notice_shown(two)
    assert _notice_shown(one.run())  # still there on the next run of the first tab
    assert _notice_shown(_tab(wb_id))  # and after a refresh (a new session)
    two.button(key="interrupted-dismiss").click().run()
    no_exceptions(two)
    assert not _notice_shown(two)
    assert not _notice_shown(one.run()) and not _notice_shown(_tab(wb_id))  # dismissed for everyone


def test_a_new_job_ends_the_notice_in_every_tab(tmp_path):
    from apptest_helpers import workbench_of

    wb_id = _workbench(tmp_path)
    one = new_app(tmp_path / "ws", {"wb": wb_id}).run()
    assert _notice_shown(one)
    job = workbench_of(one).train(TrainConfig(epochs=1, lr=0.02), JobOptions("a new run"))
    assert not _notice_shown(one.run()) and not _notice_shown(_tab(wb_id))
    job.stop()
    job.wait(60)
