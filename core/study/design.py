"""User studies of the steering methods (within-subjects): counterbalanced condition orders,
questionnaire scoring, per-image measures derived from logged gesture events, and paired tests
between conditions. Plain Python and scipy; no Streamlit, no global state.

The measures come from events, not page timers: a participant's time on an image runs from
the first event that showed it to the event that confirmed it, and the operations are the
gesture events in between. A page logs an event before it reacts to the gesture, so the
record holds even when the server is killed right after.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


# ----------------------------------------------------------------------------- design
def balanced_latin_square(n: int) -> list[list[int]]:
    """Condition orders (0-based) from a balanced Latin square (Williams 1949): every
    condition appears once in every position, and every condition directly follows every
    other equally often. n orders when n is even; 2n (the square and its mirror) when n is odd,
    where no single square can balance first-order carry-over."""
    if n < 1:
        raise ValueError("a study needs at least one condition")
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:  # 0, 1, n-1, 2, n-2, ...
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    square = [[(c + r) % n for c in first] for r in range(n)]
    if n % 2:
        square += [row[::-1] for row in square]
    return square


def order_for(participant: int, n_conditions: int) -> list[int]:
    """The condition order of the ``participant``-th participant (0-based, in order of
    creation): the balanced square's orders handed out round-robin."""
    if participant < 0:
        raise ValueError("participant index must be >= 0")
    orders = balanced_latin_square(n_conditions)
    return list(orders[participant % len(orders)])


# ----------------------------------------------------------------------------- questionnaires
SUS_ITEMS = [
    "I think that I would like to use this system frequently.",
    "I found the system unnecessarily complex.",
    "I thought the system was easy to use.",
    "I think that I would need the support of a technical person to be able to use this system.",
    "I found the various functions in this system were well integrated.",
    "I thought there was too much inconsistency in this system.",
    "I would imagine that most people would learn to use this system very quickly.",
    "I found the system very cumbersome to use.",
    "I felt very confident using the system.",
    "I needed to learn a lot of things before I could get going with this system.",
]

TLX_DIMENSIONS = {
    "mental": "Mental demand: how mentally demanding was the task?",
    "physical": "Physical demand: how physically demanding was the task?",
    "temporal": "Temporal demand: how hurried or rushed was the pace of the task?",
    "performance": "Performance: how successful were you in accomplishing what you were asked to do? (0 = perfect, 100 = failure)",
    "effort": "Effort: how hard did you have to work to accomplish your level of performance?",
    "frustration": "Frustration: how insecure, discouraged, irritated, stressed and annoyed were you?",
}

# Seed 001's questionnaire (section 6.5), as an editable template: Likert items 1-5
# (1 = strongly disagree), then a choice and a free-text question.
SEED001_ITEMS: list[dict[str, Any]] = [
    {"id": "Q1", "kind": "likert", "text": "Attention annotating with the click-based user interface was difficult."},
    {"id": "Q2", "kind": "likert", "text": "Attention annotating with the polygon-based user interface was difficult."},
    {"id": "Q3", "kind": "likert", "text": "It was difficult to concentrate on the tasks when using the click-based user interface."},
    {"id": "Q4", "kind": "likert", "text": "It was difficult to concentrate on the tasks when using the polygon-based user interface."},
    {"id": "Q5", "kind": "likert", "text": "The attention maps obtained by active learning were reasonable."},
    {"id": "Q6", "kind": "likert", "text": "The attention maps obtained by random sampling were reasonable."},
    {"id": "Q7", "kind": "likert", "text": "I am confident to use the fine-tuned networks in my further research or deployment."},
    {"id": "Q8", "kind": "choice", "text": "Which fine-tune method do you prefer to use?", "options": ["click", "polygon"]},
    {"id": "Q9", "kind": "text", "text": "Why, or any comments?"},
]


