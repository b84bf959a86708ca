"""Deployment (issue 15): the Dockerfile, the two-replica compose file and its proxy, and the
image's entry and health-check commands run here as the image would run them.

Docker is not available on the development and CI machines, so the image itself is not
built here. Instead the Dockerfile is parsed into its instructions and run in parts: its RUN
steps under /bin/sh with pip, useradd and the like stubbed (they log their arguments), its
COPY lines staged into a folder that stands for the image's WORKDIR (with .dockerignore
applied), and its CMD and HEALTHCHECK started from that folder with its ENV; the README's
commands and the ports of the compose file and the proxy are checked against it."""
from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
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


def test_dockerfile_slim_base_non_root_user_and_exec_form_commands():
    args = dict(a.split("=", 1) for a in instructions("ARG") if "=" in a)
    assert args["PYTHON_VERSION"] == "3.11"
    (base,) = instructions("FROM")
    assert base.startswith("python:${PYTHON_VERSION}-slim")
    env = image_env()
    assert env["STEERBOARD_WORKSPACE"] == "/workspace" and instructions("VOLUME") == ['["/workspace"]']
    assert env["STREAMLIT_SERVER_ADDRESS"] == "0.0.0.0"
    assert health_command() == ["python", "-m", "app.health"]
    assert exec_form(instructions("CMD")[0]) == ["python", "-m", "app.serve"]


# --------------------------------------------------------------------------- the RUN steps, run


FAKE_TOOL = """#!/bin/sh
printf '%s' "$(basename "$0")" >> "$CALLS"
for a in "$@"; do printf ' %s' "$a" >> "$CALLS"; done
printf '\\n' >> "$CALLS"
"""


def run_step(text: str, tmp_path: Path, tools: tuple[str, ...], **env: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """Run a RUN instruction's shell command as Docker does (``/bin/sh -c``), in a folder with
    the files COPYed before it, with ``tools`` replaced by stubs that log their arguments."""
    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    for tool in tools:
        (bin_dir / tool).write_text(FAKE_TOOL)
        (bin_dir / tool).chmod(0o755)
    shutil.copy(ROOT / "requirements.txt", work / "requirements.txt")
    calls = tmp_path / "calls.log"
    calls.write_text("")
    defaults = dict(a.split("=", 1) for a in instructions("ARG") if "=" in a)
    full_env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), **defaults, **env}
    done = subprocess.run(["/bin/sh", "-c", text], cwd=work, env=full_env, capture_output=True, text=True, timeout=30)
    return done, [shlex.split(line) for line in calls.read_text().splitlines()]


def test_the_install_step_takes_the_pinned_torch_from_the_variants_index(tmp_path):
    (step,) = [r for r in instructions("RUN") if "TORCH_VARIANT" in r]
    pins = sorted(re.findall(r"^((?:torch|torchvision)==\S+)$", (ROOT / "requirements.txt").read_text(), re.M))
    assert [p.split("==")[0] for p in pins] == ["torch", "torchvision"]
    index = dict(a.split("=", 1) for a in instructions("ARG") if "=" in a)["TORCH_CPU_INDEX"]

    done, calls = run_step(step, tmp_path, ("pip", "python"))  # the default build: TORCH_VARIANT=cpu
    assert done.returncode == 0, done.stderr
    assert calls[0][:4] == ["pip", "install", "--index-url", index] and sorted(calls[0][4:]) == pins
    assert calls[1] == ["pip", "install", "-r", "requirements.txt"] and calls[2][:2] == ["python", "-c"]

    done, calls = run_step(step, tmp_path, ("pip", "python"), TORCH_VARIANT="cuda")  # PyPI's CUDA wheels
    assert done.returncode == 0, done.stderr
    assert calls[0][:2] == ["pip", "install"] and sorted(calls[0][2:]) == pins
    assert calls[1] == ["pip", "install", "-r", "requirements.txt"]

    done, calls = run_step(step, tmp_path, ("pip", "python"), TORCH_VARIANT="rocm")
    assert done.returncode == 2 and "TORCH_VARIANT must be cpu or cuda, not rocm" in done.stderr and calls == []


