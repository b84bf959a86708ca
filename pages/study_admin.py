"""Study admin: define a within-subjects study of attention clicking, latent editing or grid
feedback (each condition its own task), hand out participant links, follow their progress, and
download the results. Behind a password."""
from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from app.access import password_form, secret
from app.state import get_base_models, get_dataset, get_registry, get_store
from app.study_admin_form import clear_new_study_form, new_study_form
from core.study.flow import ParticipantFlow, new_design
from core.study.results import condition_means, export_zip, study_tables
from core.study.store import StudyError, StudyStore

PASSWORD_ENV = "STEERBOARD_ADMIN_PASSWORD"
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
    form = new_study_form()
    if form is not None:
        try:
            design = new_design(task=form.tasks[0], dataset=form.dataset, conditions=form.conditions, intro=form.intro,
                                practice=form.practice, after_each=form.after, final=form.final,
                                likert_texts=form.items)
            study_id, tokens = studies.create_study(form.name, design, participants=form.people,
                                                    refuse_repeat_s=REPEAT_S)
        except StudyError as exc:  # the form keeps what was typed, to fix and send again
            st.error(f"The study was not created: {exc}.")
        else:
            data = get_dataset(form.dataset)  # train the study's base model now, not when the first participant comes
            get_base_models().status(data, form.dataset, "seed-cnn", train=True)
            st.session_state["sa-study"] = study_id
            st.session_state["sa-created"] = (f"Created study {form.name.strip()!r} with {len(tokens)} participant "
                                              "links (see Studies). The form is empty again for the next study.")
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
