"""Issue 30, access: the optional lab password, the server-wide back-off on password guesses, and
participant links that stay token-only."""
from __future__ import annotations

from apptest_helpers import ENTRY, ROOT, app_workspace, new_app, no_exceptions, workbench_of  # noqa: F401  (fixture)

from app.access import GuessLimiter

ADMIN = str(ROOT / "pages" / "study_admin.py")
DESIGN = {"task": "attention", "dataset": "digits", "arch": "seed-cnn",
          "conditions": [{"name": "click", "settings": {"mode": "click", "sampler": "random"}, "budget": 2},
                         {"name": "polygon", "settings": {"mode": "polygon", "sampler": "random"}, "budget": 1}]}


def _texts(at) -> str:
    parts = (list(at.markdown) + list(at.caption) + list(at.info) + list(at.error) + list(at.success)
             + list(at.title) + list(at.warning))
    return "\n".join(str(p.value) for p in parts)


def test_the_limiter_waits_doubling_seconds_after_five_wrong_guesses_and_locks_out_the_right_one():
    now = [0.0]
    limiter = GuessLimiter(clock=lambda: now[0])
    assert [limiter.check("x", "right") for _ in range(4)] == [False] * 4 and limiter.wait_left() == 0
    assert limiter.check("x", "right") is False and limiter.wait_left() == 1.0  # the 5th: 1 s
    assert limiter.check("right", "right") == 1.0  # locked: not even the right one is checked
    now[0] += 1.0
    assert limiter.check("x", "right") is False and limiter.wait_left() == 2.0  # the 6th: 2 s
    now[0] += 2.0
    assert limiter.check("x", "right") is False and limiter.wait_left() == 4.0
    now[0] += 4.0
    assert limiter.check("right", "right") is True and limiter.wait_left() == 0  # the count starts again
    assert [limiter.check("x", "right") for _ in range(4)] == [False] * 4 and limiter.wait_left() == 0


def _guess(at, key: str, password: str):
    at.text_input(key=key).input(password)
    return at.button[0].click().run()


def test_admin_guesses_back_off_for_the_whole_server(app_workspace, monkeypatch):
    """25 wrong guesses in 6.5 s were accepted, then the right one worked."""
    monkeypatch.setenv("STEERBOARD_ADMIN_PASSWORD", "s3cret")
    monkeypatch.delenv("STEERBOARD_LAB_PASSWORD", raising=False)
    at = new_app(app_workspace).run()
    at.switch_page(ADMIN).run()
    for _ in range(5):
        _guess(at, "study-password", "wrong")
    no_exceptions(at)
    assert "Too many wrong passwords; try again in 1 s" in _texts(at)
    _guess(at, "study-password", "s3cret")
    assert "Too many wrong passwords" in _texts(at) and not at.tabs  # the right one waits too
    # a new tab (a new session of the same server) is locked as well
    from streamlit.testing.v1 import AppTest

    other = AppTest.from_file(ENTRY, default_timeout=60).run()
    other.switch_page(ADMIN).run()
    assert "Too many wrong passwords; try again in" in _texts(other)
    import time

    time.sleep(1.1)
    _guess(other, "study-password", "s3cret")
    no_exceptions(other)
    assert other.tabs and "Too many" not in _texts(other)


def test_a_lab_password_guards_every_page_but_participant_links(app_workspace, monkeypatch):
    monkeypatch.setenv("STEERBOARD_LAB_PASSWORD", "lab-pw")
    at = new_app(app_workspace).run()
    no_exceptions(at)
    from app.state import SESSION_KEY, get_store
    from core.study.store import StudyStore

    assert at.text_input(key="lab-password") and SESSION_KEY not in at.session_state  # no workbench, no page
    assert not at.sidebar.button and "password-protected" in _texts(at)
    _guess(at, "lab-password", "nope")
    assert "Wrong password" in _texts(at) and SESSION_KEY not in at.session_state
    _guess(at, "lab-password", "lab-pw")
    no_exceptions(at)
    assert "lab-password" not in [t.key for t in at.text_input] and workbench_of(at) is not None
    at.run()  # asked once per session
    assert "lab-password" not in [t.key for t in at.text_input]

    # a participant link with a valid token is token-only; a made-up token is asked for the password
    _, (token,) = StudyStore(get_store()).create_study("lab", DESIGN, participants=1)
    participant = new_app(app_workspace, query={"study": token}).run()
    no_exceptions(participant)
    assert "lab-password" not in [t.key for t in participant.text_input] and "Welcome" in _texts(participant)
    stranger = new_app(app_workspace, query={"study": "x" * 22}).run()
    assert "lab-password" in [t.key for t in stranger.text_input] and "Welcome" not in _texts(stranger)
    # without the password, ?study= dropped from the link gives nothing either
    dropped = new_app(app_workspace).run()
    assert "lab-password" in [t.key for t in dropped.text_input] and SESSION_KEY not in dropped.session_state