def test_the_user_step_makes_a_non_root_user_who_owns_the_workspace(tmp_path):
    (step,) = [r for r in instructions("RUN") if "useradd" in r]
    done, calls = run_step(step, tmp_path, ("useradd", "mkdir", "chown"))
    assert done.returncode == 0, done.stderr
    (user,) = instructions("USER")
    by_tool = {c[0]: c[1:] for c in calls}
    useradd = by_tool["useradd"]
    assert useradd[-1] == user and user not in ("root", "0")
    assert int(useradd[useradd.index("--uid") + 1]) > 0
    workspace = image_env()["STEERBOARD_WORKSPACE"]
    assert by_tool["mkdir"] == ["-p", workspace] and by_tool["chown"] == [f"{user}:{user}", workspace]


# --------------------------------------------------------------------------- what the image holds


def dockerignored(rel: str) -> bool:
    """Whether .dockerignore keeps ``rel`` (a path in the build context) out of the image."""
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.lstrip().startswith("#")]
    parts = rel.split("/")
    for pattern in patterns:
        regex = re.escape(pattern.rstrip("/")).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            return True
    return False


def copies() -> list[tuple[str, str]]:
    """(source in the build context, destination under WORKDIR) of each COPY."""
    out = []
    for rest in instructions("COPY"):
        *sources, dest = shlex.split(rest)
        out.extend((s.rstrip("/"), dest) for s in sources)
    return out


def stage_image(into: Path) -> Path:
    """The image's WORKDIR as the Dockerfile builds it: the COPYed files and nothing else."""
    for source, dest in copies():
        src, target = ROOT / source, into / (source if dest in (".", "./") else dest.rstrip("/"))
        if src.is_dir():
            shutil.copytree(src, target, ignore=lambda d, names: [
                n for n in names if dockerignored(str((Path(d) / n).relative_to(ROOT)))])
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, target)
    return into


def local_imports(path: Path, top: set[str]) -> set[str]:
    """Modules of this repository (top-level name in ``top``) that a file imports, relative ones resolved."""
    package = path.parent.relative_to(ROOT).parts
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] in top}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else ()
            name = ".".join([*base, *([node.module] if node.module else [])])
            if name.split(".")[0] in top:
                out.add(name)
                out |= {f"{name}.{a.name}" for a in node.names if (ROOT / Path(*name.split("."), a.name + ".py")).exists()}
    return out


def test_every_copied_file_exists_and_the_image_holds_every_module_the_app_imports(tmp_path):
    for source, _ in copies():
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"
        assert not dockerignored(source), f"the Dockerfile copies {source}, which .dockerignore leaves out"
    image = stage_image(tmp_path / "app")
    assert (image / "requirements.txt").is_file() and (image / ".streamlit" / "config.toml").is_file()
    assert not list(image.rglob("__pycache__"))  # .dockerignore applied
    top = {p.stem for p in ROOT.iterdir() if not p.name.startswith(".") and (p.is_dir() or p.suffix == ".py")}
    missing = {}
    for path in [*(ROOT / "app").rglob("*.py"), *(ROOT / "core").rglob("*.py"), *(ROOT / "pages").rglob("*.py")]:
        for module in local_imports(path, top):
            where = image / Path(*module.split("."))
            if not (where.with_suffix(".py").is_file() or (where / "__init__.py").is_file() or where.is_dir()):
                missing.setdefault(module, str(path.relative_to(ROOT)))
    assert not missing, f"the image lacks modules the app imports (module: first importer): {missing}"
    # the page scripts the app's navigation runs by path
    scripts = {"/".join(m) for path in (ROOT / "app").rglob("*.py")
               for m in re.findall(r'ROOT / "([\w.]+)" / "([\w.]+\.py)"', path.read_text())}
    assert "pages/home.py" in scripts
    assert not {f for f in scripts if not (image / f).is_file()}, "page scripts the image lacks"
    # the entry and health commands' modules, and the script the entry runs, are in it
    for cmd in (exec_form(instructions("CMD")[0]), health_command()):
        assert cmd[1] == "-m" and (image / Path(*cmd[2].split("."))).with_suffix(".py").is_file(), cmd


