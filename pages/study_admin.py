"""Study admin: define a within-subjects study of attention clicking, latent editing or grid
feedback (each condition its own task), hand out participant links, follow their progress, and
download the results. Behind a password."""
from __future__ import annotations

import re

import pandas as pd
import plotly.express as px
import streamlit as st

from app.access import password_form, secret
from app.state import get_base_models, get_dataset, get_registry, get_store
from core.feedback.attention.workflow import COUNTEREXAMPLES_ON
from core.feedback.grid.job import COUNTEREXAMPLES_ON as GRID_COUNTEREXAMPLES_ON
from core.feedback.grid.workflow import REVIEW_SAMPLERS
from core.study.latent import GESTURES
from core.study.design import likert_template
from core.study.flow import INSTRUMENTS, ParticipantFlow, normalize_design
from core.study.results import condition_means, export_zip, study_tables
from core.study.store import StudyError, StudyStore

PASSWORD_ENV = "STEERBOARD_ADMIN_PASSWORD"
SAMPLERS = ["gmm", "entropy", "margin", "kcenter", "random"]
DATASETS = ["biased-digits", "digits"]
BOX_MEASURES = {"seconds": "Seconds per image", "gestures_per_image": "Gestures per image",
                "test_acc_pct": "Test accuracy after (%)", "conflicting_acc_pct": "Bias-conflicting accuracy after (%)",
                "sus": "SUS score (0-100)", "tlx": "Raw NASA-TLX (0-100)"}


def admin_password() -> str | None:
    """From the environment, else Streamlit secrets (``admin_password``); None when neither is set."""
    return secret(PASSWORD_ENV, "admin_password")


st.title("Study admin")
expected = admin_password()
if not expected:
    st.info(f"Study admin needs a password. Set the environment variable `{PASSWORD_ENV}` before starting the "
            "server, or `admin_password = \"...\"` in `.streamlit/secrets.toml`, then reload this page.")
    st.stop()
if not st.session_state.get("study-admin-ok"):
    # wrong guesses back off server-wide (app.access.limiter): 5 free, then 1 s, 2 s, 4 s... per guess
    if password_form("admin", expected, form_key="study-login", input_key="study-password"):
        st.session_state["study-admin-ok"] = True
        st.rerun()
    st.stop()

studies = StudyStore(get_store())
new_tab, list_tab = st.tabs(["New study", "Studies"])


def link(token: str) -> str:
    base = ""
    try:
        base = (st.context.url or "").split("?")[0].rsplit("/study-admin", 1)[0]
    except AttributeError:
        pass
    return f"{base}/?study={token}"


REPEAT_S = 60.0  # the same study again within this many seconds is taken for a second click


NEW_STUDY_KEYS = {"sa-name", "sa-data", "sa-people", "sa-intro", "sa-practice", "sa-after", "sa-final", "sa-items"}
TASKS = {"attention": "Attention clicking (seed 001)", "latent": "Latent editing (seed 000)",
         "grid": "Grid feedback (seed 002)"}
CEX_HELP = ("Copies of each annotated image whose ignored regions (grid: marked squares) come from other training "
            "images, as on the {page} page. Off: the {loss} alone (studies made before this option fine-tune "
            "without them).")


