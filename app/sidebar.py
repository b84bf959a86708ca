"""The sidebar every page shares: dataset, model, device and the current model version."""
from __future__ import annotations

import streamlit as st

from core.session.base_models import chance_warning
from core.data import DEFAULT_RHO, parse_shortcut_source, shortcut_kind
from core.data.spec import DataError
from core.data.uploads import discard_upload, store_upload
from core.models import list_models
from core.session.workbench import Workbench

from app.state import BUILTIN_CHOICES, devices, get_store, notice, open_steps_box, source_label, switch_workbench
from app.widgets import canvas_toolbars_visible, pct, sidebar_job

OWN_FOLDER = "Folder or archive…"


def with_bias(source: str, biased: bool, rho: float) -> str:
    """The source text with the biased-digits wrapper and its rho, when asked for."""
    rho_part = "" if abs(rho - DEFAULT_RHO) < 1e-9 else f"?rho={rho:g}"
    if source == "biased-digits":
        return source + rho_part
    if source in ("decoy-digits", "texture-digits"):  # shortcut sets of their own, at their own default rho
        return source
    if shortcut_kind(source) is not None:  # typed as a shortcut set already ("biased-digits:PATH"): as typed
        return source
    return f"biased-digits:{source}{rho_part}" if biased else source


def _shown(source: str) -> tuple[str, bool, float]:
    """What the sidebar shows for a workbench's source: the path or name, the bias box and rho
    ("biased-digits:PATH?rho=R" is PATH with the box ticked, so Open gives the same source back)."""
    if shortcut_kind(source) == "biased-digits" and source.startswith("biased-digits:"):
        try:
            _, base, rho = parse_shortcut_source(source)
            return base, True, rho
        except DataError:
            pass
    return source, False, DEFAULT_RHO


def open_data(wb: Workbench, choice: str, folder: str, uploads: list, biased: bool, rho: float, arch: str,
              slot=None) -> None:
    """The sidebar's Open: an upload (stored, then opened like a path), a typed path, or a
    built-in dataset, with the bias if asked, its steps shown in ``slot`` (a placeholder in the
    main area). Errors leave the current workbench as it was."""
    stored = None
    box = None
    names = ", ".join(f.name for f in uploads)
    if uploads:
        # A new uploader on the next run, opened or not: these files are not sent again, and a refused one
        # does not stay to be mixed with the next file chosen ("not a mix"); the message says what it was.
        st.session_state["sb-upload-n"] = st.session_state.get("sb-upload-n", 0) + 1
        data_dir = get_store().root / "data"
        box = open_steps_box(names, upload=True, parent=slot)
        box.start(0)
        try:
            stored = store_upload([(f.name, f.getvalue()) for f in uploads], data_dir, progress=box.progress_for(0))
        except (DataError, OSError) as exc:
            box.fail("Upload not opened")
            notice(f"Upload not opened: {exc}", "error")
            st.rerun()
        base = str(stored)
    else:
        base = folder if choice == OWN_FOLDER else choice
        if choice == OWN_FOLDER and not folder.strip():
            notice("Type a folder or archive path, or upload one, then Open.", "warning")
            st.rerun()
    source = with_bias(base, biased, rho)
    if source == wb.data_source and arch == wb.arch:
        notice("That dataset and model are already open.", "info")
        st.rerun()
    opened = False
    try:
        box = box or open_steps_box(source_label(base), parent=slot)
        opened = switch_workbench(source, arch, box=box, shown_as={str(stored): names} if stored is not None else None)
    finally:
        if not opened and stored is not None and not any(str(stored) in r.data_source
                                                         for r in get_store().list_workbenches()):
            discard_upload(stored, get_store().root / "data")  # nothing uses it: a bad upload leaves nothing
    st.rerun()


