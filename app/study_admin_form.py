"""Study admin's New study form: the tasks of the conditions, then one form with the study's
fields and each condition's own. It draws and hands back what was typed; the page makes the
study from it."""
from __future__ import annotations

import re
from dataclasses import dataclass

import streamlit as st

from core.feedback.attention.workflow import COUNTEREXAMPLES_ON, ROUND_LR, ROUND_REHEARSAL
from core.feedback.grid.job import COUNTEREXAMPLES_ON as GRID_COUNTEREXAMPLES_ON
from core.feedback.grid.workflow import REVIEW_SAMPLERS
from core.study.flow import INSTRUMENTS
from core.study.latent import GESTURES

SAMPLERS = ["gmm", "entropy", "margin", "kcenter", "random"]
DATASETS = ["biased-digits", "digits"]
NEW_STUDY_KEYS = {"sa-name", "sa-data", "sa-people", "sa-intro", "sa-practice", "sa-after", "sa-final", "sa-items"}
TASKS = {"attention": "Attention clicking (seed 001)", "latent": "Latent editing (seed 000)",
         "grid": "Grid feedback (seed 002)"}
CEX_HELP = ("Copies of each annotated image whose ignored regions (grid: marked squares) come from other training "
            "images, as on the {page} page. Off: the {loss} alone (studies made before this option fine-tune "
            "without them).")


def _attention_fields(i: int, cols) -> dict:
    a, b, c, d = cols
    return {"name": a.text_input("Name", value=["click", "polygon", "random", "gmm"][i], key=f"sa-c{i}-name"),
            "settings": {"mode": b.selectbox("Mode", ["click", "polygon"], index=i % 2, key=f"sa-c{i}-mode"),
                         "sampler": c.selectbox("Sampler", SAMPLERS, key=f"sa-c{i}-sampler"),
                         "counterexamples": st.checkbox(
                             "Fine-tune with counterexamples of the 'ignore' marks", value=COUNTEREXAMPLES_ON,
                             key=f"sa-c{i}-cex", help=CEX_HELP.format(page="Attention", loss="attention loss")),
                         # the page's round fine-tune, written down so that the study keeps it if the page's changes
                         "lr": ROUND_LR, "rehearsal": ROUND_REHEARSAL},
            "budget": int(d.number_input("Images", 1, 200, 16, key=f"sa-c{i}-budget"))}


def _latent_fields(i: int, k: int, cols) -> dict:
    a, b, c, d = cols
    gesture = ["lasso", "drag", "box", "lasso"][k]
    cond = {"name": a.text_input("Name", value=gesture, key=f"sa-c{i}-lat-name"),
            "settings": {"gesture": b.selectbox("Gesture", list(GESTURES), index=list(GESTURES).index(gesture),
                                                key=f"sa-c{i}-lat-gesture",
                                                help="lasso or box: select points, send them to a class's "
                                                     "centroid; drag: move single points on a canvas"),
                         "points": int(c.number_input("Points shown", 10, 2000, 300, step=50,
                                                      key=f"sa-c{i}-lat-points",
                                                      help="The model's mistakes first, then others"))},
            "budget": int(d.number_input("Moves", 1, 200, 10, key=f"sa-c{i}-lat-budget"))}
    st.caption("Latent moves have no 'ignore' marks, so no counterexamples: the fine-tune is the paper's.")
    return cond


def _grid_fields(i: int, k: int, cols) -> dict:
    a, b, c, d = cols
    marks = ["marks", "no marks", "marks", "no marks"][k]
    chosen = b.selectbox("Marks", ["marks", "no marks"], index=["marks", "no marks"].index(marks),
                         key=f"sa-c{i}-grid-marks",
                         help="marks: the participant marks the squares the model must not use, and the fine-tune "
                              "penalises them; no marks: the same images only looked at, and the fine-tune has no "
                              "feedback")
    return {"name": a.text_input("Name", value=marks, key=f"sa-c{i}-grid-name"),
            "settings": {"marks": chosen == "marks",
                         "sampler": c.selectbox("Mistakes by", list(REVIEW_SAMPLERS), key=f"sa-c{i}-grid-sampler"),
                         "counterexamples": st.checkbox(
                             "Fine-tune with counterexamples of the marked squares (with marks only)",
                             value=GRID_COUNTEREXAMPLES_ON, key=f"sa-c{i}-grid-cex",
                             help=CEX_HELP.format(page="Grid feedback", loss="input-gradient penalty"))},
            "budget": int(d.number_input("Images", 1, 100, 10, key=f"sa-c{i}-grid-budget"))}


