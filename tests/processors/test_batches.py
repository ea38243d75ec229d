"""Batches (PvaPy's --accumulate-objects / --accumulation-timeout) and --skip-initial-updates
on a real broker: batch sizes, exact outputs and committed offsets."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, TopicPartition
from pvaflow.processors.cli import build_parser
from pvaflow.processors.runner import due

from pvaflow.frame import Attribute
from pvaflow.options import id_list
from pvaflow.plugin import Processor, load_processor, object_id, takes_batches
from pvaflow.testing import make_frames

from .conftest import HERE, Proc, feed, read_exactly, wait_for


def committed(bootstrap: str, group: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        [tp] = c.committed([TopicPartition(topic, 0)], timeout=10)
        return tp.offset
    finally:
        c.close()


def plugin_stat(proc: Proc, name: str) -> str | None:
    """The last reported value of the plugin's stat ``name``."""
    found = re.findall(rf"'{name}': '([^']*)'", proc.text())
    return found[-1] if found else None


# -- units -----------------------------------------------------------------------------------

def test_due_batches_and_pvapy_queue_release() -> None:
    # process_batch: whole batches, the rest only after the timeout
    assert due(20, 8, False, True) == [8, 8]
    assert due(4, 8, False, True) == []
    assert due(4, 8, True, True) == [4]
    assert due(17, 8, True, True) == [8, 8, 1]
    # PvaPy's queue: one leaves whenever N are queued; all of them after the timeout
    assert due(7, 8, False, False) == []
    assert due(8, 8, False, False) == [1]
    assert due(10, 8, False, False) == [1, 1, 1]
    assert due(5, 8, True, False) == [1] * 5
    assert due(0, 8, True, True) == []


def test_process_batch_is_optional() -> None:
    class One(Processor):
        pass

    class Many(Processor):
        def process_batch(self, frames):  # type: ignore[no-untyped-def]
            return frames[:1]

    frames = make_frames(3, (2, 2))
    assert not takes_batches(One()) and takes_batches(Many())
    assert [f.unique_id for f in One().process_batch(frames)] == [1, 2, 3]  # type: ignore[union-attr]


def test_pvapy_options_parse() -> None:
    args = build_parser().parse_args(
        ["-it", "t", "-ao", "8", "-at", "0.5", "-siu", "2", "-of", "frameNo", "-oo", "3",
         "-cid", "range(1,7,2)"])
    assert (args.accumulate_objects, args.accumulation_timeout) == (8, 0.5)
    assert (args.skip_initial_updates, args.oid_field, args.oid_offset) == (2, "frameNo", 3)
    assert args.consumer_id_list == [1, 3, 5]
    assert id_list("4, 5,9") == [4, 5, 9]
    for bad in ("x", "1,1", "range(3,3)"):
        with pytest.raises(Exception, match="id"):
            id_list(bad)


def test_object_id_from_an_attribute() -> None:
    [f] = make_frames(1, (2, 2), first_id=7)
    f.attributes.append(Attribute("frameNo", 42, "int"))
    assert object_id(f) == 7 and object_id(f, "frameNo") == 42
    assert object_id(f, "missing") is None


def test_pvapy_plugin_is_not_batched() -> None:
    plugin = load_processor(file=str(HERE / "pvapy_rotate_plugin.py"),
                            class_name="HpcAdImageProcessor")
    assert not takes_batches(plugin)


# -- on the broker -------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_batches_of_eight_then_a_partial_batch_after_the_timeout(
        kafka_bootstrap: str, make_topic: Callable[..., str], consumer: Callable[..., Proc],
        exactly_once: bool) -> None:
    src, out = make_topic(), make_topic(suffix="out")
    group = f"g-{uuid.uuid4().hex[:8]}"
    feed(kafka_bootstrap, src, make_frames(20, (4, 4)))
    c = consumer("--input-topic", src, "--output-topic", out, "--group", group,
                 "--processor", "batch_plugin:BatchRecorder", "-ao", "8", "-at", "2",
                 "--report-period", "0.5", "--runtime", "90",
                 *(["--exactly-once"] if exactly_once else []),
                 env={"PYTHONPATH": str(HERE)})
    got = read_exactly(kafka_bootstrap, out, 20, read_committed=exactly_once)
    assert sorted(r.uid for r in got) == list(range(1, 21))
    wait_for(lambda: committed(kafka_bootstrap, group, src) == 20, 60, "offset 20 committed")
    wait_for(lambda: plugin_stat(c, "sizes") == "8,8,4", 30, "batch sizes 8,8,4")
    # the partial batch waited for the timeout (no frame arrived after the 20th); a premature
    # one comes at once. The timeout runs from the 20th frame's arrival, a little before the
    # second batch's call, so the bound leaves the consumer a second of preemption
    gaps = [float(g) for g in (plugin_stat(c, "gaps") or "").split(",")]
    assert gaps[2] >= 1.0, gaps

    # more frames later: a partial batch again after the timeout, never a premature one
    feed(kafka_bootstrap, src, make_frames(3, (4, 4), first_id=21))
    got = read_exactly(kafka_bootstrap, out, 23, read_committed=exactly_once)
    assert sorted(r.uid for r in got) == list(range(1, 24))
    wait_for(lambda: committed(kafka_bootstrap, group, src) == 23, 60, "offset 23 committed")
    wait_for(lambda: plugin_stat(c, "sizes") == "8,8,4,3", 30, "batch sizes 8,8,4,3")
    assert c.stop() == 0
    assert "'batches': 4" in c.text() and "'processed': 23" in c.text()


@pytest.mark.integration
def test_pvapy_plugin_with_accumulation_gets_every_frame_in_order(
        kafka_bootstrap: str, make_topic: Callable[..., str],
        consumer: Callable[..., Proc]) -> None:
    src, out = make_topic(), make_topic(suffix="out")
    group = f"g-{uuid.uuid4().hex[:8]}"
    feed(kafka_bootstrap, src, make_frames(13, (6, 10), "uint16"))
    c = consumer("--input-topic", src, "--output-topic", out, "--group", group,
                 "--processor-file", str(HERE / "pvapy_rotate_plugin.py"),
                 "--processor-class", "HpcAdImageProcessor", "-ao", "5", "-at", "0.5",
                 "--runtime", "60", "--report-period", "1")
    got = read_exactly(kafka_bootstrap, out, 13)
    assert [r.uid for r in got] == list(range(1, 14))
    wait_for(lambda: committed(kafka_bootstrap, group, src) == 13, 60, "offset 13 committed")
    c.stop()


@pytest.mark.integration
def test_skip_initial_updates_skips_and_commits_the_first_frames(
        kafka_bootstrap: str, make_topic: Callable[..., str],
        consumer: Callable[..., Proc]) -> None:
    src, out = make_topic(), make_topic(suffix="out")
    group = f"g-{uuid.uuid4().hex[:8]}"
    feed(kafka_bootstrap, src, make_frames(12, (4, 4)))
    c = consumer("--input-topic", src, "--output-topic", out, "--group", group,
                 "--processor", "batch_plugin:BatchRecorder", "-siu", "5",
                 "--runtime", "60", "--report-period", "0.5", env={"PYTHONPATH": str(HERE)})
    got = read_exactly(kafka_bootstrap, out, 7)
    assert sorted(r.uid for r in got) == list(range(6, 13))
    wait_for(lambda: committed(kafka_bootstrap, group, src) == 12, 60, "offset 12 committed")
    wait_for(lambda: "'skipped': 5" in c.text(), 30, "5 skipped in the report")
    c.stop()
