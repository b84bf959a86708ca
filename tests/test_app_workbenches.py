"""AppTest of the Workbenches page: list, open, rename and note, delete with confirmation."""
from __future__ import annotations

import pytest
from apptest_helpers import ROOT, app_workspace, new_app, no_exceptions, workbench_of  # noqa: F401  (fixture)

from core.models import build_model
from core.session.workbench import Workbench
from core.session.runs import JobOptions

pytestmark = pytest.mark.slow  # every test here takes over ~1.5 s: out of the fast lane

PAGE = str(ROOT / "pages" / "workbenches.py")


def _texts(at) -> str:
    return " ".join(str(x.value) for x in list(at.markdown) + list(at.caption) + list(at.success) + list(at.error))


def test_list_open_rename_and_delete(app_workspace):
    at = new_app(app_workspace).run()
    here = workbench_of(at)
    from app.state import get_registry, get_store

    other = Workbench.create(get_store(), here.data, "digits", build_model("seed-cnn", 1, 28, 10, seed=3))
    at.switch_page(PAGE).run()
    no_exceptions(at)
    table = at.dataframe[0].value
    assert {here.id, other.id} <= set(table["id"])
    assert table.loc[table["id"] == here.id, "open here"].item() == "●"
    assert table.loc[table["id"] == other.id, "versions"].item() == 1

    # rename and note the other workbench
    at.selectbox(key="wbl-pick").set_value(other.id).run()
    at.text_input(key=f"wbl-name-{other.id}").input("lr sweep")
    at.text_area(key=f"wbl-note-{other.id}").input("compare with the first one")
    at.button(key=f"wbl-save-{other.id}").click().run()
    no_exceptions(at)
    summary = {r["id"]: r for r in get_store().workbench_summaries()}[other.id]
    assert summary["name"] == "lr sweep" and summary["note"] == "compare with the first one"

    # the delete button stays disabled until the box is ticked; then rows and files go
    assert at.button(key=f"wbl-delete-{other.id}").disabled
    folder = get_store().workbench_dir(other.id)
    assert folder.exists()
    at.checkbox(key=f"wbl-sure-{other.id}").check().run()
    at.button(key=f"wbl-delete-{other.id}").click().run()
    no_exceptions(at)
    assert get_store().get_workbench(other.id) is None and not folder.exists()
    assert other.id not in set(at.dataframe[0].value["id"])

    # open: a third workbench becomes this tab's, and the page goes Home
    third = get_registry().add(Workbench.create(get_store(), here.data, "digits",
                                                build_model("seed-cnn", 1, 28, 10, seed=4)))
    at.run()
    at.selectbox(key="wbl-pick").set_value(third.id).run()
    at.button(key="wbl-open").click().run()
    no_exceptions(at)
    assert workbench_of(at).id == third.id
    assert at.query_params["wb"] in (third.id, [third.id])
    # the open one cannot be deleted from its own tab
    at.switch_page(PAGE).run()
    assert f"wbl-delete-{third.id}" not in {b.key for b in at.button}


def test_last_change_moves_when_a_training_run_makes_a_version(app_workspace):
    """Issue 29: "last change" did not update after training (it was shown to the minute, and a
    short run ends within the same minute)."""
    import time

    from core.engine import TrainConfig

    at = new_app(app_workspace).run()
    wb = workbench_of(at)
    at.switch_page(PAGE).run()
    no_exceptions(at)

    def last_change() -> str:
        table = at.dataframe[0].value
        return table.loc[table["id"] == wb.id, "last change"].item()

    before = last_change()
    time.sleep(1.1)  # the run ends at least a second later
    job = wb.train(TrainConfig(epochs=1, lr=0.02), JobOptions("one more epoch"))
    assert job.wait(120) and job.status == "done", job.error
    at.run()
    no_exceptions(at)
    made = wb.version(wb.current_version).created
    assert last_change() != before
    assert last_change() == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(made))  # the new version's time
    assert f"last change {last_change()}" in _texts(at)  # the detail line of the picked (this) workbench


def test_a_study_workbench_is_not_listed_downloadable_deletable_or_openable_by_link(app_workspace):
    """Issue 30: the Workbenches page listed study workbenches (a participant's annotations and
    timings could be downloaded and the workbench deleted without a password), and a ?wb= link
    opened one in the full app."""
    at = new_app(app_workspace).run()
    here = workbench_of(at)
    from app.state import get_store
    from core.study.store import StudyStore

    marked = Workbench.create(get_store(), here.data, "digits", build_model("seed-cnn", 1, 28, 10, seed=5),
                              settings={"device": "cpu", "study_participant": True})
    recorded = Workbench.create(get_store(), here.data, "digits", build_model("seed-cnn", 1, 28, 10, seed=6))
    studies = StudyStore(get_store())
    _, (token,) = studies.create_study("hidden", {"conditions": [{"name": "a"}, {"name": "b"}]}, participants=1)
    studies.set_progress(token, {"step": 1, "workbenches": {"a": recorded.id}})
    at.switch_page(PAGE).run()
    no_exceptions(at)
    listed = set(at.dataframe[0].value["id"])
    assert here.id in listed and not {marked.id, recorded.id} & listed
    options = " ".join(at.selectbox(key="wbl-pick").options)  # the labels, each with its id (no name given)
    assert here.id in options and marked.id not in options and recorded.id not in options
    assert "of user studies are not listed" in _texts(at)

    for wb_id in (marked.id, recorded.id):  # a link to one gives a fresh workbench and says why
        linked = new_app(app_workspace, query={"wb": wb_id}).run()
        no_exceptions(linked)
        assert workbench_of(linked).id != wb_id
        assert any("belongs to a user study" in str(w.value) for w in linked.warning)
        assert get_store().get_workbench(wb_id) is not None
