"""pvaflow-monitor: stage aggregation (pure) and, against real components, totals that match
each component's own final stats and survive a monitor restart (Table changelog)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from pvaflow.ops.monitor import latest_from_messages, metrics_text, pipeline_view
from pvaflow.ops.status_cli import read_status_topic

from pvaflow.status import StatusSchema
from tests.collectors.helpers import PLUGIN, ctl, procs, produce_frames, wait_for  # noqa: F401

# What the wings declare next to their stats (the monitor itself knows none of these keys).
SCHEMAS = {
    "bridge": StatusSchema("bridge", "received", "delivered", {
        "source_gaps": "missed", "overruns": "overruns", "dropped": "dropped",
        "delivery_errors": "delivery_errors"}, extra=("produced", "in_flight")),
    "consumer": StatusSchema("consumer", "received", "processed", {
        "dlq": "dlq", "sequence_gaps": "sequence_gaps"}, extra=("errors", "outputs")),
    "collector": StatusSchema("collector", "received", "emitted", {
        "missed": "missed", "late": "late"}, extra=("duplicates", "cache_depth"),
        max_keys=("last_emitted_unique_id",)),
}


def status(kind, group, cid, t, final=False, schema=True, **stats):
    msg = {"v": 1, "type": "status", "component": f"{kind}/{group}/{cid}", "kind": kind,
           "group": group, "id": cid, "time": t, "stats": stats, "final": final}
    if schema and kind in SCHEMAS:
        msg["schema"] = SCHEMAS[kind].to_json()
    return msg


def test_view_sums_stages_and_losses_and_rates():
    msgs = [
        status("mirror", "m", "1", 0, received=7, processed=7),  # no schema: generic
        status("bridge", "bridge", "1", 0, received=100, delivered=98, missed=3, dropped=2),
        status("consumer", "g", "1", 0, received=40, processed=40, dlq=1, lag=5),
        status("consumer", "g", "1", 10, received=60, processed=59, dlq=1, lag=5),
        status("consumer", "g", "2", 10, final=True, received=38, processed=38, sequence_gaps=2),
        status("collector", "c", "1", 10, received=97, emitted=90, missed=4, late=1,
               duplicates=3, last_emitted_unique_id=90),
        status("collector", "c", "2", 10, received=0, emitted=0, last_emitted_unique_id=12),
    ]
    view = pipeline_view(latest_from_messages(msgs), now=12)
    stages = {s["stage"]: s for s in view["stages"]}
    assert [s["kind"] for s in view["stages"]] == ["bridge", "consumer", "collector", "mirror"]
    assert stages["bridge/bridge"]["lost"] == {
        "source_gaps": 3, "overruns": 0, "dropped": 2, "delivery_errors": 0}
    assert stages["bridge/bridge"]["extras"] == {"produced": 0, "in_flight": 0}
    assert (stages["mirror/m"]["frames_out"], stages["mirror/m"]["lost"]) == (7, {})
    g = stages["consumer/g"]
    assert (g["frames_in"], g["frames_out"], g["lost_total"], g["lag"]) == (98, 97, 3, 5)
    assert (g["running"], g["components"], g["rate_out"]) == (1, 2, 1.9)
    c = stages["collector/c"]
    assert (c["frames_out"], c["lost"], c["duplicates"]) == (90, {"missed": 4, "late": 1}, 3)
    assert c["extras"] == {"duplicates": 3, "cache_depth": 0, "last_emitted_unique_id": 90}
    assert view["lost_total"] == 5 + 3 + 5
    text = metrics_text(view).decode()
    assert 'pvaflow_stage_frames_lost_total{group="c",kind="collector",reason="missed",' \
           'stage="collector/c"} 4.0' in text


def test_the_schema_decides_what_counts_and_a_renamed_key_follows_it():
    renamed = StatusSchema("consumer", "got", "done", {"dead_letters": "dlq_count"})
    msgs = [dict(status("consumer", "g", "1", 0, got=1, done=1, dlq_count=0),
                 schema=renamed.to_json()),
            dict(status("consumer", "g", "1", 2, got=9, done=7, dlq_count=2),
                 schema=renamed.to_json())]
    (stage,) = pipeline_view(latest_from_messages(msgs), now=3)["stages"]
    assert (stage["frames_in"], stage["frames_out"]) == (9, 7)
    assert (stage["lost"], stage["lost_total"], stage["rate_in"]) == ({"dead_letters": 2}, 2, 4.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return json.load(r)
    except OSError:
        return None


def test_the_agent_takes_no_next_message_before_its_table_change_is_delivered():
    """A restarted monitor misses a change whose source offset was committed before the
    change reached the changelog; the agent's wait on the change's future is what prevents
    that (faust's own flush before a commit gives up after 0.1 s)."""
    from pvaflow.ops.monitor import _changelog_awaiting_table

    class Base:  # the one method the subclass builds on, as faust's Table has it
        def __init__(self) -> None:
            self.sent: list[asyncio.Future[None]] = []

        def send_changelog(self, *args, **kwargs):
            self.sent.append(asyncio.get_running_loop().create_future())
            return self.sent[-1]

    async def scenario() -> None:
        table = _changelog_awaiting_table(Base)()
        await table.changelog_written()  # nothing sent yet: nothing to wait for
        table.send_changelog(0, b"consumer/g/1", b"{}")
        waiter = asyncio.ensure_future(table.changelog_written())
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiter.done(), "returned before the changelog record was delivered"
        table.sent[0].set_result(None)
        await asyncio.wait_for(waiter, 5)

    asyncio.run(scenario())


def test_a_replayed_status_message_never_puts_an_older_total_over_a_newer_one():
    from pvaflow.ops.monitor import remember, replayed

    final = remember(None, status("consumer", "g", "1", 20, final=True, received=150), offset=9)
    assert final["offset"] == 9
    assert replayed(final, status("consumer", "g", "1", 18, received=17), 2)  # re-read
    assert replayed(final, status("consumer", "g", "1", 20, final=True, received=150), 9)
    assert not replayed(final, status("consumer", "g", "1", 21, received=3), 10)  # restarted
    # A status topic created again counts offsets from 0: newer messages are still taken.
    assert not replayed(final, status("consumer", "g", "1", 25, received=1), 0)
    # Entries from before offsets were kept, and the first message of a component.
    assert not replayed({"msg": {"time": 20}}, status("consumer", "g", "1", 1), 0)
    assert not replayed(None, status("consumer", "g", "1", 1), 0)


class _Consumer:
    """What the re-seek asks of faust's consumer (assignment, earliest offsets, seek)."""

    def __init__(self, assigned, earliest=0):
        self.assigned, self.earliest, self.seeks = set(assigned), earliest, []

    def assignment(self):
        return self.assigned

    async def earliest_offsets(self, *tps):
        return {tp: self.earliest for tp in tps}

    async def seek(self, tp, offset):
        self.seeks.append((tp.topic, tp.partition, offset))


def test_after_a_rebalance_the_monitor_seeks_the_status_topic_back_to_the_commit(monkeypatch):
    """faust empties its stream queues after it positioned the partitions, dropping what was
    fetched in between; the monitor seeks again once the rebalance has ended."""
    from aiokafka.errors import KafkaConnectionError
    from faust.types import TP
    from pvaflow.ops import monitor_resume

    from pvaflow.kafka.aio import AioSettings

    commits: dict = {}

    async def committed_offset(aio, group, topic):
        if commits.get("fail"):
            raise KafkaConnectionError("no broker")
        return commits.get((group, topic))

    monkeypatch.setattr(monitor_resume, "committed_offset", committed_offset)
    aio = AioSettings.from_config({"bootstrap.servers": "127.0.0.1:1"})
    sensor = monitor_resume.ReseekAfterRebalance(aio, "mon", "st")

    def reseek(consumer, rebalancing=False):
        app = type("App", (), {"consumer": consumer, "rebalancing": rebalancing})()
        return asyncio.run(sensor.reseek(app)), consumer.seeks

    assert reseek(_Consumer([TP("st", 0)], earliest=4)) == (4, [("st", 0, 4)])  # no commit
    commits[("mon", "st")] = 17
    assert reseek(_Consumer([TP("st", 0)], earliest=4)) == (17, [("st", 0, 17)])
    assert reseek(_Consumer([TP("other", 0)])) == (None, [])  # another monitor has it
    assert reseek(_Consumer([TP("st", 0)]), rebalancing=True) == (None, [])
    commits["fail"] = True
    assert reseek(_Consumer([TP("st", 0)])) == (None, [])  # logged; faust's position stays


@pytest.mark.integration
def test_committed_offset_reads_the_groups_commit_on_the_status_topic(
        kafka_bootstrap, make_topic):
    from confluent_kafka import Consumer, TopicPartition
    from pvaflow.ops.monitor_resume import committed_offset

    from pvaflow.kafka.aio import AioSettings

    topic, group = make_topic(1), f"mon-{uuid.uuid4().hex[:8]}"
    aio = AioSettings.from_config({"bootstrap.servers": kafka_bootstrap})
    assert asyncio.run(committed_offset(aio, group, topic)) is None
    produce_frames(kafka_bootstrap, topic, range(1, 8), partitions=1)
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    try:
        c.commit(offsets=[TopicPartition(topic, 0, 5)], asynchronous=False)
    finally:
        c.close()
    assert asyncio.run(committed_offset(aio, group, topic)) == 5


@pytest.mark.integration
def test_status_totals_match_final_stats_and_survive_monitor_restart(
        kafka_bootstrap, make_topic, procs, ctl):  # noqa: F811 (fixtures)
    from tests.collectors.test_collector_kafka import collector

    frames, processed, ordered = make_topic(4), make_topic(4), make_topic(1)
    status_topic, port, app_id = ctl[3], _free_port(), f"mon-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{port}"
    mon_args = ("pvaflow-monitor", "-b", kafka_bootstrap, "--status-topic", status_topic,
                "--app-id", app_id, "--web-port", str(port))
    mon = procs("monitor", *mon_args)
    for cid in ("1", "2"):
        procs(f"consumer{cid}", "pvaflow-consumer", "--input-topic", frames, "--output-topic",
              processed, "--group", "g", "--consumer-id", cid, "--processor-file", PLUGIN,
              "--processor-class", "Jitter", "--report-period", "1", "-b", kafka_bootstrap,
              *ctl)
    collector(procs, kafka_bootstrap, processed, ordered, f"g-{ordered}", ctl, "--max-delay", "10")
    produce_frames(kafka_bootstrap, frames, range(1, 301), partitions=4)
    wait_for(lambda: (_get(url + "/status") or {}).get("stages") and any(
        s["kind"] == "collector" and s["frames_out"] == 300
        for s in _get(url + "/status")["stages"]), 120, "collector total in the monitor")
    assert not Path(f"{app_id}-data").exists(), "faust's app dir belongs in <tmp>, not the cwd"
    for p in reversed(procs.started[1:]):  # components first, the monitor last
        assert p.stop() == 0
    finals = {m["component"]: m["stats"] for m in read_status_topic(status_topic, kafka_bootstrap)
              if m.get("type") == "status" and m.get("final")}
    assert len(finals) == 3

    def totals(view):
        return {s["stage"]: (s["frames_in"], s["frames_out"], s["lost_total"])
                for s in view["stages"]}

    expected = {
        "consumer/g": (sum(finals[f"consumer/g/{i}"]["received"] for i in "12"),
                       sum(finals[f"consumer/g/{i}"]["processed"] for i in "12"), 0),
        f"collector/g-{ordered}": (300, 300, 0),
    }
    wait_for(lambda: totals(_get(url + "/status") or {"stages": []}) == expected, 30,
             "final totals in the monitor")
    mon.kill()  # SIGKILL: only the changelog can bring the table back
    mon.wait()
    mon2 = procs("monitor2", *mon_args)

    def recovered() -> bool:  # the table fills in while the changelog replays
        view = _get(url + "/status") or {"stages": [], "components": []}
        states = [c["state"] for c in view["components"]]
        return totals(view) == expected and states == ["stopped"] * 3

    assert wait_for(recovered, 120, "totals and stopped states after the monitor restart",
                    logs=[mon2])
    # What an operator types: `pvaflow status` as JSON and as the table.
    cli = [sys.executable, "-m", "pvaflow.cli", "status", "--monitor", url]
    out = subprocess.run([*cli, "--json"], capture_output=True, text=True, timeout=60, check=True)
    assert totals(json.loads(out.stdout)) == expected
    table = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=True).stdout
    for stage, (n_in, n_out, lost) in expected.items():
        row = next(line.split() for line in table.splitlines() if line.startswith(stage + " "))
        assert row[2:5] == [f"{n_in:,}", f"{n_out:,}", str(lost)], table