def test_lab_guesses_back_off_too(app_workspace, monkeypatch):
    monkeypatch.setenv("STEERBOARD_LAB_PASSWORD", "lab-pw")
    at = new_app(app_workspace).run()
    for _ in range(5):
        _guess(at, "lab-password", "wrong")
    _guess(at, "lab-password", "lab-pw")
    assert "Too many wrong passwords" in _texts(at) and "lab-password" in [t.key for t in at.text_input]


def _admin(app_workspace, monkeypatch):
    monkeypatch.setenv("STEERBOARD_ADMIN_PASSWORD", "s3cret")
    monkeypatch.delenv("STEERBOARD_LAB_PASSWORD", raising=False)
    at = new_app(app_workspace).run()
    at.switch_page(ADMIN).run()
    return _guess(at, "study-password", "s3cret")


def _create(at, name: str):
    at.text_input(key="sa-name").input(name)
    at.selectbox(key="sa-data").set_value("digits")
    return at.button(key="FormSubmitter:study-new-Create study").click().run()


def test_created_empties_the_form_and_the_same_study_again_is_refused(app_workspace, monkeypatch):
    """After "Created" the form stayed filled, so a second click made a duplicate study."""
    at = _admin(app_workspace, monkeypatch)
    from app.state import get_store
    from core.study.store import StudyStore

    before = len(StudyStore(get_store()).studies())
    _create(at, "twice")
    no_exceptions(at)
    assert "Created study 'twice'" in _texts(at)
    assert at.text_input(key="sa-name").value == "" and at.selectbox(key="sa-data").value == "biased-digits"
    _create(at, "twice")  # the same study again at once
    no_exceptions(at)
    assert "was not created: the same study 'twice' was created" in _texts(at)
    assert at.text_input(key="sa-name").value == "twice"  # a refused form keeps what was typed
    assert len(StudyStore(get_store()).studies()) == before + 1


def test_the_results_download_holds_the_whole_zip_before_it_is_clicked(app_workspace, monkeypatch):
    """"Include each condition's final model", clicked at once, gave no file: the zip was deferred
    to the click and the server had lost it (MediaFileStorageError: Deferred file ... not found)."""
    import io
    import json
    import zipfile

    import streamlit.testing.v1.app_test as app_test

    stores = []

    class Recording(app_test.MemoryMediaFileStorage):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            stores.append(self)

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Recording)
    at = _admin(app_workspace, monkeypatch)
    _create(at, "download me")
    at.checkbox(key="sa-models").check().run()
    no_exceptions(at)
    button = next(b for b in at.get("download_button") if b.proto.id.endswith("sa-export") or "sa-export" in b.proto.id)
    assert not button.proto.deferred_file_id and button.proto.url
    data = next(f.content for s in stores for fid, f in s._files_by_id.items() if s.get_url(fid) == button.proto.url)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None
        manifest = json.loads(z.read("manifest.json"))
        assert {"events.csv", "annotations.csv", "summary.csv"} <= set(z.namelist())
    assert manifest["study"]["name"] == "download me"


def test_admin_resets_and_replaces_a_participant(app_workspace, monkeypatch):
    at = _admin(app_workspace, monkeypatch)
    from app.state import get_store
    from core.study.store import StudyStore

    _create(at, "reset me")
    studies = StudyStore(get_store())
    study = next(s for s in studies.studies() if s["name"] == "reset me")
    first, second = studies.participants(study["id"])
    gone = get_store().create_workbench("digits", "seed-cnn", {"study_participant": True}).id
    studies.set_progress(first.token, {"step": 1, "workbenches": {first.conditions[0]: gone}})
    get_store().delete_workbench(gone, files=True)  # as the Workbenches page could do before
    at.run()
    table = at.dataframe[0].value
    assert "missing: reset or replace" in table.loc[table["participant"] == 1, "where"].item()

    at.selectbox(key=f"sa-who-{study['id']}").set_value(first.token)
    assert at.button(key="sa-reset").disabled
    at.checkbox(key="sa-who-sure").check().run()
    at.button(key="sa-reset").click().run()
    no_exceptions(at)
    assert "Participant 1 starts again" in _texts(at)
    assert studies.participant(first.token).progress == {} and studies.missing_workbenches(first.token) == {}
    assert at.dataframe[0].value.loc[0, "where"] == "introduction"

    at.selectbox(key=f"sa-who-{study['id']}").set_value(second.token)
    at.checkbox(key="sa-who-sure").check().run()
    at.button(key="sa-replace").click().run()
    no_exceptions(at)
    assert "Participant 2 has a new link" in _texts(at)
    tokens = [p.token for p in studies.participants(study["id"])]
    assert tokens[0] == first.token and tokens[1] != second.token
    participant = new_app(app_workspace, query={"study": second.token}).run()
    assert "not valid" in _texts(participant)
