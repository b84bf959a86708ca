"""core/ is a library: importing all of it never imports Streamlit."""
from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here takes over ~1.5 s: out of the fast lane

ROOT = Path(__file__).resolve().parents[1]


def test_core_never_imports_streamlit():
    modules = [m.name for m in pkgutil.walk_packages([str(ROOT / "core")], prefix="core.") if not m.name.endswith("__main__")]
    assert len(modules) >= 8
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) + \
        "print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
