"""Layer freezing (seed 003, ReVACNN): freeze the layer groups that have settled, also while
training runs, and see what it saves in time per epoch and what it costs in accuracy."""
from __future__ import annotations

import streamlit as st

from app.monitor_plots import epoch_time_figure, live_figure, step_freeze_markers
from app.monitor_widgets import current_monitors, saving_summary, training_controls
from app.state import current_workbench
from app.widgets import live_job
from core.session.jobs import Job
from core.monitor.live import freeze_saving

wb = current_workbench()
ss = st.session_state
GROUPS = list(wb.model.layer_groups)


def frozen_now() -> list[str]:
    return [g for g in GROUPS if g in set(wb.settings.get("frozen", []))]


def on_toggle() -> None:
    """A switch changed: save the frozen set, and hand it to a running job (next step)."""
    wanted = [g for g in GROUPS if ss.get(f"frz-g-{g}")]
    wb.update_settings(frozen=wanted)
    job = wb.jobs.current
    if job is not None and job.running:
        job.control.set_frozen(wanted)


def n_params(group: str) -> int:
    return sum(p.numel() for p in wb.model.group_parameters(group))


st.title("Layer freezing")
st.caption("Freeze layer groups that have settled: no backward pass runs through them and their BatchNorm "
           "statistics stop updating, so each epoch gets cheaper. A switch takes effect at the next training step, "
           "also while training runs. Early layers usually settle first (Chung et al., ReVACNN, seed 003).")

training_controls(wb, "frz", freeze_hint=False)

for g in GROUPS:  # widgets follow the saved frozen set (on first draw and after a refresh)
    ss.setdefault(f"frz-g-{g}", g in frozen_now())


def draw(job: Job | None, view: dict | None) -> None:
    _, mons = current_monitors(wb)
    rows = {r["group"]: r for r in mons.settle.table()} if mons.settle is not None else {}
    total = sum(n_params(g) for g in GROUPS)
    with st.container(key="frz-groups"):
        settle = mons.settle
        if settle is not None:
            st.caption(f"**Cue:** a group is *settled* when its weights changed at most "
                       f"{settle.pace_threshold:g}x as fast as the median group's in each of the last "
                       f"{settle.pace_epochs} epochs (pace = how far its weights turned in the epoch / the median group's; "
                       "the turn leaves out weight decay's shrinkage, which is the same for every group). Relative, "
                       "because the learning rate moves every group's change together.")
        head = st.columns([2, 2, 2, 2, 2, 2])
        for col, text in zip(head, ["**Layer group**", "**Parameters**", "**Weight change / epoch**",
                                    "**Pace vs median group**", "**Filter trail length**", "**Cue**"]):
            col.markdown(text)
        for g in GROUPS:
            c1, c2, c3, c3b, c4, c5 = st.columns([2, 2, 2, 2, 2, 2])
            c1.toggle(g, key=f"frz-g-{g}", on_change=on_toggle, help=f"Freeze {g} ({', '.join(wb.model.layer_groups[g])}).")
            c2.write(f"{n_params(g):,} ({100 * n_params(g) / total:.0f}%)")
            r = rows.get(g)
            rel = r.get("rel_change") if r else None
            trail = r.get("trail_length") if r else None
            pace = r.get("pace") if r else None
            c3.write("–" if rel is None else f"{100 * rel:.2f}%")
            c3b.write("–" if pace is None or r.get("frozen") else ("∞" if pace == float("inf") else f"{pace:.2f}x"))
            c4.write("–" if trail is None else f"{trail:.3f}")
            if r is None or rel is None:
                c5.write("train one epoch to see")
            elif r.get("frozen"):
                c5.write("frozen")
            else:
                c5.write("settled: can freeze" if r.get("settled") else "still learning")
    with st.container(key="frz-live"):
        if view is None or not view["epochs"] and not view["steps"]:
            st.caption("Start training to see time per epoch and validation accuracy here.")
            return
        markers = step_freeze_markers(view)
        for k, (step, label) in enumerate(markers, start=1):  # k: the number on the loss chart's marker
            st.caption(f"**{k}** · step {step}: {label}.")
        saving = freeze_saving(view["epochs"])
        if saving is not None:
            value, delta, text = saving_summary(saving)
            with st.container(key="frz-saving"):
                st.metric("Time per epoch after freezing", value, **delta)
                st.caption(text)
        elif markers:
            st.caption("The saving is measured once epochs have run on each side of the change (the first epoch of "
                       "each side is left out: warm-up, or the change happened during it).")
        st.plotly_chart(epoch_time_figure(view["epochs"], saving), key="frz-epoch-chart", width="stretch")
        st.plotly_chart(live_figure(view), key="frz-chart", width="stretch")


live_job(wb, "frz", draw, pausable=True)