def likert_template(conditions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Seed 001's questionnaire (:data:`SEED001_ITEMS`) rewritten for a study's own conditions
    (each a dict with ``name`` and optional ``settings``): the difficulty and concentration items
    once per condition, the item on the chosen images once per sampler only when the conditions
    use more than one, the confidence item, the preference between the conditions and the
    free-text question. Ids run Q1, Q2, ..."""
    names = [str(c["name"]) for c in conditions]
    samplers = list(dict.fromkeys(str((c.get("settings") or {}).get("sampler", "gmm")) for c in conditions
                                  if c.get("task", "attention") == "attention"))  # latent and grid choose otherwise
    sampler_words = {"gmm": "active learning (GMM uncertainty)", "entropy": "active learning (entropy)",
                     "random": "random sampling"}
    texts = [f"Annotating in the '{n}' part was difficult." for n in names]
    texts += [f"It was difficult to concentrate on the task in the '{n}' part." for n in names]
    if len(samplers) > 1:
        texts += [f"The images chosen by {sampler_words.get(s, s)} were reasonable to annotate." for s in samplers]
    texts.append("I am confident to use the fine-tuned networks in my further research or deployment.")
    items: list[dict[str, Any]] = [{"kind": "likert", "text": t} for t in texts]
    items.append({"kind": "choice", "text": "Which way of giving feedback do you prefer?", "options": names})
    items.append({"kind": "text", "text": "Why, or any comments?"})
    return [{"id": f"Q{k + 1}", **item} for k, item in enumerate(items)]


def sus_score(answers: Sequence[int]) -> float:
    """System Usability Scale (Brooke 1996), 0-100, from the ten answers in item order, each
    1 (strongly disagree) to 5 (strongly agree): odd items count answer - 1, even items
    5 - answer, and the sum is scaled by 2.5."""
    if len(answers) != len(SUS_ITEMS):
        raise ValueError(f"SUS needs {len(SUS_ITEMS)} answers, got {len(answers)}")
    total = 0
    for i, a in enumerate(answers):
        if not isinstance(a, int) or isinstance(a, bool) or not 1 <= a <= 5:
            raise ValueError(f"SUS item {i + 1}: answer {a!r} is not an integer from 1 to 5")
        total += (a - 1) if i % 2 == 0 else (5 - a)
    return total * 2.5


def raw_tlx(ratings: dict[str, float]) -> float:
    """Raw NASA-TLX (Hart 2006): the unweighted mean of the six ratings, each 0-100 (higher
    is more workload; performance runs from 0 = perfect to 100 = failure)."""
    missing = [d for d in TLX_DIMENSIONS if d not in ratings]
    if missing:
        raise ValueError(f"NASA-TLX ratings missing: {', '.join(missing)}")
    for d in TLX_DIMENSIONS:
        v = ratings[d]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 100 or math.isnan(v):
            raise ValueError(f"NASA-TLX {d}: rating {v!r} is not a number from 0 to 100")
    return float(sum(ratings[d] for d in TLX_DIMENSIONS) / len(TLX_DIMENSIONS))


# ----------------------------------------------------------------------------- events
SHOW = "item_shown"
CONFIRM = "confirm"
#: gestures counted as a participant's work on an item. The drawable canvas reports a polygon only
#: once it is closed, so its vertices are logged then (payload ``timed_at_close``) and the closing
#: click as ``polygon_close``: the page cannot know when each vertex was placed. A latent
#: condition logs each lasso or box ``select`` and each ``move`` (a drop on the drag canvas, or
#: the selection sent to a centroid); a grid condition each ``mark`` and ``erase`` of a square.
OPERATIONS = frozenset({"click", "undo", "redo", "clear", "move", "polygon_point", "polygon_close", "mark", "erase",
                        "select"})


@dataclass(frozen=True)
class Event:
    """One logged gesture: who, in which condition, when (seconds, any monotonic-enough
    clock shared by a participant's events, e.g. Unix time), what, on which item."""

    participant: str
    condition: str
    t: float
    kind: str
    item: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)


def per_item(events: Iterable[Event]) -> list[dict[str, Any]]:
    """One row per confirmed item (participant, condition, item): when it was first shown
    (``shown``, the event clock), seconds from then to its confirmation, and the operations
    (gesture events) logged on it in between. Rows come per participant in the order the items
    were shown. Items shown but never confirmed are left out (they are not annotations)."""
    by_key: dict[tuple[str, str, str], list[Event]] = {}
    for e in events:
        if e.item is not None:
            by_key.setdefault((e.participant, e.condition, e.item), []).append(e)
    rows = []
    for (participant, condition, item), evs in by_key.items():
        evs.sort(key=lambda e: e.t)
        shown = next((e.t for e in evs if e.kind == SHOW), None)
        confirmed = next((e.t for e in evs if e.kind == CONFIRM and (shown is None or e.t >= shown)), None)
        if shown is None or confirmed is None:
            continue
        ops = [e for e in evs if e.kind in OPERATIONS and shown <= e.t <= confirmed]
        rows.append({"participant": participant, "condition": condition, "item": item, "shown": shown,
                     "seconds": confirmed - shown, "operations": len(ops),
                     "undos": sum(e.kind == "undo" for e in ops)})
    rows.sort(key=lambda r: (r["participant"], r["shown"], r["condition"], r["item"]))
    return rows


def summarize(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per participant x condition: images annotated, median seconds per image, operations
    per image (mean)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in items:
        groups.setdefault((r["participant"], r["condition"]), []).append(r)
    return [{"participant": p, "condition": c, "images": len(rs),
             "median_seconds": statistics.median(r["seconds"] for r in rs),
             "operations_per_image": sum(r["operations"] for r in rs) / len(rs)}
            for (p, c), rs in sorted(groups.items())]


# ----------------------------------------------------------------------------- statistics
def paired_tests(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Paired comparison of two conditions over the same participants (``a[i]`` and ``b[i]``
    from participant i): mean and sd of the differences a - b, the paired t-test with Cohen's
    d_z (mean difference / sd of differences), and the Wilcoxon signed-rank test with the
    matched-pairs rank-biserial correlation r (+1: every participant higher in a). Tests
    that cannot be computed (fewer than 2 pairs, no variation) give None with a reason."""
    from scipy import stats  # (only the study results need scipy)

    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length ({len(a)} vs {len(b)})")
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if not (math.isnan(float(x)) or math.isnan(float(y)))]
    d = [x - y for x, y in pairs]
    out: dict[str, Any] = {"n": len(d), "mean_a": None, "mean_b": None, "mean_diff": None, "sd_diff": None,
                           "t": None, "p_t": None, "cohen_dz": None, "wilcoxon_w": None, "p_wilcoxon": None,
                           "rank_biserial": None, "note": ""}
    if not d:
        out["note"] = "no complete pairs"
        return out
    out["mean_a"] = statistics.fmean(x for x, _ in pairs)
    out["mean_b"] = statistics.fmean(y for _, y in pairs)
    out["mean_diff"] = statistics.fmean(d)
    if len(d) < 2:
        out["note"] = "fewer than 2 pairs: no test"
        return out
    sd = statistics.stdev(d)
    out["sd_diff"] = sd
    if sd == 0:
        out["note"] = "the differences do not vary: no test"
        return out
    t = stats.ttest_rel([x for x, _ in pairs], [y for _, y in pairs])
    out.update(t=float(t.statistic), p_t=float(t.pvalue), cohen_dz=out["mean_diff"] / sd)
    nonzero = [x for x in d if x != 0]
    if nonzero:
        w = stats.wilcoxon([x for x, _ in pairs], [y for _, y in pairs])
        ranks = stats.rankdata([abs(x) for x in nonzero])
        plus = sum(r for r, x in zip(ranks, nonzero) if x > 0)
        minus = sum(r for r, x in zip(ranks, nonzero) if x < 0)
        out.update(wilcoxon_w=float(w.statistic), p_wilcoxon=float(w.pvalue),
                   rank_biserial=float((plus - minus) / (plus + minus)))
    return out