@pytest.mark.integration
def test_monitor_with_x_settings_serves_schema_driven_stages(
        kafka_bootstrap, procs, ctl):  # noqa: F811 (fixtures)
    """No wing needed: status messages (with their schema) produced straight to the status
    topic, a monitor started with -X settings (which now reach its clients) shows them."""
    from pvaflow.kafka.client import Kafka

    status_topic, port, app_id = ctl[3], _free_port(), f"mon-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{port}"
    mon = procs("monitor", "pvaflow-monitor", "-b", kafka_bootstrap, "--status-topic",
                status_topic, "--app-id", app_id, "--web-port", str(port),
                "-X", "security.protocol=PLAINTEXT", "-X", "client.id=mon-test",
                "-X", "linger.ms=1")
    wait_for(lambda: _get(url + "/status") is not None or mon.poll() is not None, 120,
             "the monitor's web server")
    assert mon.poll() is None, mon.text()
    producer = Kafka(kafka_bootstrap).producer()
    for t, stats in ((time.time() - 2, {"received": 4, "emitted": 3, "missed": 1, "late": 0,
                                        "duplicates": 0, "cache_depth": 1,
                                        "last_emitted_unique_id": 3}),
                     (time.time(), {"received": 10, "emitted": 9, "missed": 1, "late": 0,
                                    "duplicates": 2, "cache_depth": 0,
                                    "last_emitted_unique_id": 9})):
        msg = status("collector", "c", "1", t, **stats)
        producer.produce(status_topic, key=b"collector/c/1", value=json.dumps(msg).encode())
    producer.flush(30)

    def stage() -> dict | None:
        view = _get(url + "/status") or {"stages": []}
        return next((s for s in view["stages"] if s["frames_out"] == 9), None)

    s = wait_for(stage, 120, "the collector stage in the monitor")
    assert (s["stage"], s["frames_in"], s["lost"]) == ("collector/c", 10, {"missed": 1,
                                                                          "late": 0})
    assert s["extras"]["last_emitted_unique_id"] == 9 and s["duplicates"] == 2
    assert "-X settings do not apply" not in mon.text()
    assert mon.stop() == 0, mon.text()


