"""Real-browser harness: `streamlit run app/main.py` driven by Debian's Chromium through Playwright.

Fixtures
--------
``base_checkpoint``  (session) a base model pre-trained once with ``python -m core.train``
                     (3 epochs), so servers start on a cached base instead of training one.
``make_workspace``   (session) factory: a fresh workspace folder holding a copy of that base.
``streamlit_server`` (session) one server shared by the tests that need no restart.
``app_url``          (session) its base URL, ``http://127.0.0.1:PORT``.
``start_server``     (function) factory: ``start_server(workspace) -> StreamlitServer`` for a
                     test that kills or restarts its own server; all stopped at the end.
``chromium``         (session) the Playwright browser.
``new_context``      (function) factory: a new, isolated browser context (own cookies and
                     storage, so no ``?wb=`` is shared); all closed at the end.
``page``             (function) a page in a new context.

Without Playwright or a ``chromium`` binary every test here is skipped with the reason; with
``CI=true`` in the environment that is a failure instead, so CI cannot skip them silently.
Every test in this folder gets the ``browser`` marker (``-m "not browser"`` deselects them).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# pytest puts this folder on sys.path; benchmarks/attention_page_run.py loads this file by path
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from browser_helpers import ROOT, TEST_THREADS, thread_env  # noqa: E402,F401  (thread_env re-exported)
from streamlit_server import HEALTH_TIMEOUT_S, free_port, port_free  # noqa: E402,F401  (re-exported)
from streamlit_server import StreamlitServer as _Harness  # noqa: E402

BASE_NAME = "digits__seed-cnn__s0.pt"  # what the app looks for: base/<data>__<arch>__s<seed>.pt
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# ----------------------------------------------------------------------------- marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.browser)


# ----------------------------------------------------------------------------- requirements
def chromium_path() -> str | None:
    """$STEERBOARD_CHROMIUM if set, else Debian's /usr/bin/chromium, else `chromium` on PATH."""
    def runnable(path: str) -> bool:
        return os.path.isfile(path) and os.access(path, os.X_OK)

    wanted = os.environ.get("STEERBOARD_CHROMIUM")
    if wanted:
        return wanted if runnable(wanted) else None
    if runnable("/usr/bin/chromium"):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def _unavailable(reason: str):
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"browser tests cannot run on CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser_requirements() -> str:
    """The Chromium executable; skips (fails on CI) when Playwright or Chromium is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        _unavailable(f"playwright is not importable ({exc}); pip install -r requirements-dev.txt")
    exe = chromium_path()
    if exe is None:
        _unavailable("no chromium binary ($STEERBOARD_CHROMIUM, /usr/bin/chromium or on PATH); "
                     "apt-get install chromium")
    return exe


# ----------------------------------------------------------------------------- base model
@pytest.fixture(scope="session")
def base_checkpoint(browser_requirements, tmp_path_factory) -> Path:
    """Train the default base model once (3 epochs, a few seconds) with the CLI."""
    out = tmp_path_factory.mktemp("browser-base") / "base"
    cmd = [sys.executable, "-m", "core.train", "--data", "digits", "--model", "seed-cnn",
           "--epochs", "3", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **thread_env()})
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    path = out / BASE_NAME
    assert path.is_file(), f"core.train wrote {sorted(p.name for p in out.iterdir())}, expected {BASE_NAME}"
    return path


@pytest.fixture(scope="session")
def make_workspace(base_checkpoint, tmp_path_factory):
    """Factory: a new workspace folder with the cached base model in ``base/``."""
    def make(name: str = "ws") -> Path:
        ws = tmp_path_factory.mktemp(name)
        (ws / "base").mkdir()
        shutil.copy2(base_checkpoint, ws / "base" / BASE_NAME)
        return ws
    return make


# ----------------------------------------------------------------------------- server
class StreamlitServer(_Harness):
    """The shared harness (``streamlit_server.py``) with the tests' torch thread count."""

    base_env = thread_env()


@pytest.fixture(scope="session")
def streamlit_server(make_workspace):
    """One server for the tests that do not kill it; each test's new browser context gets
    its own workbench on it."""
    server = StreamlitServer(make_workspace("ws-shared")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def app_url(streamlit_server) -> str:
    return streamlit_server.url


@pytest.fixture
def start_server(make_workspace):
    """Factory for a test's own server (one it may kill and restart); stopped at the end."""
    servers: list[StreamlitServer] = []

    def start(workspace: Path | None = None, **kwargs) -> StreamlitServer:
        server = StreamlitServer(workspace or make_workspace("ws-own"), **kwargs)
        servers.append(server)
        return server.start()

    start.servers = servers
    yield start
    for server in servers:
        server.stop()


# ----------------------------------------------------------------------------- browser
@pytest.fixture(scope="session")
def _playwright(browser_requirements):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def chromium(_playwright, browser_requirements):
    browser = _playwright.chromium.launch(executable_path=browser_requirements, headless=True, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def new_context(chromium):
    """Factory for isolated browser contexts (a new one shares no ``?wb=`` and no storage)."""
    contexts = []

    def make(**kwargs):
        kwargs.setdefault("viewport", {"width": 1400, "height": 1000})
        ctx = chromium.new_context(**kwargs)
        ctx.set_default_timeout(30_000)
        contexts.append(ctx)
        return ctx

    yield make
    for ctx in contexts:
        try:
            ctx.close()
        except Exception:  # the browser may already be gone after a failure
            pass


@pytest.fixture
def page(new_context):
    return new_context().new_page()


@pytest.fixture(autouse=True)
def _server_log_on_failure(request):
    """On a failing test, print the tail of every server log it used (pytest shows it)."""
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        args = request.node.funcargs
        servers = list(getattr(args.get("start_server"), "servers", []))
        if "streamlit_server" in args:
            servers.insert(0, args["streamlit_server"])
        for server in servers:
            print(f"\n--- log tail of {server.url} ({server.log_path}) ---\n{server.log_tail()}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
