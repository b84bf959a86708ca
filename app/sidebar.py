"""The sidebar every page shares: dataset, model, device and the current model version."""
from __future__ import annotations

import streamlit as st

from core.models import list_models
from core.workbench import Workbench

from app.state import BUILTIN_CHOICES, devices, notice, switch_workbench
from app.widgets import pct, sidebar_job

OWN_FOLDER = "Folder or archive…"


def draw(wb: Workbench) -> None:
    with st.sidebar:
        st.markdown("### steerboard")
        busy = wb.jobs.current is not None and wb.jobs.current.running
        if st.session_state.get("sb-for") != wb.id:  # another workbench (opened here or on a page): show its data
            st.session_state["sb-for"] = wb.id  # (set, not popped: the browser would send its old value back)
            own = wb.data_source not in BUILTIN_CHOICES
            st.session_state["sb-dataset"] = OWN_FOLDER if own else wb.data_source
            st.session_state["sb-folder"] = wb.data_source if own else ""
            st.session_state["sb-model"] = wb.arch
        with st.form("sidebar-data", border=False):
            options = BUILTIN_CHOICES + [OWN_FOLDER]
            choice = st.selectbox("Dataset", options, key="sb-dataset")
            folder = st.text_input("Folder or archive path",
                                   placeholder="data/quickdraw or data/cifar10.tar.gz", key="sb-folder",
                                   help="A Quick Draw folder of .npy files, an ImageFolder tree or a .tar.gz of one, "
                                        "inside the data folders this server allows.")
            models = list_models()
            arch = st.selectbox("Model", models, key="sb-model")
            if st.form_submit_button("Open", disabled=busy, width="stretch", key="sb-open"):
                source = folder if choice == OWN_FOLDER else choice
                if source != wb.data_source or arch != wb.arch:
                    if switch_workbench(source, arch):
                        st.rerun()
                else:
                    notice("That dataset and model are already open.", "info")
                    st.rerun()
        devs = devices()
        device = wb.settings.get("device", "cpu")
        picked = st.selectbox("Device", devs, index=devs.index(device) if device in devs else 0, key="sb-device",
                              help="Where training runs. Only devices this server has are listed.")
        if picked != device:
            wb.update_settings(device=picked)
        version = wb.version(wb.current_version)
        with st.container(key="sb-version"):
            st.markdown(f"**Model version:** v{version.number}  \n{version.description}  \n"
                        f"test accuracy **{pct(version.metrics.get('test_acc'))}**")
        sidebar_job(wb)
        st.caption(f"Workbench `{wb.id}` · {wb.data.name} · {wb.arch}. Bookmark this page's URL to come back to it; "
                   "every tab on it shares its model, versions and running job.")
