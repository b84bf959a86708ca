"""A study's results as tidy tables and a zip: events, one row per annotation with its seconds
and condition, questionnaires with their scores, a summary per participant x condition, and
paired tests between conditions. Participants appear by number, from 1 as on the pages (their
tokens are credentials and never leave the server).

Every condition's task (attention, latent or grid) is a column of the summary and the
annotations; an item is an image, or a move for a latent condition (whose ``images`` column
counts its moves, its seconds are per move).

One name per meaning, with its unit: ``gestures`` are the gesture events logged on an item
(clicks, undos, clears, vertices, selections, moves, grid marks and erases), ``marks`` what the
confirmed annotation keeps (its clicks or vertices, marked grid squares, or moved points);
``test_acc_pct`` is the percent of every test image a condition's final model gets right (the bias-aligned test images included), ``conflicting_acc_pct`` the percent
of the bias-conflicting test images.
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

from core.study.design import paired_tests, per_item, summarize
from core.study.store import StudyError, StudyStore

#: summary columns compared between conditions (higher or lower is better depends on the column)
COMPARED = ("median_seconds", "gestures_per_image", "sus", "tlx", "test_acc_pct", "conflicting_acc_pct")


def shown_number(stored: int) -> int:
    """The participant number the pages and every export use (from 1) for the store's (from 0)."""
    return int(stored) + 1


def _annotation_json(payload: dict[str, Any]) -> str:
    """A confirm event's payload for annotations.csv, its clicks or vertices kept as ``marks``
    (the payload calls them "operations", which the table's ``gestures`` column means)."""
    out = {("marks" if k == "operations" else k): v for k, v in payload.items()}
    return json.dumps(out, sort_keys=True)


