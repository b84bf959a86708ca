"""The per-workbench export: versions, histories, annotations, page state and jobs in one zip,
checkpoints only on request."""
from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest

from core.engine import TrainConfig
from core.session.export import workbench_bundle
from core.models import build_model
from core.session.store import Store
from core.session.workbench import Workbench
from core.session.runs import FineTune, JobOptions


def test_bundle_holds_everything_made_on_the_workbench(workspace, tiny_data):
    store = Store(workspace)
    wb = Workbench.create(store, tiny_data, "tiny", build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0))
    job = wb.train(TrainConfig(epochs=2, batch_size=16, seed=42), JobOptions("two epochs"))
    assert job.wait(60) and job.status == "done"
    wb.add_annotations("latent", [(3, {"target": [1.0, 2.0]}), (5, {"target": [0.5, -1.0]})])
    wb.add_annotations("attention", [(7, {"clicks": [[4, 5, 1]]})])
    wb.put_state("monitor.retrain", {"fixed": 3, "of": 4})
    wb.update_settings(name="demo", note="for the lab meeting")

    z = zipfile.ZipFile(io.BytesIO(workbench_bundle(store, wb.id)))
    names = set(z.namelist())
    assert {"manifest.json", "versions.csv", "versions.json", "history/v1.csv", "annotations.csv",
            "annotations.json", "page_state.json", "jobs.csv"} <= names
    assert not any(n.startswith("checkpoints/") for n in names)
    manifest = json.loads(z.read("manifest.json"))
    assert manifest["workbench"]["name"] == "demo" and manifest["counts"] == {"versions": 2, "annotations": 3}
    versions = list(csv.DictReader(io.StringIO(z.read("versions.csv").decode())))
    assert [r["version"] for r in versions] == ["0", "1"] and versions[1]["parent"] == "0"
    assert versions[1]["seed"] == "42" and json.loads(versions[1]["config"])["epochs"] == 2
    assert float(versions[1]["test_acc"]) == pytest.approx(wb.version(1).metrics["test_acc"])
    history = list(csv.DictReader(io.StringIO(z.read("history/v1.csv").decode())))
    assert [int(r["epoch"]) for r in history] == [0, 1] and all(float(r["train_loss"]) > 0 for r in history)
    anns = json.loads(z.read("annotations.json"))
    assert sorted((a["kind"], a["example_id"]) for a in anns) == [("attention", 7), ("latent", 3), ("latent", 5)]
    assert json.loads(z.read("page_state.json"))["monitor.retrain"] == {"fixed": 3, "of": 4}
    jobs = list(csv.DictReader(io.StringIO(z.read("jobs.csv").decode())))
    assert [j["status"] for j in jobs] == ["done"]

    with_ckpt = zipfile.ZipFile(io.BytesIO(workbench_bundle(store, wb.id, checkpoints=True)))
    assert with_ckpt.read("checkpoints/v1.pt") == wb.checkpoint_bytes(1)
    with pytest.raises(KeyError):
        workbench_bundle(store, "0123456789ab")


def test_bundle_carries_a_versions_counterexample_settings(workspace, tiny_data):
    import numpy as np

    from core.feedback.attention.loss import AttentionAnnotation
    from core.feedback.counterexamples import CounterexampleSettings

    store = Store(workspace)
    wb = Workbench.create(store, tiny_data, "tiny", build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0))
    neg = np.zeros((16, 16), bool)
    neg[:, :4] = True
    anns = [AttentionAnnotation.from_masks(int(i), int(tiny_data.labels[i]), positives=[(8, 8)], negative=neg)
            for i in tiny_data.ids("pool")[:2]]
    job = wb.start_training("attention", anns, FineTune(TrainConfig(epochs=1, batch_size=4),
                                                        counterexamples=CounterexampleSettings(k=2)))
    assert job.wait(120) and job.status == "done", job.error
    job = wb.start_training("attention", anns, FineTune(TrainConfig(epochs=1, batch_size=4),
                                                        counterexamples=CounterexampleSettings(enabled=False)))
    assert job.wait(120) and job.status == "done", job.error

    z = zipfile.ZipFile(io.BytesIO(workbench_bundle(store, wb.id)))
    expected = CounterexampleSettings(k=2).to_dict() | {"made": 4}
    versions = json.loads(z.read("versions.json"))
    assert [v["feedback"].get("counterexamples") for v in versions] == [None, expected, None]
    rows = list(csv.DictReader(io.StringIO(z.read("versions.csv").decode())))
    assert json.loads(rows[1]["feedback"])["counterexamples"] == expected
    assert json.loads(rows[2]["feedback"])["counterexamples"] is None  # off: recorded as such, not left out
    assert rows[1]["description"].endswith("+ counterexamples (2 per marked image, 4 made)")
