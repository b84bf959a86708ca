"""Deployment (issue 15): the Dockerfile, the two-replica compose file and its proxy, and the
image's entry and health-check commands run here as the image would run them.

Docker is not available on the development and CI machines, so the image itself is not
built here; instead the Dockerfile's ENV, CMD and HEALTHCHECK are read from the file and run
from the repository root (the image's WORKDIR holds the same folders)."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        lines.append(current)
        current = ""
    out = []
    for line in lines:
        word, _, rest = line.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def instructions(name: str) -> list[str]:
    return [rest for word, rest in dockerfile() if word == name]


def image_env() -> dict[str, str]:
    env = {}
    for rest in instructions("ENV"):
        for item in shlex.split(rest):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def exec_form(rest: str) -> list[str]:
    """A CMD's JSON (exec) form; the shell form is refused (signals would go to a shell)."""
    args = json.loads(rest)
    assert isinstance(args, list) and all(isinstance(a, str) for a in args), rest
    return args


def health_command() -> list[str]:
    (rest,) = instructions("HEALTHCHECK")
    return exec_form(rest[rest.index("CMD") + 3:].strip())


def test_dockerfile_slim_base_non_root_health_check_and_entry():
    args = dict(a.split("=", 1) for a in instructions("ARG") if "=" in a)
    assert args["PYTHON_VERSION"] == "3.11"
    (base,) = instructions("FROM")
    assert base.startswith("python:${PYTHON_VERSION}-slim")
    # CPU wheels by default, CUDA by a build argument; the torch pins it greps exist
    assert args["TORCH_VARIANT"] == "cpu"
    run = " ".join(instructions("RUN"))
    assert "cpu)" in run and "cuda)" in run and "--index-url" in run
    pins = re.findall(r"^(torch|torchvision)==\S+$", (ROOT / "requirements.txt").read_text(), re.M)
    assert sorted(pins) == ["torch", "torchvision"]
    assert "pip install -r requirements.txt" in run
    # a non-root user that owns the workspace volume
    (user,) = instructions("USER")
    assert user not in ("root", "0")
    assert re.search(rf"useradd .*--uid (\d+) .*{user}", run) and "uid 0 " not in run
    assert f"chown {user}:{user} /workspace" in run
    env = image_env()
    assert env["STEERBOARD_WORKSPACE"] == "/workspace" and instructions("VOLUME") == ['["/workspace"]']
    assert env["STREAMLIT_SERVER_ADDRESS"] == "0.0.0.0" and instructions("EXPOSE") == [env["STREAMLIT_SERVER_PORT"]]
    assert health_command() == ["python", "-m", "app.health"]
    assert exec_form(instructions("CMD")[0]) == ["python", "-m", "app.serve"]
    # the image holds every folder the app imports from (and the theme/server config)
    copied = {rest.split()[0].rstrip("/") for rest in instructions("COPY")}
    assert {"requirements.txt", ".streamlit", "core", "app", "pages"} <= copied
    local = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
    used = set()
    for folder in ("app", "core", "pages"):
        for path in (ROOT / folder).rglob("*.py"):
            used |= set(re.findall(r"^\s*(?:from|import) (\w+)", path.read_text(), re.M)) & local
    assert used <= copied, f"the app imports {sorted(used - copied)}, which the image does not copy"
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not ignored & copied


def test_compose_gives_each_replica_its_own_workspace_behind_a_sticky_proxy():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    apps = {name: s for name, s in compose["services"].items() if s.get("build")}
    assert len(apps) == 2
    workspaces, data = [], []
    for service in apps.values():
        # source:target[:mode], where the source may be ${VAR:-default}
        mounts = {m[2]: m.groups() for m in (re.match(r"^(.*):(/[^:]*)(?::(ro|rw))?$", v) for v in service["volumes"])}
        workspaces.append(mounts["/workspace"][0])
        data.append(mounts["/data"])
        assert service["environment"]["STEERBOARD_DATA_ROOTS"] == "/data"
    assert len(set(workspaces)) == 2 and set(workspaces) <= set(compose["volumes"])  # never shared
    assert len({d[0] for d in data}) == 1 and all(d[2] == "ro" for d in data)  # datasets: shared, read-only
    proxy = compose["services"]["proxy"]
    caddyfile = (ROOT / proxy["volumes"][0].split(":")[0]).read_text()
    upstreams = re.search(r"reverse_proxy ([^{]+)\{", caddyfile).group(1).split()
    assert sorted(u.split(":")[0] for u in upstreams) == sorted(apps)
    assert re.search(r"^\s*lb_policy cookie \w+", caddyfile, re.M)
    assert "health_uri /_stcore/health" in caddyfile


# --------------------------------------------------------------------------- the commands, run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replica_env(workspace: Path, port: int) -> dict[str, str]:
    """The image's environment, with this test's workspace and a free local port."""
    env = {**os.environ, **image_env()}
    env.update(STEERBOARD_WORKSPACE=str(workspace), STREAMLIT_SERVER_PORT=str(port),
               STREAMLIT_SERVER_ADDRESS="127.0.0.1", PYTHONPATH=str(ROOT))
    return env


def entry_command() -> list[str]:
    cmd = exec_form(instructions("CMD")[0])
    cmd[0] = sys.executable  # the image's `python`
    return cmd


def start(workspace: Path, port: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen(entry_command(), cwd=ROOT, env=replica_env(workspace, port), stdin=subprocess.DEVNULL,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def health(workspace: Path, port: int) -> subprocess.CompletedProcess:
    cmd = health_command()
    cmd[0] = sys.executable
    return subprocess.run(cmd, cwd=ROOT, env=replica_env(workspace, port), capture_output=True, text=True, timeout=30)


def wait_healthy(workspace: Path, port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited ({proc.returncode}): {log.read_text()[-2000:]}"
        if health(workspace, port).returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"not healthy after {timeout} s: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_entry_and_health_commands_two_replicas_and_a_refused_shared_workspace(tmp_path):
    ws_a, ws_b = tmp_path / "workspace-a", tmp_path / "workspace-b"
    port_a, port_b, port_c = free_port(), free_port(), free_port()
    before = health(ws_a, port_a)
    assert before.returncode == 1 and "unhealthy" in before.stderr  # the check can fail
    procs = []
    try:
        a = start(ws_a, port_a, tmp_path / "a.log")
        procs.append(a)
        wait_healthy(ws_a, port_a, a, tmp_path / "a.log")
        with urllib.request.urlopen(f"http://127.0.0.1:{port_a}/", timeout=10) as reply:
            assert reply.status == 200 and b"<html" in reply.read(4000).lower()
        assert f"pid {a.pid} " in (ws_a / "server.lock").read_text()

        # a second replica given the same workspace exits at once, naming the first server
        c = subprocess.run(entry_command(), cwd=ROOT, env=replica_env(ws_a, port_c),
                           capture_output=True, text=True, timeout=60)
        assert c.returncode == 3
        assert "in use by another steerboard server" in c.stderr and f"pid {a.pid} " in c.stderr
        assert health(ws_a, port_c).returncode == 1

        # a replica with its own workspace runs beside the first
        b = start(ws_b, port_b, tmp_path / "b.log")
        procs.append(b)
        wait_healthy(ws_b, port_b, b, tmp_path / "b.log")
        assert health(ws_a, port_a).returncode == 0
        assert f"pid {b.pid} " in (ws_b / "server.lock").read_text()
    finally:
        for proc in procs:
            stop(proc)
    # the kernel dropped the claims with the processes: the workspace can be served again
    from core.store import claim_workspace

    claim_workspace(ws_a).release()
