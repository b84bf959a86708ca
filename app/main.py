"""steerboard entry: `streamlit run app/main.py`. Navigation, session bootstrap and sidebar."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `import core` / `import app` from any working directory
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

st.set_page_config(page_title="steerboard", page_icon=":material/explore:", layout="wide")


def preload_components(box, widgets: bool) -> None:
    """Mount one hidden instance of each element kind Home draws into ``box``, while this server imports.

    Streamlit's browser code fetches each element's JavaScript the first time one mounts. Without this,
    those fetches start only when Home's script sends its elements and then queue behind that script for
    the server's Python thread: the metrics stayed blank for 0.8 s after the script had ended, and plotly.js
    alone takes about 1 s to fetch and parse. The chart goes first (beside the shell's text, it does not
    delay its paint); the widgets after the slow imports (sent with the text, they delayed its paint and
    did not speed up the start). In an A/B on the 2-core machine the widgets took the cached start to a
    usable Home from 5.4 to 5.2 s and from 5.2 to 5.0 s (benchmarks/app_latency.py, two rounds).
    Hidden with CSS (display: none still mounts them); the shell, and with it these widgets and their
    state, is emptied before the real page draws.
    """
    with box:
        if not widgets:
            st.html("<style>.st-key-shell-preload { display: none; }</style>")
            # plotly validates any figure against whatever numpy and pandas sys.modules holds (np.isscalar,
            # pd.Series), without importing them. When a server restarts with many tabs open, another session's
            # thread may be importing them (with torch, below) at this moment, and plotly met half-initialised
            # modules ("partially initialized module 'pandas' has no attribute 'Series'", found by
            # benchmarks/study_load.py). Importing them here waits for that import to finish; the shell's text
            # is already out, and the torch import below needs both anyway.
            import numpy  # noqa: F401
            import pandas  # noqa: F401

            st.plotly_chart({"data": [{"type": "scatter", "x": [0], "y": [0]}]}, key="shell-plotly",
                            config={"staticPlot": True})
            return
        import numpy as np  # here, not at the top: the shell's text goes out before any import it can wait for

        st.metric("preload", 0)
        st.selectbox("preload", ["a"], key="shell-selectbox")
        st.text_input("preload", key="shell-text")
        st.number_input("preload", key="shell-number")
        st.checkbox("preload", key="shell-checkbox")
        st.radio("preload", ["a"], key="shell-radio")
        st.file_uploader("preload", key="shell-upload")
        st.button("preload", key="shell-button")
        st.download_button("preload", b"", file_name="preload.txt", key="shell-download")
        st.dataframe({"a": [0]})
        st.json({})
        st.image(np.zeros((1, 1), dtype=np.uint8), width=1)


# A light shell first: on a server's first run, importing PyTorch and the model library takes
# seconds, and Streamlit sends each element as the script reaches it, so this shows at once
# instead of a blank page (as does a tab's first run, which opens or creates its workbench).
# Later runs skip it.
shell = st.empty()
first_run = "torch" not in sys.modules or "wb_id" not in st.session_state  # wb_id: app.state.SESSION_KEY
if first_run:
    with shell.container(key="app-shell"):
        st.markdown("## steerboard")
        st.caption("Starting: loading PyTorch and the model library, then your workbench (a few seconds, once per "
                   "server start).")
        preload = st.container(key="shell-preload")
    preload_components(preload, widgets=False)

from app import sidebar  # noqa: E402  (imports torch and the model library: the slow part)

if first_run:
    preload_components(preload, widgets=True)

from app.state import boot, configure_threads, show_notices, store_or_stop  # noqa: E402
from app.widgets import remember_job  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
configure_threads()

PAGES = [
    st.Page(str(ROOT / "pages" / "home.py"), title="Home", icon=":material/home:", default=True),
    st.Page(str(ROOT / "pages" / "latent.py"), title="Latent space", icon=":material/scatter_plot:", url_path="latent"),
    st.Page(str(ROOT / "pages" / "monitor.py"), title="Training monitor", icon=":material/monitoring:", url_path="monitor"),
    st.Page(str(ROOT / "pages" / "freezing.py"), title="Layer freezing", icon=":material/ac_unit:", url_path="freezing"),
    st.Page(str(ROOT / "pages" / "attention.py"), title="Attention", icon=":material/ads_click:", url_path="attention"),
    st.Page(str(ROOT / "pages" / "grid.py"), title="Grid feedback", icon=":material/grid_on:", url_path="grid"),
    st.Page(str(ROOT / "pages" / "workbenches.py"), title="Workbenches", icon=":material/folder_open:",
            url_path="workbenches"),
    st.Page(str(ROOT / "pages" / "study_admin.py"), title="Study admin", icon=":material/groups:",
            url_path="study-admin"),
]


def waiting_for_base(job) -> None:
    """First start on a fresh workspace: the default base model trains in the background."""
    st.title("steerboard")
    st.write("First start: training the default base model (seed-cnn on the bundled digits). "
             "This happens once; later starts load it from the workspace.")

    @st.fragment(run_every=0.5)
    def progress() -> None:
        view = job.view() if job is not None else None
        with st.container(key="base-progress"):
            if view is None:
                st.info("Preparing…")
                return
            if view["status"] in ("failed", "diverged", "stopped"):
                why = view["error"] or view["message"] or view["status"]
                st.error(f"Training the base model did not finish ({why}). Reload the page to try again.")
                return
            st.progress(view["progress"], text=f"step {view['done_steps']} / {view['total_steps']}"
                        + (f", loss {view['steps'][-1][1]:.3f}" if view["steps"] else ""))
            if view["status"] == "done":
                st.rerun(scope="app")

    progress()


store_or_stop(shell)  # before any page: a workspace another server holds stops here with a message
from app.access import guard_workbench_link, lab_gate, lab_password, participant_token_valid  # noqa: E402

study_token = st.query_params.get("study")
if lab_password() and not (study_token and participant_token_valid(study_token)):
    lab_gate(shell)  # a lab password, when set, is asked once per session everywhere but on participant links
if study_token:  # participant mode: the study's steps only, no sidebar, no other page
    shell.empty()
    st.navigation([st.Page(str(ROOT / "pages" / "participant.py"), title="Study", url_path="study", default=True)],
                  position="hidden").run()
    st.stop()

guard_workbench_link()  # a ?wb= link to a study workbench does not open it
state = boot()
shell.empty()
if state.workbench is None:
    waiting_for_base(state.base_job)
else:
    remember_job(state.workbench)
    sidebar.draw(state.workbench)
    nav = st.navigation(PAGES)
    show_notices()
    nav.run()
