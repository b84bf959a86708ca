"""The one harness that starts the app's Streamlit server in a subprocess, for the browser
tests (``tests/browser/conftest.py``) and the benchmarks that drive a real server
(``benchmarks/app_latency.py``, ``study_load.py``, ``open_progress.py``,
``attention_page_run.py``; they put this folder on ``sys.path``).

``StreamlitServer(workspace)`` runs ``streamlit run app/main.py`` headless on 127.0.0.1 in its
own process group, with ``STEERBOARD_WORKSPACE`` set. ``start()`` waits for
``GET /_stcore/health``; ``kill()`` sends SIGKILL to the whole group (a crash: nothing gets to
clean up); ``stop()`` is SIGTERM then SIGKILL; ``restart()`` starts again on the same workspace
and port, so saved URLs stay valid; ``rss_mb()`` is the group's resident memory.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENTRY = "app/main.py"
HEALTH_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """True when ``port`` can be bound on 127.0.0.1 (a killed server's port may take a moment)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class StreamlitServer:
    """``streamlit run app/main.py`` in its own process group on 127.0.0.1:PORT (see the module
    docstring). ``extra_env`` is added to the environment (after ``base_env``, which a subclass
    may set, e.g. the tests' torch thread count); the log goes to ``log_path`` (default: beside
    the workspace)."""

    base_env: dict[str, str] = {}

    def __init__(self, workspace: Path, port: int | None = None, *, extra_env: dict | None = None,
                 entry: str = ENTRY, log_path: Path | None = None) -> None:
        self.workspace = Path(workspace)
        self.port = port or free_port()
        self.extra_env = dict(extra_env or {})
        self.entry = entry
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(log_path) if log_path else self.workspace.parent / f"{self.workspace.name}-streamlit-{self.port}.log"
        self._log = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "streamlit", "run", self.entry, "--server.headless", "true",
                "--server.port", str(self.port), "--server.address", "127.0.0.1"]

    def env(self) -> dict:
        return {**os.environ, "STEERBOARD_WORKSPACE": str(self.workspace), "PYTHONUNBUFFERED": "1",
                **self.base_env, **self.extra_env}

    def start(self, timeout: float = HEALTH_TIMEOUT_S) -> "StreamlitServer":
        """Start the server and wait until it is healthy; returns ``self``."""
        assert not self.running, "server already running"
        deadline = time.monotonic() + 10
        while not port_free(self.port) and time.monotonic() < deadline:  # a killed predecessor
            time.sleep(0.1)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self._log.write(f"\n===== start {self.starts + 1}: {' '.join(self.command())}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=self.env(), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode} before it was healthy:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return
                    last = f"HTTP {r.status}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.1)
        raise TimeoutError(f"{self.url}/_stcore/health not ok after {timeout:.0f}s ({last}):\n{self.log_tail()}")

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # start_new_session: the group id is the pid
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the server's process group, as a crash or `kill -9` would."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._close_log()

    def stop(self, grace: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)  # anything left in the group
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self._close_log()

    def restart(self, *, hard: bool = True, timeout: float = HEALTH_TIMEOUT_S) -> "StreamlitServer":
        """Kill (``hard``) or stop the server and start it again on the same workspace and port."""
        (self.kill if hard else self.stop)()
        return self.start(timeout)

    def rss_mb(self) -> float:
        """Resident memory of every process in the server's group (from /proc), in MB; 0 when
        it is not running."""
        if not self.running:
            return 0.0
        total = 0
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                if os.getpgid(int(d.name)) != self.proc.pid:
                    continue
                for line in (d / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            except (OSError, ProcessLookupError, ValueError):
                continue
        return total / 1024

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"
