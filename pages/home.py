"""Home: how the current model does, train it, and manage its versions."""
from __future__ import annotations

import numpy as np
import streamlit as st

from app.shortcut_widgets import points_delta, shortcut_help, shortcut_line, version_shortcut
from app.state import current_workbench
from app.widgets import confusion_figure, image_grid, pct, per_class_figure, train_panel, versions_panel

wb = current_workbench()
data = wb.data
version = wb.version(wb.current_version)
ev = wb.evaluation("test")

st.title("Home")
st.caption(f"{data.name}: {data.card.total} images of {'x'.join(map(str, data.image_shape))}, "
           f"{data.num_classes} classes · model {wb.arch} · workbench {wb.id}")

shortcut = version_shortcut(wb, version.number)  # None for a dataset without object masks
with st.container(key="home-metrics"):
    c1, c2, c3, c4, *c5 = st.columns(5 if shortcut else 4)
    c1.metric("Test accuracy", pct(ev.accuracy))
    c2.metric("Validation accuracy", pct(version.metrics.get("val_acc")))
    c3.metric("Version", f"v{version.number}")
    c4.metric("Mistakes on test", int((ev.preds != ev.labels).sum()))
    if shortcut:
        c5[0].metric("Shortcut meter", pct(shortcut["swapped"]),
                     **points_delta(shortcut["swapped"], shortcut["plain"], f" vs {pct(shortcut['plain'])} plain"),
                     help=shortcut_help(data))
        st.caption(f"Shortcut meter: {shortcut_line(shortcut, data)}. A model that reads the class off the "
                   "background loses accuracy when the background is swapped; one that looks at the object does not.")

st.subheader("Train")
train_panel(wb, key="train", default_epochs=5)

# The Examples tab draws only while open (a rerun on switching tabs): its images were sent with every Home
# run and made the first Home after a server start wait for two dozen image requests.
tab_classes, tab_examples, tab_versions, tab_data = st.tabs(["Per class", "Examples", "Versions", "Dataset"],
                                                            key="home-tab", on_change="rerun")
with tab_classes:
    c1, c2 = st.columns(2)
    c1.plotly_chart(per_class_figure(ev.per_class_accuracy, data.classes, ev.accuracy), key="per-class", width="stretch")
    c2.plotly_chart(confusion_figure(ev.confusion, data.classes), key="confusion", width="stretch")


def examples() -> None:
    """Test examples, mistakes first, as an image grid."""
    c1, c2, c3 = st.columns([1, 2, 1])
    cls = c1.selectbox("True class", ["all"] + data.classes, key="ex-class")
    only = c2.radio("Show", ["mistakes first", "mistakes only", "correct only"], horizontal=True, key="ex-show")
    n = c3.number_input("How many", 8, 96, 24, step=8, key="ex-n")
    ids = data.ids("test")
    wrong = ev.preds != ev.labels
    keep = np.ones(len(ids), bool) if cls == "all" else ev.labels == data.classes.index(cls)
    if only == "mistakes only":
        keep &= wrong
    elif only == "correct only":
        keep &= ~wrong
    # mistakes first, most confident mistakes at the top
    conf = ev.probs.max(1)
    order = np.lexsort((-conf, ~wrong))
    order = order[keep[order]][: int(n)]
    if len(order) == 0:
        st.info("No test examples match this filter.")
    else:
        caps = [f"{'✗' if wrong[i] else '✓'} {data.classes[ev.labels[i]]} → {data.classes[ev.preds[i]]}" for i in order]
        image_grid(wb, ids[order], caps, key="examples-grid")
        st.caption("Caption: true class → predicted class (✗ = mistake), on the test split.")


for _key in ("ex-class", "ex-show", "ex-n"):  # the filters outlive the tab being closed (its widgets unmount)
    if _key in st.session_state:
        st.session_state[_key] = st.session_state[_key]

with tab_examples:
    if tab_examples.open:
        examples()
    else:
        st.caption("Loading the examples…")

with tab_versions:
    versions_panel(wb)

with tab_data:
    st.json(data.card.to_dict(), expanded=False)
