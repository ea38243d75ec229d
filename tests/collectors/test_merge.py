"""The merge rule and the memory of given-up ids (pure logic, no server)."""

from __future__ import annotations

import itertools
import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from pvaflow.collectors.merge import (
    CACHE,
    DELAY,
    DRAINED,
    PASSED,
    IntervalSet,
    Stream,
    frontier,
)
from pvaflow.collectors.reorder import MAX_MISSED_RANGES, Reorderer, ReorderState

INF = math.inf


def test_frontier_is_the_lowest_id_a_live_stream_may_still_deliver() -> None:
    assert frontier([]) == (INF, PASSED)
    assert frontier([Stream(10), Stream(4)]) == (5, PASSED)
    assert frontier([Stream(10), Stream(None)]) == (-INF, PASSED)  # nothing known yet
    assert frontier([Stream(10), Stream(None, DRAINED)]) == (11, DRAINED)
    assert frontier([Stream(3, DRAINED), Stream(None, DELAY), Stream(7)]) == (8, DELAY)
    assert frontier([Stream(3, DRAINED)]) == (INF, DRAINED)
    assert frontier([Stream(10), Stream(4, mixed=True)]) is None  # the time bound decides


def test_a_second_upstream_makes_a_stream_mixed_for_good() -> None:
    stream = Stream()
    stream.saw(b"frames/0")
    stream.saw(b"frames/0")
    assert not stream.mixed
    stream.saw(b"frames/1")
    stream.saw(b"frames/0")
    assert stream.mixed


def test_a_mixed_stream_gives_gaps_up_only_after_the_time_bound() -> None:
    """Two upstreams hashed into one partition, ids arriving 2, 1 | 4, 6 | 3, 5: under the
    merge rule 3 would be given up once 4 arrived (and 5 once 6 did), though both come
    later; a mixed stream leaves gaps to the time bound (--max-delay) and nothing is lost."""
    stream = Stream()
    r: Reorderer[int] = Reorderer(1000, 5.0)
    out: list[int] = []
    polls = [[(2, b"in/1"), (1, b"in/0")], [(4, b"in/1"), (6, b"in/1")],
             [(3, b"in/0"), (5, b"in/0")]]
    for t, poll in enumerate(polls):
        for uid, src in poll:
            stream.saw(src)
            stream.high = uid if stream.high is None else max(stream.high, uid)
        r.set_frontier(frontier([stream]))
        uids = [u for u, _ in poll]
        out += [u for u, _ in r.push_many(uids, uids, now=float(t))[1]]
        out += [u for u, _ in r.release(now=float(t))]
    out += [u for u, _ in r.release(now=10.0)]  # the fresh start's wait is over
    assert stream.mixed and out == [1, 2, 3, 4, 5, 6] and r.stats.missed == 0
    assert frontier([Stream(2), Stream(4)]) == (3, PASSED)  # not mixed: 3 would be gone


class Merge:
    """The collector's use of the reorderer: per-stream highest ids and the frontier."""

    def __init__(self, k: int, cache: int = 10**9, state: ReorderState | None = None) -> None:
        self.streams = [Stream() for _ in range(k)]
        self.r: Reorderer[int] = Reorderer(cache, INF, state=state)
        self.out: list[int] = []

    def push(self, s: int, uids: list[int]) -> None:
        st_ = self.streams[s]
        if uids:
            st_.high = max(uids[-1], st_.high if st_.high is not None else uids[-1])
            st_.drained = None
        self.r.set_frontier(frontier(self.streams))
        self.out += [u for u, _ in self.r.push_many(uids, uids, now=0.0)[1]]
        self.out += [u for u, _ in self.r.release(now=0.0)]

    def drain(self, s: int, why: str = DRAINED) -> None:
        self.streams[s].drained = why
        self.push(s, [])


def split(ids: list[int], k: int, block: int) -> list[list[int]]:
    """The bridge's plan: blocks of ``block`` ids round-robin over ``k`` partitions."""
    parts: list[list[int]] = [[] for _ in range(k)]
    for i in ids:
        parts[(i // block) % k].append(i)
    return parts


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 400), k=st.integers(1, 5), block=st.integers(1, 4),
       drop=st.floats(0, 0.3), seed=st.integers(0, 2**32))
def test_streams_in_any_interleaving_come_out_complete_and_ordered(n, k, block, drop, seed):
    """Streams drift any distance apart: nothing that reached the collector is given up,
    every id dropped upstream (in no stream) is missed, nothing is late or a duplicate."""
    rng = random.Random(seed)
    sent = [i for i in range(1, n + 1) if rng.random() >= drop]
    parts = split(sent, k, block)
    m = Merge(k)
    pos = [0] * k
    while any(pos[s] < len(parts[s]) for s in range(k)):
        s = rng.choice([s for s in range(k) if pos[s] < len(parts[s])])
        take = rng.randint(1, 30)
        m.push(s, parts[s][pos[s]:pos[s] + take])
        pos[s] += take
    for s in range(k):
        m.drain(s)
    assert m.out == sent
    r = m.r.stats
    assert (r.late, r.duplicates) == (0, 0)
    # ids before the first one delivered are not gaps; those after it are missed, each once
    if sent:
        assert r.missed == sent[-1] - sent[0] + 1 - len(sent)
        assert set(r.missed_by) <= {PASSED, DRAINED}