def readme_block_with(text: str) -> list[str]:
    """The lines of the README's first shell block that contains ``text``."""
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        if text in block:
            return [line.strip() for line in block.splitlines() if line.strip()]
    raise AssertionError(f"no bash block of the README contains {text!r}")


def command_of(line: str) -> tuple[dict[str, str], list[str]]:
    """(environment assignments, command words) of one README shell line, up to `&`, `&&` or `|`."""
    words = shlex.split(line)
    for stop in ("&", "&&", "|", ";"):
        if stop in words:
            words = words[:words.index(stop)]
    words = [w.rstrip("&") for w in words if w.rstrip("&")]
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return env, words


def test_the_readme_runs_what_the_image_runs_on_the_port_it_exposes():
    (exposed,) = instructions("EXPOSE")
    env = image_env()
    assert env["STREAMLIT_SERVER_PORT"] == exposed
    # the README's replica commands are the image's CMD and HEALTHCHECK
    lines = [command_of(line) for line in readme_block_with("python -m app.serve")]
    assert exec_form(instructions("CMD")[0]) in [words for _, words in lines]
    assert health_command() in [words for _, words in lines]
    serve_ports = [e["STREAMLIT_SERVER_PORT"] for e, w in lines if w == ["python", "-m", "app.serve"]]
    health_ports = [e["STREAMLIT_SERVER_PORT"] for e, w in lines if w == health_command()]
    assert len(set(serve_ports)) == len(serve_ports) >= 2 and set(health_ports) <= set(serve_ports)
    # the entry runs the README's start command's script (`streamlit run app/main.py`)
    (start,) = [w for _, w in map(command_of, readme_block_with("streamlit run")[0].split("&&")) if w[:2] == ["streamlit", "run"]]
    from app import serve

    assert serve.ENTRY.relative_to(Path(serve.__file__).resolve().parents[1]).as_posix() == start[2]
    # one port everywhere: Streamlit's config (none set: its default), the README's docker run,
    # the compose file's container side and the proxy's upstreams
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    from streamlit import config as st_config

    assert str(config.get("server", {}).get("port", st_config._config_options_template["server.port"].default_val)) == exposed
    (run,) = [command_of(line)[1] for line in readme_block_with("docker run") if "docker run" in line]
    assert run[run.index("-p") + 1].split(":")[-1] == exposed
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    apps = [s for s in compose["services"].values() if s.get("build") or s.get("image") == "steerboard"]
    assert apps and all(p.split(":")[-1] == exposed for s in apps for p in s["ports"])
    caddyfile = (ROOT / "deploy" / "Caddyfile").read_text()
    upstreams = re.search(r"reverse_proxy ([^{]+)\{", caddyfile).group(1).split()
    assert upstreams and all(u.split(":")[1] == exposed for u in upstreams)


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


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """The image's WORKDIR, staged from the Dockerfile's COPY lines: the commands below run
    there, so a file the image does not copy is missing for them too."""
    return stage_image(tmp_path_factory.mktemp("image") / "app")


