"""core.study.design: counterbalancing, questionnaire scoring, measures from events, paired tests."""
from __future__ import annotations

import itertools
import math

import pytest

from core.study.design import (
    CONFIRM,
    SHOW,
    SUS_ITEMS,
    TLX_DIMENSIONS,
    Event,
    balanced_latin_square,
    order_for,
    paired_tests,
    per_item,
    raw_tlx,
    summarize,
    sus_score,
)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_balanced_latin_square_balances_positions_and_carry_over(n):
    orders = balanced_latin_square(n)
    assert len(orders) == (2 * n if n % 2 else n)
    for row in orders:
        assert sorted(row) == list(range(n))
    for pos in range(n):  # every condition equally often in every position
        counts = [sum(row[pos] == c for row in orders) for c in range(n)]
        assert len(set(counts)) == 1
    follows = {(a, b): 0 for a, b in itertools.permutations(range(n), 2)}
    for row in orders:
        for a, b in itertools.pairwise(row):
            follows[(a, b)] += 1
    assert len(set(follows.values())) <= 1  # every condition directly follows every other equally often


def test_orders_go_round_robin_and_two_conditions_alternate():
    assert [order_for(i, 2) for i in range(4)] == [[0, 1], [1, 0], [0, 1], [1, 0]]
    three = [order_for(i, 3) for i in range(6)]
    assert len({tuple(o) for o in three}) == 6 and order_for(6, 3) == three[0]
    with pytest.raises(ValueError):
        order_for(-1, 2)
    with pytest.raises(ValueError):
        balanced_latin_square(0)


def test_sus_score_matches_the_standard_scoring():
    assert len(SUS_ITEMS) == 10
    assert sus_score([5, 1] * 5) == 100.0
    assert sus_score([1, 5] * 5) == 0.0
    assert sus_score([3] * 10) == 50.0
    # a worked example: odd items 4,4,4,4,4 -> 3 each (15); even items 2,2,2,2,2 -> 3 each (15); 30 x 2.5
    assert sus_score([4, 2] * 5) == 75.0
    with pytest.raises(ValueError, match="10 answers"):
        sus_score([3] * 9)
    with pytest.raises(ValueError, match="item 3"):
        sus_score([3, 3, 6, 3, 3, 3, 3, 3, 3, 3])


def test_raw_tlx_is_the_mean_of_six_ratings():
    ratings = dict(zip(TLX_DIMENSIONS, [10, 20, 30, 40, 50, 60]))
    assert raw_tlx(ratings) == 35.0
    with pytest.raises(ValueError, match="missing: frustration"):
        raw_tlx({k: 5 for k in list(TLX_DIMENSIONS)[:-1]})
    with pytest.raises(ValueError, match="effort"):
        raw_tlx({**ratings, "effort": 101})


def ev(t, kind, item="img1", participant="p1", condition="click"):
    return Event(participant, condition, t, kind, item)


def test_per_item_measures_come_from_the_events():
    events = [
        ev(100.0, SHOW), ev(101.5, "click"), ev(102.0, "click"), ev(102.5, "undo"), ev(104.0, CONFIRM),
        ev(104.1, SHOW, "img2"), ev(110.1, "click", "img2"), ev(111.1, CONFIRM, "img2"),
        ev(112.0, SHOW, "img3"), ev(113.0, "click", "img3"),  # never confirmed: not an annotation
        ev(200.0, SHOW, "img1", condition="polygon"), ev(201.0, "polygon_point", "img1", condition="polygon"),
        ev(209.0, CONFIRM, "img1", condition="polygon"),
        ev(50.0, "page_view", None),  # not about an item
    ]
    rows = per_item(reversed(events))  # order of arrival does not matter
    by = {(r["condition"], r["item"]): r for r in rows}
    assert set(by) == {("click", "img1"), ("click", "img2"), ("polygon", "img1")}
    assert by[("click", "img1")]["seconds"] == pytest.approx(4.0)
    assert by[("click", "img1")]["operations"] == 3 and by[("click", "img1")]["undos"] == 1
    assert by[("click", "img2")]["seconds"] == pytest.approx(7.0)
    assert by[("polygon", "img1")]["operations"] == 1
    summary = {r["condition"]: r for r in summarize(rows)}
    assert summary["click"]["images"] == 2 and summary["click"]["median_seconds"] == pytest.approx(5.5)
    assert summary["click"]["operations_per_image"] == pytest.approx(2.0)


def test_an_item_shown_again_after_a_refresh_counts_from_its_first_showing():
    rows = per_item([ev(10.0, SHOW), ev(12.0, "click"), ev(30.0, SHOW), ev(31.0, "click"), ev(33.0, CONFIRM)])
    assert rows[0]["seconds"] == pytest.approx(23.0) and rows[0]["operations"] == 2


def test_paired_tests_on_a_hand_computed_example():
    a, b = [5.0, 7.0, 9.0, 11.0], [4.0, 5.0, 6.0, 7.0]  # differences 1, 2, 3, 4
    out = paired_tests(a, b)
    sd = math.sqrt(5 / 3)
    assert out["n"] == 4 and out["mean_diff"] == pytest.approx(2.5) and out["sd_diff"] == pytest.approx(sd)
    assert out["t"] == pytest.approx(2.5 / (sd / 2)) and out["cohen_dz"] == pytest.approx(2.5 / sd)
    assert 0 < out["p_t"] < 0.05
    assert out["rank_biserial"] == pytest.approx(1.0) and out["wilcoxon_w"] == 0.0
    assert out["p_wilcoxon"] == pytest.approx(0.125)  # exact: 2 of the 2^4 sign patterns are this extreme
    flipped = paired_tests(b, a)
    assert flipped["rank_biserial"] == pytest.approx(-1.0) and flipped["t"] == pytest.approx(-out["t"])


def test_paired_tests_say_why_when_they_cannot_run():
    assert paired_tests([1.0], [2.0])["note"].startswith("fewer than 2")
    assert paired_tests([1.0, 2.0], [0.0, 1.0])["note"].startswith("the differences do not vary")
    assert paired_tests([float("nan")], [1.0])["note"] == "no complete pairs"
    with pytest.raises(ValueError):
        paired_tests([1.0, 2.0], [1.0])


def test_likert_template_follows_the_design():
    from core.study.design import likert_template

    same = likert_template([{"name": "lasso", "settings": {"sampler": "gmm"}}, {"name": "drag", "settings": {"sampler": "gmm"}}])
    texts = [i["text"] for i in same]
    assert not any("random sampling" in t or "active learning" in t for t in texts)  # both conditions use GMM
    assert sum("'lasso'" in t for t in texts) == 2 and sum("'drag'" in t for t in texts) == 2
    assert same[-2] == {"id": f"Q{len(same) - 1}", "kind": "choice", "text": same[-2]["text"], "options": ["lasso", "drag"]}
    assert [i["id"] for i in same] == [f"Q{k + 1}" for k in range(len(same))]
    mixed = likert_template([{"name": "a", "settings": {"sampler": "gmm"}}, {"name": "b", "settings": {"sampler": "random"}}])
    assert sum("random sampling" in i["text"] for i in mixed) == 1 and sum("active learning" in i["text"] for i in mixed) == 1