@settings(max_examples=100, deadline=None)
@given(n=st.integers(10, 300), k=st.integers(2, 4), seed=st.integers(0, 2**32))
def test_a_repeated_tail_is_counted_as_duplicates_exactly(n, k, seed):
    """A processor restarted from its last commit repeats the tail of its stream."""
    rng = random.Random(seed)
    parts = split(list(range(1, n + 1)), k, 1)
    m = Merge(k)
    dups = 0
    pos = [0] * k
    while any(pos[s] < len(parts[s]) for s in range(k)):
        s = rng.choice([s for s in range(k) if pos[s] < len(parts[s])])
        take = rng.randint(1, 20)
        m.push(s, parts[s][pos[s]:pos[s] + take])
        pos[s] = min(len(parts[s]), pos[s] + take)
        if rng.random() < 0.2:
            back = rng.randint(0, pos[s])
            m.push(s, parts[s][pos[s] - back:pos[s]])
            dups += back
    for s in range(k):
        m.drain(s)
    assert m.out == list(range(1, n + 1))
    assert (m.r.stats.duplicates, m.r.stats.late, m.r.stats.missed) == (dups, 0, 0)


def test_a_silent_stream_holds_the_others_back_until_it_is_drained() -> None:
    m = Merge(2)
    m.push(0, [1, 3, 5, 7, 9])
    m.push(1, [2])
    assert m.out == [1, 2, 3]  # 4 may still come from stream 1
    m.push(0, [11, 13])
    assert m.out == [1, 2, 3]
    m.push(1, [4, 6])
    assert m.out == [1, 2, 3, 4, 5, 6, 7]
    m.drain(1)  # nothing more upstream: 8, 10, 12 will never come
    assert m.out == [1, 2, 3, 4, 5, 6, 7, 9, 11, 13]
    assert m.r.stats.missed_by == {DRAINED: 3}
    m.push(1, [14])  # a drained stream is live again with its next record
    m.push(0, [15])
    assert m.out[-2:] == [14, 15]


def test_fresh_start_needs_no_wait_once_every_stream_has_delivered() -> None:
    m = Merge(3)
    m.push(0, [5, 8])
    m.push(1, [6])
    assert m.out == []  # stream 2 may still deliver something lower
    m.push(2, [7])
    assert m.out == [5, 6, 7, 8]
    assert m.r.state.fresh_start == 5 and m.r.stats.missed == 0


def test_the_cache_bound_still_holds_and_says_why() -> None:
    m = Merge(2, cache=3)
    m.push(1, [2])
    m.push(0, [1, 3, 5, 7, 9, 11])  # stream 1 silent at 2: 4 may come, but the cache is full
    assert m.r.depth <= 3
    assert m.r.stats.missed_by.get(CACHE, 0) > 0


def test_late_frames_after_many_gaps_are_late_never_duplicates() -> None:
    """On main only the last 64 given-up ranges were remembered: older late frames were
    counted as duplicates."""
    m = Merge(1, state=ReorderState(1))
    n = 3 * MAX_MISSED_RANGES
    m.push(0, [2 * i + 1 for i in range(n)])  # 2, 4, 6, ... never came: n - 1 gaps
    assert m.r.stats.missed == n - 1
    late = [2 * i for i in range(1, n)]
    rejected, _ = m.r.push_many(late, late, now=0.0)
    assert [f for f, _u, _i in rejected] == ["late"] * len(late)
    assert m.r.stats.duplicates == 0 and m.r.stats.late == len(late)
    assert len(m.r.state.missed) <= MAX_MISSED_RANGES
    # duplicates of recently emitted ids are still told apart
    rejected, _ = m.r.push_many([2 * n - 1], [0], now=0.0)
    assert rejected[0][0] == "duplicate"


@settings(max_examples=200, deadline=None)
@given(ranges=st.lists(st.tuples(st.integers(0, 500), st.integers(0, 20)), max_size=80),
       limit=st.integers(1, 12))
def test_interval_set_is_exact_within_its_bound_and_a_superset_beyond(ranges, limit):
    s, exact = IntervalSet(limit=limit), set()
    unbounded = IntervalSet(limit=10**6)
    joined = False  # whether the exact set ever needed more ranges than the limit
    for lo, width in ranges:
        s.add(lo, lo + width)
        unbounded.add(lo, lo + width)
        exact.update(range(lo, lo + width + 1))
        joined = joined or len(unbounded) > limit
    assert len(s) <= limit
    got = {u for u in range(0, 530) if u in s}
    assert exact <= got  # a given-up id is never forgotten
    spans = list(s)
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(spans))
    if not joined:  # (a join is for good: ids between joined ranges stay in the set)
        assert got == exact
    # only ids below the highest joined range can be over-reported
    if got != exact:
        assert max(got - exact) < max(exact)


def test_state_round_trips_the_intervals() -> None:
    st_ = ReorderState(10)
    st_.missed.add(2, 4)
    st_.missed.add(6, 6)
    again = ReorderState.from_json(st_.to_json())
    assert list(again.missed) == [(2, 4), (6, 6)] and 3 in again.missed and 5 not in again.missed


def test_the_arrival_record_stays_bounded_under_the_merge_rule() -> None:
    """The reorderer notes when each batch arrived (for --max-delay); under the merge rule
    nothing read that note back, and it grew by an entry per poll (the soak benchmark's
    collector gained ~1.4 MiB a minute at 500 fps)."""
    r: Reorderer[int] = Reorderer(1000, 5.0)
    stream = Stream()
    for batch in range(20_000):
        uids = [2 * batch + 1, 2 * batch + 2]
        stream.high = uids[-1]
        r.set_frontier(frontier([stream]))
        r.push_many(uids, uids, now=float(batch))
        r.release(now=float(batch))
    assert r.stats.emitted == 40_000 and r.depth == 0
    assert len(r._arrivals) < 100
