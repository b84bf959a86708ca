"""Who may see what: the optional lab password for the whole app, the server-wide limit on
password guesses (lab and Study admin), and keeping study workbenches out of the rest of the app.

Study workbenches (:meth:`core.study.store.StudyStore.study_workbench_ids`) are reachable only
through their participant's link and Study admin: a ``?wb=`` link to one does not open it, and
the Workbenches page neither lists, downloads nor deletes them.
"""
from __future__ import annotations

import hmac
import os
import threading
import time
from collections.abc import Callable

import streamlit as st

LAB_PASSWORD_ENV = "STEERBOARD_LAB_PASSWORD"
LAB_OK_KEY = "lab-ok"
CHECKED_KEY = "access-checked-wb"  # workbench ids this session found to be no study's
FREE_TRIES = 5  # wrong passwords allowed before each further one waits
MAX_WAIT_S = 300.0


class GuessLimiter:
    """Wrong-password back-off for one password, shared by every session of the server.

    After ``free`` wrong guesses in a row, each further wrong guess locks the password for a
    wait that doubles (1 s, 2 s, 4 s, ... up to ``max_wait_s``); while locked, no guess is checked,
    not even the right one. A right guess clears the count. Thread-safe."""

    def __init__(self, free: int = FREE_TRIES, max_wait_s: float = MAX_WAIT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.free, self.max_wait_s, self._clock = int(free), float(max_wait_s), clock
        self._lock = threading.Lock()
        self._wrong = 0
        self._until = 0.0

    def wait_left(self) -> float:
        """Seconds until the next guess is checked (0: now)."""
        with self._lock:
            return max(0.0, self._until - self._clock())

    def check(self, given: str, expected: str) -> bool | float:
        """True for the right password; False for a wrong one; or, while locked, the seconds
        left (a float > 0) without comparing anything. Compares with :func:`hmac.compare_digest`."""
        with self._lock:
            now = self._clock()
            if now < self._until:
                return self._until - now
            if hmac.compare_digest(given.encode(), expected.encode()):
                self._wrong, self._until = 0, 0.0
                return True
            self._wrong += 1
            if self._wrong >= self.free:
                self._until = now + min(self.max_wait_s, 2.0 ** (self._wrong - self.free))
            return False


@st.cache_resource(show_spinner=False)
def limiter(name: str) -> GuessLimiter:
    """The server-wide limiter of the password ``name`` ("lab", "admin"): a new tab or session
    does not reset it."""
    return GuessLimiter()


def secret(env: str, key: str) -> str | None:
    """A password from the environment variable ``env``, else ``key`` in Streamlit secrets;
    None when neither is set."""
    value = os.environ.get(env)
    if value:
        return value
    try:
        return st.secrets.get(key) or None
    except Exception:  # no secrets file at all: Streamlit raises its own error type  # noqa: BLE001
        return None


def lab_password() -> str | None:
    """The lab password (``STEERBOARD_LAB_PASSWORD`` or ``lab_password`` in secrets), or None."""
    return secret(LAB_PASSWORD_ENV, "lab_password")


def password_form(name: str, expected: str, *, form_key: str, input_key: str, label: str = "Password") -> bool:
    """Draw a password form checked through :func:`limiter` ``(name)``; True once the right
    password was given in this run (the caller records it in its session and reruns)."""
    with st.form(form_key):
        given = st.text_input(label, type="password", key=input_key)
        sent = st.form_submit_button("Log in", type="primary")
    if not sent:
        left = limiter(name).wait_left()
        if left > 0:
            st.warning(f"Too many wrong passwords; try again in {int(left) + 1} s.")
        return False
    result = limiter(name).check(given or "", expected)
    if result is True:
        return True
    if result is False:
        left = limiter(name).wait_left()
        st.error("Wrong password." + (f" Too many wrong passwords; try again in {int(left) + 1} s." if left else ""))
    else:
        st.error(f"Too many wrong passwords; try again in {int(result) + 1} s.")
    return False


def lab_gate(shell=None) -> None:
    """When a lab password is set and this session has not given it, ask for it (in place of
    ``shell``, the start shell) and stop the script run."""
    expected = lab_password()
    if not expected or st.session_state.get(LAB_OK_KEY):
        return
    if shell is not None:
        shell.empty()
    st.title("steerboard")
    st.caption("This server is password-protected. Ask the lab for the password.")
    if password_form("lab", expected, form_key="lab-login", input_key="lab-password"):
        st.session_state[LAB_OK_KEY] = True
        st.rerun()
    st.stop()


def participant_token_valid(token: str) -> bool:
    """Whether ``token`` is a participant's link token on this workspace."""
    from app.state import get_store
    from core.study.store import StudyError, StudyStore

    try:
        StudyStore(get_store()).participant(token)
    except StudyError:
        return False
    return True


def study_workbench_ids() -> set[str]:
    """The workbenches that belong to a study (hidden outside participant mode and Study admin)."""
    from app.state import get_store
    from core.study.store import StudyStore

    return StudyStore(get_store()).study_workbench_ids()


def guard_workbench_link() -> None:
    """A ``?wb=`` link to a study workbench does not open it: the link's id is dropped (the tab
    gets a fresh workbench) with a notice saying why. Call before :func:`app.state.boot`."""
    from app.state import QUERY_KEY, SESSION_KEY, notice

    ss = st.session_state
    wanted = {w for w in (ss.get(SESSION_KEY), st.query_params.get(QUERY_KEY)) if w}
    if not wanted or wanted <= ss.get(CHECKED_KEY, set()):  # each id is looked up once per session
        return
    hidden = wanted & study_workbench_ids()
    if ss.get(SESSION_KEY) in hidden:
        ss.pop(SESSION_KEY, None)
    if st.query_params.get(QUERY_KEY) in hidden:
        st.query_params.pop(QUERY_KEY, None)
    for wb_id in sorted(hidden):
        notice(f"Workbench {wb_id} belongs to a user study: it opens only from its participant's link "
               "or in Study admin. Started a fresh workbench.", "warning")
    ss[CHECKED_KEY] = ss.get(CHECKED_KEY, set()) | (wanted - hidden)
