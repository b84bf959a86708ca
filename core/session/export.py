"""One download per workbench: everything a person made on it, in open formats.

:func:`workbench_bundle` returns a ``.zip`` with

- ``manifest.json``: the workbench (id, name, note, dataset, model, settings), when and with
  what it was exported, and the list of files;
- ``versions.csv`` and ``versions.json``: every version with its parent, description, seed
  and training config, metrics and feedback summary;
- ``history/v<N>.csv``: each version's per-epoch training history (loss, accuracy, time);
- ``annotations.csv`` and ``annotations.json``: every annotation of every kind (moves,
  clicks, grid marks, selections...) with its example id and payload;
- ``page_state.json``: what the pages keep (latent results and undo history, selection
  reports, grid reviews, settings);
- ``jobs.csv``: every job, how it ended and why;
- with ``checkpoints=True``, ``checkpoints/v<N>.pt`` (weights only, as saved).

JSON files are exact; CSV files flatten nested values to JSON text in their cell.
"""
from __future__ import annotations

import csv
import io
import json
import time
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from core.session.store import Store

BUNDLE_FORMAT = 1


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return "" if value is None else value


def _csv(rows: list[dict[str, Any]], columns: list[str] | None = None) -> bytes:
    columns = columns or sorted({k for r in rows for k in r})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(r.get(k)) for k in columns})
    return buf.getvalue().encode()


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True, default=str).encode()


def version_rows(store: Store, wb_id: str) -> list[dict[str, Any]]:
    """One flat row per version: number, parent, created, description, seed, the metrics'
    scalar values as columns, and config / feedback as JSON text."""
    rows = []
    for v in store.versions(wb_id):
        fb = dict(v.feedback)
        row: dict[str, Any] = {"version": v.number, "parent": v.parent,
                               "created": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(v.created)),
                               "description": v.description, "seed": fb.get("seed"), "config": fb.get("config")}
        for k, val in v.metrics.items():
            if isinstance(val, (int, float, str)) or val is None:
                row[k] = val
        row["feedback"] = {k: val for k, val in fb.items() if k not in ("config",)}
        rows.append(row)
    return rows


def workbench_bundle(store: Store, wb_id: str, *, checkpoints: bool = False) -> bytes:
    """The zip described in the module docstring, in memory. ``KeyError`` for an unknown id."""
    record = store.get_workbench(wb_id)
    if record is None:
        raise KeyError(f"No workbench {wb_id!r}.")
    versions = store.versions(wb_id)
    files: dict[str, bytes] = {}
    rows = version_rows(store, wb_id)
    lead = ["version", "parent", "created", "description", "seed", "test_acc", "val_acc", "train_acc"]
    rest = sorted({k for r in rows for k in r} - set(lead) - {"config", "feedback"})
    files["versions.csv"] = _csv(rows, lead + rest + ["config", "feedback"])
    files["versions.json"] = _json([asdict(v) | {"checkpoint": Path(v.checkpoint).name} for v in versions])
    for v in versions:
        history = v.metrics.get("history")
        if isinstance(history, list) and history:
            files[f"history/v{v.number}.csv"] = _csv(history)
    anns = store.annotations(wb_id)
    ann_rows = [{"id": a.id, "kind": a.kind, "example_id": a.example_id, "created": a.created, "payload": a.payload}
                for a in anns]
    files["annotations.csv"] = _csv(ann_rows, ["id", "kind", "example_id", "created", "payload"])
    files["annotations.json"] = _json(ann_rows)
    files["page_state.json"] = _json(store.all_state(wb_id))
    files["jobs.csv"] = _csv([asdict(j) for j in store.jobs(wb_id, limit=100_000)])
    if checkpoints:
        for v in versions:
            path = Path(v.checkpoint)
            if path.is_file():
                files[f"checkpoints/v{v.number}.pt"] = path.read_bytes()
    manifest = {
        "format": BUNDLE_FORMAT, "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "workbench": {"id": record.id, "name": record.settings.get("name", ""), "note": record.settings.get("note", ""),
                      "data_source": record.data_source, "arch": record.arch, "current_version": record.current_version,
                      "settings": record.settings,
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))},
        "counts": {"versions": len(versions), "annotations": len(anns)},
        "checkpoints": checkpoints, "files": sorted(files),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", _json(manifest))
        for name in sorted(files):
            zf.writestr(name, files[name])
    return buf.getvalue()