@pytest.mark.integration
def test_a_restarted_monitor_shows_the_final_status_sent_while_it_was_down(
        kafka_bootstrap, procs, ctl):  # noqa: F811 (fixtures)
    """A component that stopped while the monitor was down sends no other status: the
    restarted monitor must read its final one, whatever faust drops while it rebalances."""
    from pvaflow.kafka.client import Kafka

    status_topic, port, app_id = ctl[3], _free_port(), f"mon-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{port}"
    mon_args = ("pvaflow-monitor", "-b", kafka_bootstrap, "--status-topic", status_topic,
                "--app-id", app_id, "--web-port", str(port))
    producer = Kafka(kafka_bootstrap).producer()

    def send(t: float, final: bool, received: int) -> None:
        msg = status("consumer", "g", "1", t, final=final, received=received,
                     processed=received)
        producer.produce(status_topic, key=b"consumer/g/1", value=json.dumps(msg).encode())
        producer.flush(30)

    def consumer_stage() -> tuple | None:
        view = _get(url + "/status") or {"stages": [], "components": []}
        return next(((s["frames_out"], [c["state"] for c in view["components"]])
                     for s in view["stages"] if s["stage"] == "consumer/g"), None)

    mon = procs("monitor", *mon_args)
    t0 = time.time()
    for i in range(12):  # enough that a restart fetches some in one batch
        send(t0 - 12 + i, False, 10 * i)
    wait_for(lambda: consumer_stage() == (110, ["running"]), 120,
             "the running consumer in the monitor", logs=[mon])
    mon.kill()
    mon.wait()
    send(time.time(), True, 150)  # the component stops while no monitor runs
    mon2 = procs("monitor2", *mon_args)
    wait_for(lambda: consumer_stage() == (150, ["stopped"]), 120,
             "the final status after the monitor restart", logs=[mon2])
    assert mon2.stop() == 0, mon2.text()
    assert "\x1b[" not in mon.text() + mon2.text(), "terminal escapes in the monitor's log"
