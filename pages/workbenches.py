"""Workbenches: every workbench on this server, with its dataset, model, versions and last
change; open, rename, add a note, delete (with confirmation; its files go too). A user study's
workbenches are not here: they are reached only through their participant's link and Study admin."""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from app.access import study_workbench_ids
from app.state import current_workbench, get_registry, get_store, notice, open_workbench
from core.session.export import workbench_bundle

HOME = str(Path(__file__).resolve().parent / "home.py")
wb = current_workbench()
ss = st.session_state

st.title("Workbenches")
st.caption("Every workbench on this server: one dataset and model with its versions, annotations and jobs. "
           "Open one to make it this tab's workbench; its URL (with `?wb=`) brings you back to it too.")


def when(t: float) -> str:
    """To the second: a run of a few seconds changes the workbench within the same minute, and
    "last change" must move when it does."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


hidden = study_workbench_ids()  # a participant's annotations and timings: not listed, downloaded or deleted here
rows = [r for r in get_store().workbench_summaries() if r["id"] not in hidden]
if hidden:
    st.caption(f"{len(hidden)} workbench{'es' if len(hidden) != 1 else ''} of user studies "
               f"{'are' if len(hidden) != 1 else 'is'} not listed: manage them in Study admin.")
if not rows:
    st.info("No workbenches yet.")
    st.stop()

st.dataframe(pd.DataFrame([{
    "name": r["name"] or "–", "id": r["id"], "dataset": r["data_source"], "model": r["arch"],
    "versions": r["versions"], "current": f"v{r['current_version']}", "last change": when(r["updated"]),
    "note": r["note"], "open here": "●" if r["id"] == wb.id else "",
} for r in rows]), hide_index=True, width="stretch", key="wbl-table")

labels = {r["id"]: f"{r['name'] or r['id']} · {r['data_source']} · {r['arch']} · {r['versions']} "
                   f"version{'s' if r['versions'] != 1 else ''}" for r in rows}
ids = list(labels)
picked = st.selectbox("Workbench", ids, index=ids.index(wb.id) if wb.id in ids else 0,
                      format_func=lambda i: labels[i] + (" (open here)" if i == wb.id else ""), key="wbl-pick")
row = next(r for r in rows if r["id"] == picked)

with st.container(border=True, key="wbl-detail"):
    c1, c2 = st.columns([3, 1])
    title = f"**{row['name']}** · `{row['id']}`" if row["name"] else f"`{row['id']}` (no name yet)"
    c1.markdown(f"{title} · {row['data_source']} · {row['arch']} · created {when(row['created'])}, "
                f"last change {when(row['updated'])}")
    if c2.button("Open", type="primary", key="wbl-open", disabled=picked == wb.id, width="stretch",
                 help="Make this the workbench of this tab (the sidebar and every page follow)."):
        if open_workbench(picked):
            notice(f"Opened workbench {labels[picked]}.", "success")
            st.switch_page(HOME)
    with st.form(f"wbl-label-{picked}", border=False):
        name = st.text_input("Name", value=row["name"], max_chars=80, key=f"wbl-name-{picked}")
        note = st.text_area("Note", value=row["note"], max_chars=2000, height=80, key=f"wbl-note-{picked}",
                            placeholder="What this workbench is for, what you tried, what to try next")
        if st.form_submit_button("Save name and note", key=f"wbl-save-{picked}"):
            try:
                get_registry().set_label(picked, name=name, note=note)
            except (ValueError, KeyError) as exc:
                st.error(f"Not saved: {exc}")
            else:
                notice("Saved the name and note.", "success")
                st.rerun()
    d1, d2 = st.columns([1, 2])
    with_ckpt = d2.checkbox("with checkpoints", key=f"wbl-ckpt-{picked}",
                            help="Add every version's weights (.pt); without them the zip holds metadata, metrics, "
                                 "training histories, annotations, reports and jobs (CSV and JSON).")
    d1.download_button("Download all (zip)", data=lambda: workbench_bundle(get_store(), picked, checkpoints=with_ckpt)
                       if picked not in study_workbench_ids() else b"",
                       file_name=f"steerboard-{picked}{'-with-checkpoints' if with_ckpt else ''}.zip",
                       mime="application/zip", key=f"wbl-download-{picked}", on_click="ignore", width="stretch")
    if picked == wb.id:
        st.caption("This tab has this workbench open; open another one to delete it.")
    else:
        with st.popover("Delete…", key=f"wbl-del-pop-{picked}"):
            st.warning(f"Delete **{row['name'] or row['id']}** with its {row['versions']} "
                       f"version{'s' if row['versions'] != 1 else ''}, annotations, jobs and checkpoint files? "
                       "This cannot be undone. Download anything you need first.")
            sure = st.checkbox("Yes, delete it and its files", key=f"wbl-sure-{picked}")
            if st.button("Delete for good", type="primary", disabled=not sure, key=f"wbl-delete-{picked}"):
                try:
                    if picked in study_workbench_ids():  # became a study's since the list was read
                        raise ValueError("it belongs to a user study; reset that participant in Study admin")
                    get_registry().delete(picked)
                except (ValueError, KeyError) as exc:
                    st.error(f"Not deleted: {exc}")
                else:
                    notice(f"Deleted workbench {row['name'] or row['id']}.", "success")
                    st.rerun()
