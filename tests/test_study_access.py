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
    from core.study_store import StudyStore

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