def condition_form(i: int, task: str, k: int) -> dict:
    """Condition ``i``'s fields in the New study form for ``task`` (its own widget keys per task,
    so switching the task does not carry one task's values into another's); ``k``: how many
    conditions of the same task come before it (the defaults alternate: lasso then drag, marks
    then no marks)."""
    st.markdown(f"**Condition {i + 1}** · {TASKS[task]}")
    a, b, c, d, e = st.columns([2, 1, 1, 1, 1])
    if task == "attention":
        cond = _attention_fields(i, (a, b, c, d))
    elif task == "latent":
        cond = _latent_fields(i, k, (a, b, c, d))
    else:
        cond = _grid_fields(i, k, (a, b, c, d))
    cond["task"] = task
    cond["time_limit_s"] = int(e.number_input("Time limit (s)", 0, 7200, 0, key=f"sa-c{i}-limit",
                                              help="0: no limit")) or None
    cond["instructions"] = st.text_area("Instructions (Markdown; empty: the default)", key=f"sa-c{i}-text")
    return cond


def clear_new_study_form() -> None:
    """Empty the New study form (its widgets take their defaults on the next run)."""
    for key in [k for k in st.session_state if isinstance(k, str)
                and (k in NEW_STUDY_KEYS or re.fullmatch(r"sa-c\d-[\w-]+", k))]:  # sa-c0-name, sa-c0-lat-name ...
        del st.session_state[key]


@dataclass
class NewStudy:
    """What the New study form holds when "Create study" was pressed."""

    name: str
    dataset: str
    people: int
    intro: str
    tasks: list[str]
    conditions: list[dict]
    practice: bool
    after: list[str]
    final: list[str]
    items: str


def new_study_form() -> NewStudy | None:
    """The New study tab's fields: what was typed once "Create study" is pressed, else None."""
    n = int(st.number_input("Conditions", 2, 4, 2, key="sa-n"))
    # the tasks are chosen outside the form: each one has its own settings below (a form draws them only when sent)
    task_cols = st.columns(n)
    tasks = [task_cols[i].selectbox(f"Task of condition {i + 1}", list(TASKS), format_func=TASKS.get,
                                    key=f"sa-c{i}-task") for i in range(n)]
    with st.form("study-new"):
        name = st.text_input("Study name", key="sa-name")
        c1, c2 = st.columns(2)
        dataset = c1.selectbox("Dataset", DATASETS, key="sa-data",
                               help="biased-digits: the digit's colour gives its class away in training, not in test")
        people = c2.number_input("Participants", 1, 200, 2, key="sa-people")
        intro = st.text_area("Introduction (Markdown)", key="sa-intro")
        conditions = [condition_form(i, task, tasks[:i].count(task)) for i, task in enumerate(tasks)]
        practice = st.checkbox("Practice round first (2 images, not counted)", key="sa-practice")
        after = st.multiselect("Questionnaires after each condition", INSTRUMENTS, ["sus", "tlx"], key="sa-after")
        final = st.multiselect("Questionnaires at the end", INSTRUMENTS, ["likert"], key="sa-final")
        items = st.text_area("Likert items at the end (one per line)", key="sa-items",
                             placeholder="Empty: seed 001's questionnaire written for these conditions (difficulty and "
                                         "concentration per condition, the samplers only when they differ, confidence, "
                                         "which one is preferred, comments)")
        create = st.form_submit_button("Create study", type="primary")
    if not create:
        return None
    return NewStudy(name, dataset, int(people), intro, tasks, conditions, practice, after, final, items)
