"""Issue 29: the engine and monitor overhead benchmarks measure with the same torch thread
count (one shared default, ``_common.set_torch_threads``) and record it in their JSON. The
monitor's figure was taken with 1 thread and the engine's with torch's default of 2, so their
ratios were not comparable. Nothing is timed here: the timing is replaced by a stub."""
from __future__ import annotations

import json

import pytest
import torch

from core.session.jobs import compute_plan
from support import benchmark, make_tiny_dataset


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _fake_interleaved(ours, reference, *, pairs=5, warmup=1):
    return {"ours_s": 1.0, "reference_s": 1.0, "ratio": 1.0, "ours_all": [1.0], "reference_all": [1.0]}


@pytest.mark.parametrize("name", ["engine_overhead", "monitor_overhead"])
@pytest.mark.parametrize("asked", [None, 3])
def test_both_overhead_benchmarks_use_one_thread_default_and_record_it(tmp_path, monkeypatch, threads_restored,
                                                                      name, asked):
    module = benchmark(name)
    data = make_tiny_dataset()
    monkeypatch.setattr(module, "load_dataset", lambda *a, **k: data)
    monkeypatch.setattr(module, "interleaved", _fake_interleaved)
    default = benchmark("_common").set_torch_threads(None)
    assert default == compute_plan()[1]
    torch.set_num_threads(default + 1)  # whatever the process had before: the benchmark sets its own
    out = tmp_path / f"{name}.json"
    argv = ["--json", str(out)] + (["--threads", str(asked)] if asked else [])
    module.main(argv)
    want = asked or default
    assert torch.get_num_threads() == want
    rows = json.loads(out.read_text())
    for row in rows if isinstance(rows, list) else [rows]:
        assert row["params"]["torch_threads"] == want
        assert row["provenance"]["torch_threads"] == want