def study_tables(studies: StudyStore, study_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every table of the results, rows as dicts with plain values. Annotations come per
    participant in the order their images were shown (``shown_order`` counts them from 1 within
    each condition)."""
    studies.study(study_id)  # StudyError for an unknown study
    people = studies.participants(study_id)
    number = {p.token: shown_number(p.number) for p in people}
    order = {p.token: p.conditions for p in people}
    design = studies.study(study_id)["design"]
    task_of = {c["name"]: c.get("task") or design.get("task", "attention") for c in design["conditions"]}
    events = studies.events(study_id)
    event_rows = [{"participant": number[e.participant], "condition": e.condition, "t": e.t, "kind": e.kind,
                   "item": e.item, "payload": json.dumps(e.payload, sort_keys=True)} for e in events]
    confirms = {(e.participant, e.condition, e.item): e.payload for e in events if e.kind == "confirm"}
    # per participant by number (per_item groups them by token, which sorts at random), each in the order shown
    items = sorted(per_item(events), key=lambda r: number[r["participant"]])
    annotations, seen = [], {}
    for r in items:
        key = (r["participant"], r["condition"])
        seen[key] = seen.get(key, 0) + 1
        payload = confirms.get((r["participant"], r["condition"], r["item"]), {})
        annotations.append({
            "participant": number[r["participant"]], "condition": r["condition"], "task": task_of.get(r["condition"]),
            "position": order[r["participant"]].index(r["condition"]) + 1 if r["condition"] in order[r["participant"]] else None,
            "shown_order": seen[key], "item": r["item"], "seconds": r["seconds"], "gestures": r["operations"],
            "undos": r["undos"], "marks": payload.get("operations"), "annotation": _annotation_json(payload)})
    answers = studies.answers(study_id)
    questionnaires = [{"participant": shown_number(a["number"]), "step": a["step"], "instrument": a["instrument"],
                       "score": a["score"], "answers": json.dumps(a["answers"], sort_keys=True)} for a in answers]
    scores = {(shown_number(a["number"]), a["step"], a["instrument"]): a["score"] for a in answers}
    summary = []
    by_pc = {(r["participant"], r["condition"]): r for r in summarize(items)}
    for p in people:
        outcomes = p.progress.get("outcomes", {})
        n = shown_number(p.number)
        for position, condition in enumerate(p.conditions, start=1):
            s = by_pc.get((p.token, condition), {})
            out = outcomes.get(condition, {})
            summary.append({"participant": n, "condition": condition, "task": task_of.get(condition),
                            "position": position,
                            "images": s.get("images", 0), "median_seconds": s.get("median_seconds"),
                            "gestures_per_image": s.get("operations_per_image"),
                            "sus": scores.get((n, condition, "sus")), "tlx": scores.get((n, condition, "tlx")),
                            "test_acc_pct": out.get("test_acc"), "conflicting_acc_pct": out.get("conflicting_acc")})
    names = [c["name"] for c in studies.study(study_id)["design"]["conditions"]]
    tests = []
    for a, b in itertools.combinations(names, 2):
        for measure in COMPARED:
            va, vb = [], []
            for p in people:  # pairs from participants who have the measure in both conditions
                n = shown_number(p.number)
                x = next((r[measure] for r in summary if r["participant"] == n and r["condition"] == a), None)
                y = next((r[measure] for r in summary if r["participant"] == n and r["condition"] == b), None)
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
            outcome = (p.progress.get("outcomes") or {}).get(e.condition, {})
            out.append({"participant": shown_number(p.number), "condition": e.condition, "version": v.number,
                        "checkpoint": v.checkpoint, "metrics": v.metrics,
                        "test_acc_pct": outcome.get("test_acc"), "conflicting_acc_pct": outcome.get("conflicting_acc")})
    return out


def fine_tune_settings(design: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What each condition's fine-tune used, resolved from the design: its task, counterexamples
    (and per image) and for a grid condition whether it had marks; latent moves have no
    counterexamples. A design made before the option has no key: off. A condition whose
    settings the participant page refuses too is left out (nothing was fine-tuned)."""
    from core.study.flow import normalize_design

    try:
        design = normalize_design(design)
    except StudyError:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for c in design["conditions"]:
        try:
            if c["task"] == "attention":
                from core.study.attention import condition_settings

                s = condition_settings(design, c["name"])
                out[c["name"]] = {"task": "attention", "counterexamples": s.counterexamples,
                                  "cex_k": s.cex_k if s.counterexamples else None}
            elif c["task"] == "grid":
                from core.study.grid import condition_settings as grid_settings

                g = grid_settings(design, c["name"])
                cex = g.counterexamples()
                out[c["name"]] = {"task": "grid", "marks": g.marks, "penalty": bool(g.marks and g.page.penalty),
                                  "counterexamples": cex.enabled, "cex_k": cex.k if cex.enabled else None}
            else:
                from core.study.latent import condition_settings as latent_settings

                lat = latent_settings(design, c["name"])
                out[c["name"]] = {"task": "latent", "gesture": lat.gesture, "counterexamples": False, "cex_k": None}
        except StudyError:
            continue
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
                "participants": [{"number": shown_number(p.number), "order": p.conditions}
                                 for p in studies.participants(study_id)],
                "files": {name + ".csv": len(rows) for name, rows in tables.items()},
                "columns": {"gestures": "gesture events logged on the item (clicks, undos, clears, vertices, "
                                        "selections, moves, grid marks and erases)",
                            "marks": "clicks or vertices, marked grid squares or moved points the confirmed "
                                     "annotation keeps",
                            "images": "items confirmed: images, or moves for a latent condition",
                            "seconds": "from the item shown to its confirmation (for a latent condition: from "
                                       "the map ready for the move to the move)",
                            "test_acc_pct": "percent of every test image right (bias-aligned ones included)",
                            "conflicting_acc_pct": "percent of the bias-conflicting test images right",
                            "version_metrics": "the workbench version's own figures, fractions 0-1 of its splits "
                                               "(on a biased set its test split is the bias-conflicting one)"},
                "models": [{"file": name, "participant": m["participant"], "condition": m["condition"],
                            "version": m["version"], "test_acc_pct": m["test_acc_pct"],
                            "conflicting_acc_pct": m["conflicting_acc_pct"], "version_metrics": m["metrics"]}
                           for name, m in files.items()]}
    manifest["fine_tune"] = fine_tune_settings(study["design"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, rows in tables.items():
            zf.writestr(f"{name}.csv", to_csv(rows))
        for name, m in files.items():
            zf.write(m["checkpoint"], name)
        zf.writestr("manifest.json", json.dumps(manifest, indent=2, default=str))
    return buf.getvalue()