def replica_env(image: Path, workspace: Path, port: int) -> dict[str, str]:
    """The image's environment, with this test's workspace and a free local port."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(image_env())
    env.update(STEERBOARD_WORKSPACE=str(workspace), STREAMLIT_SERVER_PORT=str(port),
               STREAMLIT_SERVER_ADDRESS="127.0.0.1")
    return env


def entry_command() -> list[str]:
    cmd = exec_form(instructions("CMD")[0])
    cmd[0] = sys.executable  # the image's `python`
    return cmd


def start(image: Path, workspace: Path, port: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen(entry_command(), cwd=image, env=replica_env(image, workspace, port), stdin=subprocess.DEVNULL,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def health(image: Path, workspace: Path, port: int) -> subprocess.CompletedProcess:
    cmd = health_command()
    cmd[0] = sys.executable
    return subprocess.run(cmd, cwd=image, env=replica_env(image, workspace, port), capture_output=True, text=True,
                          timeout=30)


def wait_healthy(image: Path, workspace: Path, port: int, proc: subprocess.Popen, log: Path,
                 timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited ({proc.returncode}): {log.read_text()[-2000:]}"
        if health(image, workspace, port).returncode == 0:
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


@pytest.mark.slow
def test_entry_and_health_commands_two_replicas_and_a_refused_shared_workspace(tmp_path, image):
    ws_a, ws_b = tmp_path / "workspace-a", tmp_path / "workspace-b"
    port_a, port_b, port_c = free_port(), free_port(), free_port()
    before = health(image, ws_a, port_a)
    assert before.returncode == 1 and "unhealthy" in before.stderr  # the check can fail
    procs = []
    try:
        a = start(image, ws_a, port_a, tmp_path / "a.log")
        procs.append(a)
        wait_healthy(image, ws_a, port_a, a, tmp_path / "a.log")
        with urllib.request.urlopen(f"http://127.0.0.1:{port_a}/", timeout=10) as reply:
            assert reply.status == 200 and b"<html" in reply.read(4000).lower()
        assert f"pid {a.pid} " in (ws_a / "server.lock").read_text()

        # a second replica given the same workspace exits at once, naming the first server
        c = subprocess.run(entry_command(), cwd=image, env=replica_env(image, ws_a, port_c),
                           capture_output=True, text=True, timeout=60)
        assert c.returncode == 3
        assert "in use by another steerboard server" in c.stderr and f"pid {a.pid} " in c.stderr
        assert health(image, ws_a, port_c).returncode == 1

        # a replica with its own workspace runs beside the first
        b = start(image, ws_b, port_b, tmp_path / "b.log")
        procs.append(b)
        wait_healthy(image, ws_b, port_b, b, tmp_path / "b.log")
        assert health(image, ws_a, port_a).returncode == 0
        assert f"pid {b.pid} " in (ws_b / "server.lock").read_text()
    finally:
        for proc in procs:
            stop(proc)
    # the kernel dropped the claims with the processes: the workspace can be served again
    from core.session.store import claim_workspace

    claim_workspace(ws_a).release()


# --------------------------------------------------------------------------- what pip installs


def pinned(path: Path) -> dict[str, str]:
    """Normalised distribution name -> version of each ``name==version`` line, following ``-r`` files."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            out |= pinned(path.parent / line[3:].strip())
        elif line:
            name, sep, version = line.partition("==")
            assert sep and version, f"{path.name}: {line!r} is not pinned (name==version)"
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def third_party_imports(folders: tuple[str, ...]) -> dict[str, str]:
    """Top-level modules imported in ``folders`` that are neither the standard library nor this
    repository's own, -> the first file importing each."""
    own = {p.stem for p in ROOT.rglob("*.py")} | {p.name for p in ROOT.iterdir() if p.is_dir()}
    out: dict[str, str] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in own and top != "__future__":
                        out.setdefault(top, str(path.relative_to(ROOT)))
    return out


@pytest.mark.parametrize("folders,requirements", [(("app", "core", "pages"), "requirements.txt"),
                                                  (("tests", "benchmarks"), "requirements-dev.txt")])
def test_every_package_the_code_imports_is_pinned(folders, requirements):
    """The image installs requirements.txt only, so every package the app imports is pinned
    there (and the tests' and benchmarks' in requirements-dev.txt), at the version installed here."""
    from importlib import metadata

    pins = pinned(ROOT / requirements)
    dists = metadata.packages_distributions()
    unpinned = {}
    for module, where in third_party_imports(folders).items():
        names = [re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(module, [module])]
        if not any(n in pins for n in names):
            unpinned[module] = where
    assert not unpinned, f"imported but not pinned in {requirements} (module: first importer): {unpinned}"
    for name, version in pins.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # e.g. a CUDA-only pin on a CPU machine
        assert installed.split("+")[0] == version.split("+")[0], f"{name}: pinned {version}, installed {installed}"


# --------------------------------------------------------------------------- CI


@pytest.mark.slow
def test_ci_runs_the_readmes_test_command_and_prints_the_slowest_tests(tmp_path):
    readme_command = next(line for line in readme_block_with("python -m pytest") if "python -m pytest" in line)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert ci[-1] == readme_command  # verbatim, as the last thing CI does
    # the pytest configuration that command reads makes every run print its slowest tests
    one = "tests/test_deploy.py::test_dockerfile_slim_base_non_root_user_and_exec_form_commands"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", one], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "slowest 30 durations" in done.stdout, done.stdout[-2000:]