def condition_form(i: int, task: str, k: int) -> dict:
    """Condition ``i``'s fields in the New study form for ``task`` (its own widget keys per task,
    so switching the task does not carry one task's values into another's); ``k``: how many
    conditions of the same task come before it (the defaults alternate: lasso then drag, marks
    then no marks)."""
    st.markdown(f"**Condition {i + 1}** · {TASKS[task]}")
    if task == "attention":
        a, b, c, d, e = st.columns([2, 1, 1, 1, 1])
        cond = {"name": a.text_input("Name", value=["click", "polygon", "random", "gmm"][i], key=f"sa-c{i}-name"),
                "settings": {"mode": b.selectbox("Mode", ["click", "polygon"], index=i % 2, key=f"sa-c{i}-mode"),
                             "sampler": c.selectbox("Sampler", SAMPLERS, key=f"sa-c{i}-sampler"),
                             "counterexamples": st.checkbox(
                                 "Fine-tune with counterexamples of the 'ignore' marks", value=COUNTEREXAMPLES_ON,
                                 key=f"sa-c{i}-cex", help=CEX_HELP.format(page="Attention", loss="attention loss"))},
                "budget": int(d.number_input("Images", 1, 200, 16, key=f"sa-c{i}-budget"))}
    elif task == "latent":
        a, b, c, d, e = st.columns([2, 1, 1, 1, 1])
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
    else:
        a, b, c, d, e = st.columns([2, 1, 1, 1, 1])
        marks = ["marks", "no marks", "marks", "no marks"][k]
        chosen = b.selectbox("Marks", ["marks", "no marks"], index=["marks", "no marks"].index(marks),
                             key=f"sa-c{i}-grid-marks",
                             help="marks: the participant marks the squares the model must not use, and the fine-tune "
                                  "penalises them; no marks: the same images only looked at, and the fine-tune has no "
                                  "feedback")
        cond = {"name": a.text_input("Name", value=marks, key=f"sa-c{i}-grid-name"),
                "settings": {"marks": chosen == "marks",
                             "sampler": c.selectbox("Mistakes by", list(REVIEW_SAMPLERS), key=f"sa-c{i}-grid-sampler"),
                             "counterexamples": st.checkbox(
                                 "Fine-tune with counterexamples of the marked squares (with marks only)",
                                 value=GRID_COUNTEREXAMPLES_ON, key=f"sa-c{i}-grid-cex",
                                 help=CEX_HELP.format(page="Grid feedback", loss="input-gradient penalty"))},
                "budget": int(d.number_input("Images", 1, 100, 10, key=f"sa-c{i}-grid-budget"))}
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

def reset_or_replace(studies: StudyStore, study_id: str) -> None:
    """Start a participant again (same link) or give their place a new link (the old one stops
    working); either deletes their events, answers and workbenches."""
    if st.session_state.get("sa-who-done"):
        kind, text = st.session_state.pop("sa-who-done")
        getattr(st, kind)(text)
    people = {p.token: p for p in studies.participants(study_id)}
    with st.popover("Reset or replace a participant…", key="sa-who-pop"):
        who = st.selectbox("Participant", list(people), key=f"sa-who-{study_id}",  # one per study: its own options
                           format_func=lambda t: f"participant {people[t].number + 1}")  # as numbered in the table
        st.caption("**Reset**: the same link starts again from the introduction. **Replace**: a new link in this "
                   "place (same number and condition order) for someone else; the old link stops working. Either "
                   "way this participant's events, answers and workbenches are deleted: download the results first.")
        sure = st.checkbox("Yes, delete this participant's data", key="sa-who-sure")
        r1, r2 = st.columns(2)
        reset = r1.button("Reset", disabled=not sure, key="sa-reset", width="stretch")
        replace = r2.button("Replace", disabled=not sure, key="sa-replace", width="stretch")
    if not (reset or replace) or who not in people:
        return
    number = people[who].number + 1
    try:
        if reset:
            kept = studies.reset_participant(who, get_registry().delete)
            done = f"Participant {number} starts again from the introduction with the same link."
        else:
            new, kept = studies.replace_participant(who, get_registry().delete)
            done = f"Participant {number} has a new link: {link(new)} (the old one no longer works)."
    except StudyError as exc:
        st.session_state["sa-who-done"] = ("error", f"Not done: {exc}.")
    else:
        if kept:
            done += (f" {len(kept)} workbench{'es' if len(kept) != 1 else ''} still training "
                     "will be deleted by the next reset.")
        st.session_state["sa-who-done"] = ("success", done)
    st.session_state.pop("sa-who-sure", None)
    st.rerun()


with new_tab:
    if st.session_state.get("sa-created"):
        st.success(st.session_state.pop("sa-created"))
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
    if create:
        typed = [t.strip() for t in items.splitlines() if t.strip()]
        likert = ([{"id": f"Q{k + 1}", "kind": "likert", "text": t} for k, t in enumerate(typed)] if typed
                  else likert_template(conditions))
        design = {"task": tasks[0], "dataset": dataset, "arch": "seed-cnn", "intro": intro,
                  "conditions": conditions, "practice": practice,
                  "questionnaires": {"after_each": after, "final": final}, "likert_items": likert}
        try:
            design = normalize_design(design)
            study_id, tokens = studies.create_study(name, design, participants=int(people), refuse_repeat_s=REPEAT_S)
        except StudyError as exc:  # the form keeps what was typed, to fix and send again
            st.error(f"The study was not created: {exc}.")
        else:
            data = get_dataset(dataset)  # train the study's base model now, not when the first participant comes
            get_base_models().status(data, dataset, "seed-cnn", train=True)
            st.session_state["sa-study"] = study_id
            st.session_state["sa-created"] = (f"Created study {name.strip()!r} with {len(tokens)} participant links "
                                              "(see Studies). The form is empty again for the next study.")
            clear_new_study_form()  # a second click on Create does not make the same study twice
            st.rerun()

