"""The "what the marks do" panel of a feedback page's parameters: a toggle for the kind's own
loss, one for counterexamples made from the marks, how many per image, and a word when both
are off. Each page gives its keys' prefix and its words."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st


@dataclass(frozen=True)
class MarkUses:
    """A page's words and keys for the panel: widget keys are ``<prefix>-p-<field>``."""

    prefix: str
    title: str
    loss_field: str
    loss_label: str
    loss_help: str
    cex_label: str
    cex_help: str
    k_help: str
    neither: str
    neither_draw: Callable[[str], object] = st.caption


def mark_uses_panel(uses: MarkUses, on_change: Callable[[], None]) -> None:
    """The panel, in the container ``<prefix>-cex-panel``; each change calls ``on_change``."""
    ss = st.session_state
    key = f"{uses.prefix}-p-"
    with st.container(key=f"{uses.prefix}-cex-panel"):
        st.markdown(f"**{uses.title}**")
        st.toggle(uses.loss_label, key=key + uses.loss_field, on_change=on_change, help=uses.loss_help)
        st.toggle(uses.cex_label, key=key + "counterexamples", on_change=on_change, help=uses.cex_help)
        st.number_input("Counterexamples per image", 1, 64, step=1, key=key + "cex_k", on_change=on_change,
                        disabled=not ss.get(key + "counterexamples"), help=uses.k_help)
        if not ss.get(key + uses.loss_field) and not ss.get(key + "counterexamples"):
            uses.neither_draw(uses.neither)
