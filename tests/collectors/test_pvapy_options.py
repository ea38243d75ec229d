"""PvaPy's collector options on a real broker: -pid expands the input topic per producer,
-oo reorders ids that step by N without waiting for the ids in between."""

from __future__ import annotations

import json
import uuid

import pytest

from .helpers import ids_of, produce_frames, read_records, wait_for

pytestmark = pytest.mark.integration


def test_producer_id_list_and_oid_offset(kafka_bootstrap, make_topic, procs, ctl):  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:8]
    make_topic(name=f"t-pid-{tag}-1")
    make_topic(name=f"t-pid-{tag}-2")
    out = make_topic(suffix="ordered")
    # ids 1,3,5,...,39: producer 1 has 1,5,9,..., producer 2 has 3,7,11,...
    produce_frames(kafka_bootstrap, f"t-pid-{tag}-1", range(1, 40, 4))
    produce_frames(kafka_bootstrap, f"t-pid-{tag}-2", range(3, 40, 4))
    col = procs("collector", "pvaflow-collector", "-it", f"t-pid-{tag}-*", "-pid", "1,2",
                "-oo", "2", "--max-delay", "3", "--output-topic", out, "--group", f"g-{tag}",
                "-b", kafka_bootstrap, "--report-period", "1", *ctl)
    got = ids_of(read_records(kafka_bootstrap, out, lambda r: len(r) >= 20, 60))
    assert got == list(range(1, 40, 2))  # in order, with no wait for the even ids
    wait_for(lambda: "last uniqueId" in col.text(), 30, "a report")
    col.stop()
    line = [ln for ln in col.text().splitlines() if "final stats:" in ln][-1]
    stats = json.loads(line.split("final stats: ", 1)[1])
    assert stats["missed"] == 0 and stats["emitted"] == 20
    assert stats["last_emitted_unique_id"] == 39
