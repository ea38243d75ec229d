"""The routing plan reproduces PvaPy's distributor outcomes exactly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pvaflow.bridge.plan import Plan, PlanError, Route, parse_sets

IDS = range(1, 25)


def ids_at(plan: Plan, topic: str, partition: int) -> list[int]:
    return [u for u in IDS if plan.route(u) == Route(topic, partition, plan.route(u).set_name)]


def test_two_partitions_alternate_like_two_distributor_consumers() -> None:
    plan = Plan("frames", partitions=2, updates=1)
    assert ids_at(plan, "frames", 0)[:6] == [1, 3, 5, 7, 9, 11]
    assert ids_at(plan, "frames", 1)[:6] == [2, 4, 6, 8, 10, 12]


def test_sets_a_b_with_three_updates_match_the_seed() -> None:
    plan = Plan("frames", partitions=1, updates=3, sets=("A", "B"))
    assert plan.topics == ("frames.A", "frames.B")
    assert ids_at(plan, "frames.A", 0)[:7] == [1, 2, 3, 7, 8, 9, 13]
    assert ids_at(plan, "frames.B", 0)[:7] == [4, 5, 6, 10, 11, 12, 16]


def test_sets_spread_their_blocks_over_partitions() -> None:
    plan = Plan("f", partitions=3, updates=2, sets=("A", "B", "C"))
    # blocks of 2: b0={1,2}->A p0, b1={3,4}->B p0, b2->C p0, b3={7,8}->A p1, b6={13,14}->A p2
    assert ids_at(plan, "f.A", 0)[:4] == [1, 2, 19, 20]
    assert ids_at(plan, "f.A", 1)[:2] == [7, 8]
    assert ids_at(plan, "f.A", 2)[:2] == [13, 14]
    assert ids_at(plan, "f.B", 0)[:2] == [3, 4]
    assert ids_at(plan, "f.C", 2)[:2] == [17, 18]


def test_first_shifts_the_blocks() -> None:
    plan = Plan("f", partitions=2, first=10)
    assert plan.route(10).partition == 0
    assert plan.route(11).partition == 1
    assert plan.rebased(11).route(11).partition == 0


@given(
    st.integers(1, 8), st.integers(1, 5), st.integers(0, 4), st.integers(-5, 100),
    st.lists(st.integers(-10, 10_000), max_size=50),
)
def test_every_id_lands_in_a_valid_place_and_blocks_stay_together(
    partitions: int, updates: int, nsets: int, first: int, ids: list[int]
) -> None:
    sets = tuple("ABCD"[:nsets])
    plan = Plan("t", partitions, updates, sets, first)
    for u in ids:
        r = plan.route(u)
        assert r.topic in plan.topics
        assert 0 <= r.partition < partitions
        # every id of a block goes to the same place
        start = first + plan.block(u) * updates
        assert plan.route(start) == r
        assert plan.route(start + updates - 1) == r


@given(st.integers(1, 8), st.integers(1, 5), st.integers(1, 4))
def test_load_is_balanced_over_a_full_cycle(partitions: int, updates: int, nsets: int) -> None:
    sets = tuple("ABCD"[:nsets])
    plan = Plan("t", partitions, updates, sets)
    cycle = partitions * updates * nsets
    counts: dict[Route, int] = {}
    for u in range(1, 1 + cycle):
        counts[plan.route(u)] = counts.get(plan.route(u), 0) + 1
    assert len(counts) == partitions * nsets
    assert set(counts.values()) == {updates}


def test_describe_round_trips() -> None:
    plan = Plan("frames", 3, 2, ("A", "B", "C"), 5)
    assert Plan.parse(plan.describe()) == plan
    assert Plan.parse(Plan("x").describe().encode()) == Plan("x")


@pytest.mark.parametrize("bad", [
    dict(partitions=0), dict(updates=0), dict(sets=("A", "A")), dict(sets=("a.b",)),
])
def test_bad_plans_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(PlanError):
        Plan("t", **bad)  # type: ignore[arg-type]


def test_parse_sets() -> None:
    assert parse_sets("A, B,") == ("A", "B")
    assert parse_sets(None) == ()
    with pytest.raises(PlanError):
        Plan.parse("v=2;topic=x")