def draw(wb: Workbench) -> None:
    # In the main area, before the sidebar: Open's steps show here, across the page it greys out while it runs
    # (code inside `with st.sidebar` cannot reach the main area otherwise).
    open_slot = st.empty()
    with st.sidebar:
        st.markdown("### steerboard")
        busy = wb.jobs.current is not None and wb.jobs.current.running
        if st.session_state.get("sb-for") != wb.id:  # another workbench (opened here or on a page): show its data
            st.session_state["sb-for"] = wb.id  # (set, not popped: the browser would send its old value back)
            own = wb.data_source not in BUILTIN_CHOICES
            shown, biased, rho = _shown(wb.data_source) if own else (wb.data_source, False, DEFAULT_RHO)
            st.session_state["sb-dataset"] = OWN_FOLDER if own else wb.data_source
            st.session_state["sb-folder"] = shown if own else ""
            if biased:  # the box and rho that give this source back (left as they are otherwise)
                st.session_state["sb-biased"], st.session_state["sb-rho"] = True, rho
            st.session_state["sb-model"] = wb.arch
        st.session_state.setdefault("sb-rho", DEFAULT_RHO)  # the default here, not as value=: the sync above sets it
        with st.form("sidebar-data", border=False):
            options = BUILTIN_CHOICES + [OWN_FOLDER]
            choice = st.selectbox("Dataset", options, key="sb-dataset")
            folder = st.text_input("Folder or archive path",
                                   placeholder="data/quickdraw or data/cifar10.tar.gz", key="sb-folder",
                                   help="A Quick Draw folder of .npy files, an ImageFolder tree or a .tar.gz of one, "
                                        "inside the data folders this server allows.")
            limit = int(st.get_option("server.maxUploadSize"))
            with st.expander("Upload, or add a bias"):
                uploads = st.file_uploader(
                    f"Upload data (up to {limit} MB)", type=["zip", "gz", "tgz", "tar", "npy"],
                    accept_multiple_files=True, key=f"sb-upload-{st.session_state.get('sb-upload-n', 0)}",
                    help="A .zip or .tar.gz of an ImageFolder tree (one folder per class; a masks/ folder is optional), "
                         "or Quick Draw .npy files (one per class). It is checked, stored in this workspace's data "
                         "folder and opened; the Dataset choice above is ignored while files are here.")
                biased = st.checkbox("Colour the background by class (biased digits)", key="sb-biased",
                                     help="For digit images: paint each image's background in a colour that goes with "
                                          "its class for a share rho of the training images, a shortcut the model can "
                                          "learn (what the Attention and Grid feedback pages correct). The built-in "
                                          "'biased-digits' choice always has it; 'decoy-digits' (a grey corner square "
                                          "whose shade names the class) and 'texture-digits' (background stripes that "
                                          "name the class) have shortcuts of their own and ignore this.")
                rho = st.number_input("rho: share of training images whose colour matches the class", min_value=0.0,
                                      max_value=1.0, step=0.005, format="%.3f", key="sb-rho")
            models = list_models()
            arch = st.selectbox("Model", models, key="sb-model")
            if st.form_submit_button("Open", disabled=busy, width="stretch", key="sb-open"):
                open_data(wb, choice, folder, uploads or [], biased, float(rho), arch, slot=open_slot)
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
        untrained = version.number == 0 and version.description.startswith("untrained")  # said just above
        at_chance = None if untrained else chance_warning(version.metrics, wb.data.num_classes,
                                                          can_reset=wb.current_version != 0)
        if at_chance:  # on every page: a model at chance makes every page's view of it meaningless
            with st.container(key="sb-chance"):
                st.warning(at_chance, icon=":material/warning:")
        sidebar_job(wb)
        st.caption(f"Workbench `{wb.id}` · {wb.data.name} · {wb.arch}. Bookmark this page's URL to come back to it; "
                   "every tab on it shares its model, versions and running job.")
        canvas_toolbars_visible()
    interrupted_banner(wb)


def interrupted_banner(wb: Workbench) -> None:
    """Above every page: the job a server restart cut off, with Dismiss. The notice is the
    workbench's, in the store (:meth:`Workbench.interrupted_notice`): every tab and session
    that opens it sees it until someone dismisses it or a new job starts."""
    text = wb.interrupted_notice()
    if text is None:
        return
    with st.container(key="interrupted-notice"):
        c1, c2 = st.columns([6, 1], vertical_alignment="center")
        c1.warning(text, icon=":material/restart_alt:")
        c2.button("Dismiss", key="interrupted-dismiss", on_click=wb.dismiss_interrupted, width="stretch",
                  help="Stop showing this notice, in every tab of this workbench.")
