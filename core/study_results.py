"""A study's results as tidy tables and a zip: events, one row per annotation with its seconds
and condition, questionnaires with their scores, a summary per participant x condition, and
paired tests between conditions. Participants appear by number: their tokens are credentials
and never leave the server.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import statistics
import time
import zipfile
from pathlib import Path
from typing import Any

from core.study import paired_tests, per_item, summarize
from core.study_store import StudyError, StudyStore

#: summary columns compared between conditions (higher or lower is better depends on the column)
COMPARED = ("median_seconds", "operations_per_image", "sus", "tlx", "test_acc", "conflicting_acc")


def study_tables(studies: StudyStore, study_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every table of the results, rows as dicts with plain values."""
    study = studies.study(study_id)
    people = studies.participants(study_id)
    number = {p.token: p.number for p in people}
    order = {p.token: p.conditions for p in people}
    events = studies.events(study_id)
    event_rows = [{"participant": number[e.participant], "condition": e.condition, "t": e.t, "kind": e.kind,
                   "item": e.item, "payload": json.dumps(e.payload, sort_keys=True)} for e in events]
    confirms = {(e.participant, e.condition, e.item): e.payload for e in events if e.kind == "confirm"}
    items = per_item(events)
    annotations = [{"participant": number[r["participant"]], "condition": r["condition"],
                    "position": order[r["participant"]].index(r["condition"]) + 1 if r["condition"] in order[r["participant"]] else None,
                    "item": r["item"], "seconds": r["seconds"], "operations": r["operations"], "undos": r["undos"],
                    "annotation": json.dumps(confirms.get((r["participant"], r["condition"], r["item"]), {}), sort_keys=True)}
                   for r in items]
    answers = studies.answers(study_id)
    questionnaires = [{"participant": a["number"], "step": a["step"], "instrument": a["instrument"], "score": a["score"],
                       "answers": json.dumps(a["answers"], sort_keys=True)} for a in answers]
    scores = {(a["number"], a["step"], a["instrument"]): a["score"] for a in answers}
    summary = []
    by_pc = {(r["participant"], r["condition"]): r for r in summarize(items)}
    for p in people:
        outcomes = p.progress.get("outcomes", {})
        for position, condition in enumerate(p.conditions, start=1):
            s = by_pc.get((p.token, condition), {})
            out = outcomes.get(condition, {})
            summary.append({"participant": p.number, "condition": condition, "position": position,
                            "images": s.get("images", 0), "median_seconds": s.get("median_seconds"),
                            "operations_per_image": s.get("operations_per_image"),
                            "sus": scores.get((p.number, condition, "sus")), "tlx": scores.get((p.number, condition, "tlx")),
                            "test_acc": out.get("test_acc"), "conflicting_acc": out.get("conflicting_acc")})
    names = [c["name"] for c in study["design"]["conditions"]]
    tests = []
    for a, b in itertools.combinations(names, 2):
        for measure in COMPARED:
            va, vb = [], []
            for p in people:  # pairs from participants who have the measure in both conditions
                x = next((r[measure] for r in summary if r["participant"] == p.number and r["condition"] == a), None)
                y = next((r[measure] for r in summary if r["participant"] == p.number and r["condition"] == b), None)
                if x is not None and y is not None:
                    va.append(x)
                    vb.append(y)
            if not va:
                continue
            tests.append({"measure": measure, "condition_a": a, "condition_b": b, **paired_tests(va, vb)})
    return {"events": event_rows, "annotations": annotations, "questionnaires": questionnaires,
            "summary": summary, "tests": tests}


def condition_means(summary: list[dict[str, Any]], measure: str) -> dict[str, float | None]:
    """Mean of ``measure`` per condition over the participants who have it."""
    out: dict[str, float | None] = {}
    for condition in dict.fromkeys(r["condition"] for r in summary):
        values = [r[measure] for r in summary if r["condition"] == condition and r[measure] is not None]
        out[condition] = statistics.fmean(values) if values else None
    return out


def to_csv(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Rows as CSV text (header from ``columns`` or the first row's keys; empty: header only)."""
    columns = columns or (list(rows[0]) if rows else [])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def condition_models(studies: StudyStore, study_id: str) -> list[dict[str, Any]]:
    """The model each finished condition ended with: participant number, condition, workbench
    version and its checkpoint file (from the condition's ``condition_done`` event and the
    participant's workbench for that condition). Conditions not finished have none."""
    people = {p.token: p for p in studies.participants(study_id)}
    out = []
    for e in studies.events(study_id):
        p = people.get(e.participant)
        if e.kind != "condition_done" or p is None or e.payload.get("version") is None:
            continue
        wb_id = (p.progress.get("workbenches") or {}).get(e.condition)
        versions = {v.number: v for v in studies.store.versions(wb_id)} if wb_id else {}
        v = versions.get(int(e.payload["version"]))
        if v is not None and Path(v.checkpoint).is_file():
            out.append({"participant": p.number, "condition": e.condition, "version": v.number,
                        "checkpoint": v.checkpoint, "metrics": v.metrics})
    return out


def export_zip(studies: StudyStore, study_id: str, *, models: bool = False,
               tables: dict[str, list[dict[str, Any]]] | None = None) -> bytes:
    """The results as a zip: events.csv, annotations.csv (one row per annotation, with its
    seconds and condition), questionnaires.csv, summary.csv, tests.csv and manifest.json (the
    study's design and each participant's condition order). With ``models``, also each
    finished condition's final model as ``models/participant-<n>-<condition>-v<k>.pt`` (listed
    in the manifest). ``tables``: :func:`study_tables` already computed for this study."""
    study = studies.study(study_id)
    tables = tables if tables is not None else study_tables(studies, study_id)
    chosen = condition_models(studies, study_id) if models else []
    files = {f"models/participant-{m['participant']}-{m['condition']}-v{m['version']}.pt": m for m in chosen}
    manifest = {"study": {"id": study["id"], "name": study["name"], "created": study["created"]},
                "design": study["design"], "exported": time.time(),
                "participants": [{"number": p.number, "order": p.conditions} for p in studies.participants(study_id)],
                "files": {name + ".csv": len(rows) for name, rows in tables.items()},
                "models": [{"file": name, "participant": m["participant"], "condition": m["condition"],
                            "version": m["version"], "metrics": m["metrics"]} for name, m in files.items()]}
    if study["design"].get("task", "attention") == "attention":
        from core.study_attention import condition_settings

        # what each condition's fine-tune used, resolved (a design made before the option has no key: off)
        manifest["fine_tune"] = {}
        for c in study["design"]["conditions"]:
            try:
                s = condition_settings(study["design"], c["name"])
            except StudyError:  # a design the participant page refuses too: nothing was fine-tuned
                continue
            manifest["fine_tune"][c["name"]] = {"counterexamples": s.counterexamples,
                                                "cex_k": s.cex_k if s.counterexamples else None}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, rows in tables.items():
            zf.writestr(f"{name}.csv", to_csv(rows))
        for name, m in files.items():
            zf.write(m["checkpoint"], name)
        zf.writestr("manifest.json", json.dumps(manifest, indent=2, default=str))
    return buf.getvalue()
