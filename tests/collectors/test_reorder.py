"""Reorder semantics, property-based: order, completeness, duplicates, gaps, late, bounds."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from pvaflow.collectors.reorder import Reorderer, ReorderState

INF = math.inf


def jittered(ids: list[int], window: int, rng: random.Random) -> list[int]:
    """Arrival order where each id is displaced by less than ``window`` places."""
    return sorted(ids, key=lambda i: i + rng.uniform(0, window))


def run(r: Reorderer[int], arrivals: list[int], flush: bool = True) -> list[int]:
    out: list[int] = []
    for uid in arrivals:
        out += [u for u, _ in r.push(uid, uid, now=0.0)[1]]
    if flush:
        out += [u for u, _ in r.flush()]
    return out


@given(n=st.integers(1, 300), w=st.integers(1, 20), seed=st.integers(0, 2**32))
def test_permutation_within_window_comes_out_complete_and_ordered(n: int, w: int, seed: int):
    r: Reorderer[int] = Reorderer(cache_size=w, max_delay=INF)
    out = run(r, jittered(list(range(1, n + 1)), w, random.Random(seed)))
    assert out == list(range(1, n + 1))
    assert (r.stats.missed, r.stats.late, r.stats.duplicates) == (0, 0, 0)


@given(n=st.integers(1, 200), w=st.integers(1, 10), seed=st.integers(0, 2**32),
       dups=st.integers(0, 50))
def test_duplicates_are_dropped_and_counted(n: int, w: int, seed: int, dups: int):
    rng = random.Random(seed)
    arrivals = jittered(list(range(1, n + 1)), w, rng)
    for _ in range(dups):  # redelivery: a copy arrives somewhere after the original
        i = rng.randrange(len(arrivals))
        arrivals.insert(rng.randrange(i + 1, len(arrivals) + 1), arrivals[i])
    r: Reorderer[int] = Reorderer(cache_size=w, max_delay=INF)
    out = run(r, arrivals)
    assert out == list(range(1, n + 1))
    assert r.stats.duplicates == dups and r.stats.late == 0


@given(n=st.integers(1, 200), w=st.integers(1, 10), seed=st.integers(0, 2**32),
       drop=st.floats(0, 0.5))
def test_gaps_are_counted_as_missed_and_output_continues(n: int, w: int, seed: int, drop: float):
    rng = random.Random(seed)
    kept = [i for i in range(1, n + 1) if rng.random() >= drop]
    r: Reorderer[int] = Reorderer(cache_size=w, max_delay=INF, state=ReorderState(1))
    out = run(r, jittered(kept, w, rng))
    assert out == kept
    assert r.stats.missed == (kept[-1] - len(kept) if kept else 0)
    assert r.stats.late == 0


def test_time_bound_skips_gap_then_late_frame_is_counted_not_emitted():
    t = [0.0]
    r: Reorderer[str] = Reorderer(cache_size=100, max_delay=2.0, state=ReorderState(1),
                                  clock=lambda: t[0])
    assert r.push(2, "b")[1] == [] and r.push(3, "c")[1] == []
    t[0] = 1.9
    assert r.release() == []
    t[0] = 2.0
    assert r.release() == [(2, "b"), (3, "c")]
    assert r.stats.missed == 1 and r.last_emitted == 3
    assert r.push(1, "a") == ("late", [])
    assert r.push(3, "c") == ("duplicate", [])
    assert r.push(4, "d") == ("cached", [(4, "d")])
    assert (r.stats.late, r.stats.duplicates, r.stats.emitted) == (1, 1, 3)


def test_fresh_start_gives_frames_behind_the_start_a_fresh_delay():
    t = [0.0]
    r: Reorderer[int] = Reorderer(cache_size=100, max_delay=2.0, clock=lambda: t[0])
    r.push(1, 1)
    r.push(3, 3)
    t[0] = 2.0
    assert r.release() == [(1, 1)]  # start: 3 waits again instead of skipping 2 at once
    t[0] = 3.0
    assert r.push(2, 2)[1] == [(2, 2), (3, 3)] and r.stats.missed == 0


def test_fresh_start_waits_then_starts_at_lowest():
    r: Reorderer[int] = Reorderer(cache_size=3, max_delay=INF)
    assert run(r, [5, 4, 6], flush=False) == []
    assert run(r, [7], flush=False) == [4, 5, 6, 7]
    assert r.push(3, 3) == ("late", [])  # before the start: late, not a duplicate
    assert r.stats.missed == 0


ops = st.lists(st.tuples(st.integers(0, 60), st.floats(0, 1.0)), max_size=300)


@settings(max_examples=200)
@given(ops=ops, cache=st.integers(1, 16), delay=st.floats(0.1, 5))
def test_bounds_and_accounting_hold_for_any_input(ops, cache: int, delay: float):
    now, arrived = 0.0, {}
    r: Reorderer[int] = Reorderer(cache_size=cache, max_delay=delay, clock=lambda: now)
    emitted: list[int] = []
    started = None  # the stream's start resets every waiting frame's clock
    for uid, dt in ops:
        now += dt
        fate, out = r.push(uid, uid)
        if fate == "cached":
            arrived[uid] = now
        out += r.release()
        if out and started is None:
            started = now
        emitted += [u for u, _ in out]
        assert r.depth <= cache
        assert all(now - max(arrived[u], started or 0) < delay for u, _ in r.pending())
    assert emitted == sorted(set(emitted))  # strictly increasing, each once
    s = r.stats
    assert s.received == s.emitted + s.late + s.duplicates + r.depth
    assert s.peak_cache_depth <= cache


@given(n=st.integers(2, 150), w=st.integers(1, 8), seed=st.integers(0, 2**32),
       cut=st.floats(0, 1))
def test_restart_from_saved_state_never_emits_twice_and_loses_nothing(n, w, seed, cut):
    arrivals = jittered(list(range(1, n + 1)), w, random.Random(seed))
    first: Reorderer[int] = Reorderer(cache_size=w, max_delay=INF, state=ReorderState(1))
    before = run(first, arrivals[: int(cut * n)], flush=False)
    saved = ReorderState.from_json(first.state.to_json())
    again: Reorderer[int] = Reorderer(cache_size=w, max_delay=INF, state=saved)
    after = run(again, arrivals)  # replay from an offset before anything still cached
    assert before + after == list(range(1, n + 1))
    assert again.stats.duplicates == len(before) and again.stats.late == 0


@given(uids=st.lists(st.integers(0, 80), max_size=300), cuts=st.lists(st.integers(1, 40)),
       cache=st.integers(1, 16))
def test_pushing_a_poll_at_once_keeps_every_bound_and_account(uids, cuts, cache: int):
    r: Reorderer[int] = Reorderer(cache_size=cache, max_delay=INF)
    emitted: list[int] = []
    rejected = {"late": 0, "duplicate": 0}
    late: set[int] = set()
    i = 0
    for size in [*cuts, len(uids)]:
        poll, i = uids[i:i + size], i + size
        bad, out = r.push_many(poll, poll, now=0.0)
        for fate, uid, item in bad:
            rejected[fate] += 1
            assert uid == item
            if fate == "late":
                late.add(uid)
        emitted += [u for u, _ in out]
        assert r.depth <= cache
    emitted += [u for u, _ in r.flush()]
    assert emitted == sorted(set(emitted))  # strictly increasing, each once
    s = r.stats
    assert (s.late, s.duplicates) == (rejected["late"], rejected["duplicate"])
    assert s.received == len(uids) == s.emitted + s.late + s.duplicates
    assert set(emitted) == set(uids) - late  # nothing cached is lost


def test_a_gap_filled_later_in_the_same_poll_is_not_skipped():
    r: Reorderer[str] = Reorderer(cache_size=2, max_delay=INF, state=ReorderState(1))
    _, out = r.push_many([3, 4, 5, 1, 2], list("cdeab"))
    assert [u for u, _ in out] == [1, 2, 3, 4, 5]
    assert r.stats.missed == 0
    one_by_one: Reorderer[int] = Reorderer(cache_size=2, max_delay=INF, state=ReorderState(1))
    assert run(one_by_one, [3, 4, 5, 1, 2]) == [3, 4, 5]  # the cache overflowed first