with list_tab:
    all_studies = studies.studies()
    if not all_studies:
        st.info("No study yet: create one in New study.")
        st.stop()
    ids = [s["id"] for s in all_studies]
    names = {s["id"]: f"{s['name']} ({s['participants']} participants)" for s in all_studies}
    chosen = st.selectbox("Study", ids, format_func=names.get, key="sa-study",
                          index=ids.index(st.session_state["sa-study"]) if st.session_state.get("sa-study") in ids
                          else len(ids) - 1)
    study = studies.study(chosen)
    st.button("Refresh", key="sa-refresh", help="Read the participants' progress and results again.")
    rows = []
    for p in studies.participants(chosen):
        flow = ParticipantFlow(studies, p.token)
        missing = studies.missing_workbenches(p.token)
        where = flow.label() + (f" · workbench of {', '.join(missing)} missing: reset or replace" if missing else "")
        rows.append({"participant": p.number + 1, "order": " → ".join(p.conditions), "where": where,
                     "link": link(p.token)})
    st.subheader("Participants")
    with st.container(key="sa-participants"):
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                     column_config={"link": st.column_config.TextColumn("link (send one to each participant)")})
    more = st.number_input("Add participants", 1, 100, 1, key="sa-more")
    if st.button("Add", key="sa-add"):
        studies.add_participants(chosen, int(more))
        st.rerun()
    reset_or_replace(studies, chosen)

    st.subheader("Results")
    revision = (chosen, studies.revision(chosen))  # the paired tests take ~0.1 s: computed again only on a change
    if st.session_state.get("sa-tables-rev") != revision:
        st.session_state["sa-tables"], st.session_state["sa-tables-rev"] = study_tables(studies, chosen), revision
    tables = st.session_state["sa-tables"]
    summary = pd.DataFrame(tables["summary"])
    with st.container(key="sa-results"):
        if summary.empty or not summary["images"].any():
            st.info("No annotations yet.")
        else:
            st.dataframe(summary, hide_index=True, width="stretch")  # numbered from 1, as above and in the export
            moves = any(c.get("task") == "latent" for c in study["design"]["conditions"])
            box_labels = ({**BOX_MEASURES, "seconds": "Seconds per item (image, or move)",
                           "gestures_per_image": "Gestures per item (image, or move)"} if moves else BOX_MEASURES)
            measures = {m: label for m, label in box_labels.items()
                        if m == "seconds" or (m in summary and summary[m].notna().any())}
            measure = st.selectbox("Box plot of", list(measures), format_func=measures.get, key="sa-box-measure")
            if measure == "seconds":  # one point per annotation
                frame, y = pd.DataFrame(tables["annotations"]), "seconds"
            else:  # one point per participant and condition
                frame, y = summary.dropna(subset=[measure]), measure
            fig = px.box(frame, x="condition", y=y, points="all", title=f"{measures[measure]}, by condition",
                         labels={y: measures[measure].lower()}, hover_data=["participant"])
            st.plotly_chart(fig, key="sa-box", width="stretch")
            means = condition_means(tables["summary"], "median_seconds")
            st.caption(f"Mean of the participants' median seconds per {'item' if moves else 'image'}: "
                       + ", ".join(f"{c} {v:.1f} s" for c, v in means.items() if v is not None))
            if tables["tests"]:
                st.dataframe(pd.DataFrame(tables["tests"]), hide_index=True, width="stretch")
    with_models = st.checkbox("Include each condition's final model (checkpoints; a larger file)", key="sa-models")
    # Built before the button is drawn, again only when the results or the choice change: a zip made
    # when clicked (a deferred download) was not found when the click came at once ("MediaFileStorageError:
    # Deferred file ... not found"), and the browser got no file.
    zip_key = (revision, with_models)
    if st.session_state.get("sa-zip-key") != zip_key:
        with st.spinner("Preparing the results zip" + (" with the models" if with_models else "") + "…"):
            st.session_state["sa-zip"] = export_zip(studies, chosen, models=with_models, tables=tables)
        st.session_state["sa-zip-key"] = zip_key
    st.download_button("Download results (zip of CSVs and the design)", st.session_state["sa-zip"],
                       file_name=f"study-{study['name']}-{chosen}.zip".replace(" ", "_"), mime="application/zip",
                       key="sa-export", type="primary", on_click="ignore")
