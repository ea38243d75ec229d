"""One component of a running pipeline is SIGKILLed mid-stream and restarted with the same
command line; the stream then finishes and every stage's account must still be exact.

The pipeline is real, on the session broker: ``pvapy-ad-sim-server`` (64x64 frames, a few
thousand at ~100 fps) -> ``pvaflow bridge`` (2 partitions) -> ``pvaflow consumer`` (two members
of one group, passthrough; at-least-once or ``--exactly-once``) -> ``pvaflow collector``
(ordered output topic, always transactional) and, for the monitor case, ``pvaflow monitor``.
The kill comes once ordered output is flowing (and, for the consumer case, once the victim
holds a partition); the restart follows as soon as the victim is gone.

The account, from each component's status (the final one; for a killed run, the last one it
published before the kill) and from the topics themselves:

* bridge: received = delivered + counted drops, per run. A killed bridge run never reports
  again; the restarted one counts every uniqueId before its first frame as missed
  (``missed_at_start``, the bridge's ``--distributor-first`` is 1): the ids the source
  published while no bridge ran, and those the killed run received but never got
  acknowledged, are inside that start gap. So every id the sim server published is either in
  the frames topic or counted missed/dropped by the bridge run that followed it.
* consumers: every frame of the frames topic is processed at least once (the processed topic
  holds each of its uniqueIds); with ``--exactly-once`` each is visible exactly once to a
  read_committed reader.
* collector: emitted + counted missed = the ids sent (per run; a killed collector's last
  committed id is where its successor resumes); the ordered topic (read_committed) holds each
  uniqueId the bridge delivered once, in increasing order.

Victims x modes (the mode is the consumers'): the monitor only reads the status topic, so it
runs in one mode; the bridge and the collector are the same programs in both modes, but what
their successors see downstream differs (duplicates in the processed topic, transactions), so
both modes are kept. Each case prints one ``component-kill account:`` JSON line.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from pvaflow.ops.monitor import latest_from_messages, pipeline_view

from pvaflow.kafka.client import Kafka
from pvaflow.kafka.topics import read_partition

from .conftest import Proc, kill_hard, latest_status, read_uids, status_messages, wait_for

log = logging.getLogger(__name__)

FPS = 100
SESSION_TIMEOUT_MS = 10_000
# Every case runs the collector with its default --max-delay and cache size: a killed
# consumer's partitions stall until the group notices the dead member (session.timeout.ms,
# longer than that delay), and the collector must hold the other streams back rather than
# give the stalled frames up. Except the monitor case: its processed topic has one partition,
# so both consumers' outputs mix there and the collector can only wait --max-delay for an id
# (docs/collector.md), the first ids too while the consumers join; on a loaded machine that
# takes more than the default 5 s.
MIXED_MAX_DELAY = 30
# The stream must outlast the start, the kill and the restart; a restarted monitor (faust)
# takes a while to serve again and should do so mid-stream; the consumer case waits for the
# victim to have processed frames before the kill.
STREAM_AFTER_FIRST_OUTPUT = 45  # seconds
EXTRA_STREAM = {"monitor": 20, "consumer": 20}
BOUND = 240.0

CASES = [
    pytest.param("bridge", "at-least-once", id="bridge-alo"),
    pytest.param("bridge", "exactly-once", id="bridge-eos"),
    pytest.param("consumer", "at-least-once", id="consumer-alo"),
    pytest.param("consumer", "exactly-once", id="consumer-eos"),
    pytest.param("collector", "at-least-once", id="collector-alo"),
    pytest.param("collector", "exactly-once", id="collector-eos"),
    pytest.param("monitor", "at-least-once", id="monitor"),
]


def _last_int(text: str, pattern: str) -> int:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)
    except (OSError, ValueError):
        return None


@dataclass
class Pipeline:
    """The command lines of one pipeline, its processes by name, and when each was killed."""

    run: Callable[..., Proc]
    commands: dict[str, list[str]] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)
    stopped: dict[str, Proc] = field(default_factory=dict)
    every: list[Proc] = field(default_factory=list)  # every process started, restarts too
    restarts: dict[str, int] = field(default_factory=dict)
    killed_at: dict[str, float] = field(default_factory=dict)  # wall clock

    def start(self, name: str, *cmd: str) -> Proc:
        self.commands[name] = list(cmd)
        self.procs[name] = self.run(name, *cmd)
        self.every.append(self.procs[name])
        return self.procs[name]

    def alive(self) -> None:
        for name, p in self.procs.items():
            assert p.poll() is None, f"{name} exited {p.poll()}:\n{p.text()[-4000:]}"

    def kill_and_restart(self, name: str) -> Proc:
        victim = self.procs[name]
        self.killed_at[name] = time.time()
        rc = kill_hard(victim)
        assert rc == -9, f"{name} exited {rc} before the kill:\n{victim.text()[-3000:]}"
        n = self.restarts[name] = self.restarts.get(name, 0) + 1
        self.procs[name] = self.run(f"{name}-restart{n}", *self.commands[name])
        self.every.append(self.procs[name])
        return self.procs[name]

    def stop(self, name: str) -> None:
        p = self.stopped[name] = self.procs.pop(name)
        rc = p.stop(90)
        assert rc == 0, f"{name} exited {rc}:\n{p.text()[-4000:]}"


@pytest.mark.timeout(480)
@pytest.mark.parametrize(("victim", "mode"), CASES)
def test_component_killed_mid_stream_and_restarted_keeps_an_exact_account(
        victim: str, mode: str, kafka_bootstrap: str, make_topic: Callable[..., str],
        sim_server: Callable[..., Any], run: Callable[..., Proc], tag: str) -> None:
    boot = kafka_bootstrap
    t_case = time.monotonic()
    eos = mode == "exactly-once"
    frames_total = FPS * (STREAM_AFTER_FIRST_OUTPUT + EXTRA_STREAM.get(victim, 0))
    # Output partition = input partition (what the consumers create by default); the monitor
    # case keeps the processed topic at one partition, where both consumers' outputs mix and
    # the collector must fall back to --max-delay for that stream and still lose nothing.
    frames = make_topic(2, suffix="frames")
    processed_partitions = 1 if victim == "monitor" else 2
    processed = make_topic(processed_partitions, suffix="processed")
    ordered, status = make_topic(1, suffix="ordered"), make_topic(1, suffix="status")
    control, state = make_topic(1, suffix="control"), make_topic(
        1, suffix="state", config={"cleanup.policy": "compact"})
    common = ["-b", boot, "--report-period", "1", "--control-topic", control,
              "--status-topic", status]
    p = Pipeline(run)
    sim = sim_server(nx=64, ny=64, fps=FPS, total_frames=frames_total, start_delay=10.0,
                     ready_timeout=60)

    p.start("collector", "pvaflow", "collector", "--input-topic", processed,
            "--output-topic", ordered, "--group", f"gc-{tag}", "--state-topic", state,
            *(["--max-delay", str(MIXED_MAX_DELAY)] if victim == "monitor" else []), *common)
    consumer = ["pvaflow", "consumer", "--input-topic", frames, "--output-topic", processed,
                "--processor", "passthrough", "--group", f"gp-{tag}",
                "-X", f"session.timeout.ms={SESSION_TIMEOUT_MS}",
                *(["--exactly-once"] if eos else []), *common]
    if victim == "consumer":  # two processes, so that exactly one can be killed
        p.start("consumer1", *consumer, "--consumer-id", "1")
        p.start("consumer2", *consumer, "--consumer-id", "2")
    else:
        p.start("consumers", *consumer, "--n-consumers", "2")
    url = ""
    if victim == "monitor":
        port, app_id = _free_port(), f"mon-{tag}"
        url = f"http://127.0.0.1:{port}/status"
        p.start("monitor", "pvaflow", "monitor", "-b", boot, "--status-topic", status,
                "--app-id", app_id, "--web-port", str(port))
    p.start("bridge", "pvaflow", "bridge", "--input-channel", sim.channel, "--topic", frames,
            "--partitions", "2", *common)

    # -- the stream flows end to end (ordered output committed) before the fault -----------
    # The triggers read the components' own periodic reports (their logs) first: cheap on a
    # loaded machine, where a status-topic read per poll made the kill come too late.
    def flowing() -> bool:  # counted by the collector and committed in the topic
        p.alive()
        emitted = _last_int(p.procs["collector"].text(), r" emitted (\d+) ")
        return emitted >= 100 and len(read_uids(
            boot, ordered, 1, timeout=10, until=lambda ids: len(ids) >= 100)) >= 100

    phases: dict[str, float] = {}

    def mark(what: str) -> None:  # seconds since the case began, for the account
        phases[what] = round(time.monotonic() - t_case, 1)

    wait_for(flowing, BOUND, "100 ordered frames before the fault", every=1.0)
    mark("output_flowing")
    if victim == "consumer":  # the victim holds a partition and has processed frames
        wait_for(lambda: _last_int(p.procs["consumer2"].text(), r"'processed': (\d+)") > 0,
                 BOUND, "consumer 2 processing", every=1.0)
    if victim == "monitor":
        wait_for(lambda: (_get_json(url) or {}).get("stages"), BOUND, "the monitor's /status")
    assert sim.is_running(), \
        f"the stream ended before the fault ({phases}): slow start, raise the frames"

    name = "consumer2" if victim == "consumer" else victim
    log.info("killing %s", name)
    mark("killed")
    p.kill_and_restart(name)
    fault_during_stream = sim.is_running()
    if victim == "monitor":  # serves /status again, with the components the table held
        wait_for(lambda: len((_get_json(url) or {}).get("components", [])) >= 4, BOUND,
                 "the restarted monitor's /status")
        monitor_back_during_stream = sim.is_running()
        mark("monitor_serving_again")

    # -- the source publishes its last frame; the bridge delivers everything -------------
    wait_for(lambda: not sim.is_running(), BOUND, "the sim server to publish every frame")
    mark("stream_ended")
    t_end = time.time()
    p.alive()

    def bridge_idle() -> bool:
        p.alive()
        st = latest_status(boot, status, "bridge", tail=50)
        if st is None or st["time"] < time.time() - 3:
            return False
        s = st["stats"]
        # the last frame seen (or, if it never arrives, long enough after the end)
        return bool(s["in_flight"] == 0
                    and (s.get("last_id") == frames_total or time.time() - t_end > 20)
                    and s["received"] == s["delivered"] + s["dropped"] + s["delivery_errors"])

    wait_for(bridge_idle, BOUND, "the bridge to have delivered the last frame", every=1.0)
    p.stop("bridge")
    sent = read_uids(boot, frames, 2, timeout=BOUND)
    sent_set = set(sent)
    wait_for(lambda: set(read_uids(boot, ordered, 1, timeout=60)) >= sent_set, BOUND,
             "every delivered frame in the ordered topic", every=2.0)
    p.alive()
    for n in [k for k in p.procs if k.startswith("consumer")]:
        p.stop(n)
    p.stop("collector")

    out = read_uids(boot, ordered, 1, timeout=BOUND)
    done = read_uids(boot, processed, processed_partitions, timeout=BOUND)
    msgs = status_messages(status, boot)
    finals = {m["component"]: m for m in msgs if m.get("final")}

    if victim == "monitor":
        _check_monitor(p, url, msgs, finals, app_id, boot)

    acct: dict[str, Any] = {"case": f"{victim}/{mode}", "frames_published": frames_total,
                            "fault_during_stream": fault_during_stream}
    if victim == "monitor":
        acct["monitor_back_during_stream"] = monitor_back_during_stream
    acct["bridge"] = _bridge_account(victim, p, boot, status, finals, sent, frames_total)
    acct["consumers"] = _consumer_account(victim, p, boot, status, finals, sent_set, done, eos)
    acct["collector"] = _collector_account(victim, p, boot, status, finals, sent_set, out)
    acct["phases"] = phases
    acct["seconds"] = round(time.monotonic() - t_case, 1)
    print("component-kill account:", json.dumps(acct))
    log.info("component-kill account: %s", json.dumps(acct))
    assert fault_during_stream, "the stream ended before the restart: raise the frames"
    for proc in p.every:
        assert "Traceback" not in proc.text(), proc.name


# -- per-stage accounts ------------------------------------------------------------------------

BRIDGE_KEYS = ("received", "delivered", "dropped", "delivery_errors", "missed",
               "missed_at_start", "duplicates", "in_flight", "first_id", "last_id")


def _one(finals: dict[str, dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [m for m in finals.values() if m["kind"] == kind]
    assert len(found) == 1, f"final status of {kind}: {sorted(finals)}"
    return found[0]


def _bridge_account(victim: str, p: Pipeline, boot: str, status: str,
                    finals: dict[str, dict[str, Any]], sent: list[int],
                    published: int) -> dict[str, Any]:
    b = _one(finals, "bridge")["stats"]
    sent_set = set(sent)
    acct: dict[str, Any] = {"final": {k: b.get(k) for k in BRIDGE_KEYS},
                            "frames_topic": {"records": len(sent), "unique": len(sent_set)}}
    # each run: everything it received is delivered or counted dropped
    assert b["received"] == b["delivered"] + b["dropped"] + b["delivery_errors"], acct
    assert len(sent) == len(sent_set), "a uniqueId twice in the frames topic"
    # the (last) run saw the stream to its end: every id up to it received or counted missed
    assert b["last_id"] == published, acct
    assert b["received"] + b["missed"] == published, acct
    not_in_topic = set(range(1, published + 1)) - sent_set
    if victim != "bridge":
        # one run: every published id is in the topic, or counted missed or dropped
        assert b["delivered"] == len(sent_set), acct
        assert len(not_in_topic) == b["missed"] + b["dropped"] + b["delivery_errors"], acct
        acct["unaccounted"] = 0
        return acct
    killed = latest_status(boot, status, "bridge", before=p.killed_at["bridge"], tail=None)
    assert killed is not None, "no status from the killed bridge"
    k = killed["stats"]
    first2 = b["first_id"]
    run1 = [u for u in sent if u < first2]
    run1_max = max(run1, default=0)
    acct["killed_run_last_status"] = {key: k.get(key) for key in BRIDGE_KEYS}
    acct["killed_run_in_topic"] = {"records": len(run1), "first": min(run1, default=None),
                                   "last": run1_max}
    # received by the killed run after its last status or never acknowledged, plus published
    # while no bridge ran: between its last delivered id and its successor's first frame
    acct["gap_while_down"] = first2 - run1_max - 1
    acct["holes_in_killed_run"] = run1_max - len(run1) - (min(run1, default=1) - 1)
    # what the killed run said was delivered is in the topic
    assert len(run1) >= k["delivered"], acct
    # the restarted run: its start gap covers every id before its first frame ...
    assert b["missed_at_start"] == first2 - 1, acct
    # ... and after it, every id is delivered (in the topic) or counted
    after = [u for u in not_in_topic if u >= first2]
    assert b["delivered"] == len([u for u in sent if u >= first2]), acct
    assert len(after) == b["missed"] - b["missed_at_start"] + b["dropped"] \
        + b["delivery_errors"], acct
    # across both runs: published = delivered by the killed run + the successor's start gap
    # not in the topic + the successor's received + its later misses
    total = (len(run1) + (b["missed_at_start"] - len(run1)) + b["received"]
             + (b["missed"] - b["missed_at_start"]))
    acct["unaccounted"] = published - total
    assert total == published, acct
    return acct


CONSUMER_KEYS = ("received", "processed", "dlq", "errors", "sequence_gaps",
                 "sequence_repeats")


def _consumer_account(victim: str, p: Pipeline, boot: str, status: str,
                      finals: dict[str, dict[str, Any]], sent_set: set[int], done: list[int],
                      eos: bool) -> dict[str, Any]:
    cons = {c: m["stats"] for c, m in finals.items() if m["kind"] == "consumer"}
    assert len(cons) == 2, sorted(finals)
    counts = Counter(done)
    acct: dict[str, Any] = {
        "finals": {c: {k: s.get(k) for k in CONSUMER_KEYS} for c, s in sorted(cons.items())},
        "processed_topic": {"records": len(done), "unique": len(counts),
                            "twice_or_more": sum(1 for n in counts.values() if n > 1)}}
    if victim == "consumer":
        killed = latest_status(boot, status, f"consumer/{_group(cons)}/2",
                               before=p.killed_at["consumer2"], tail=None)
        assert killed is not None, "no status from the killed consumer"
        acct["killed_run_last_status"] = {k: killed["stats"].get(k) for k in CONSUMER_KEYS}
    for s in cons.values():
        assert s["received"] == s["processed"] + s["dlq"] + s.get("skipped", 0), acct
        assert s["dlq"] == 0, acct
        if victim != "consumer":
            # nobody re-read a partition: each bridge run's numbers arrived once, in order
            # (a restarted bridge numbers from 0 again, under a new session)
            assert s["sequence_gaps"] == 0 and s["sequence_repeats"] == 0, acct
    # at-least-once: every frame of the frames topic processed
    missing = sent_set - set(counts)
    assert not missing, f"{len(missing)} frames never processed: {sorted(missing)[:20]}"
    assert set(counts) == sent_set, "processed ids the bridge never delivered"
    if eos:  # each output visible once to read_committed readers
        assert acct["processed_topic"]["twice_or_more"] == 0, acct
    return acct


def _group(cons: dict[str, Any]) -> str:
    return next(iter(cons)).split("/")[1]


COLLECTOR_KEYS = ("received", "emitted", "missed", "late", "duplicates", "replayed", "dlq",
                  "last_emitted_unique_id")


def _collector_account(victim: str, p: Pipeline, boot: str, status: str,
                       finals: dict[str, dict[str, Any]], sent_set: set[int],
                       out: list[int]) -> dict[str, Any]:
    c = _one(finals, "collector")["stats"]
    first, last = min(sent_set), max(sent_set)
    acct: dict[str, Any] = {"final": {k: c.get(k) for k in COLLECTOR_KEYS},
                            "ordered_topic": {"records": len(out), "unique": len(set(out)),
                                              "first": out[0] if out else None,
                                              "last": out[-1] if out else None}}
    # the ordered topic: each delivered id once, in increasing order, nothing else
    assert [u for u, n in Counter(out).items() if n > 1] == [], "a uniqueId twice"
    assert out == sorted(sent_set), "ordered output differs from what the bridge delivered"
    assert c["late"] == 0 and c["dlq"] == 0, acct
    if victim != "collector":
        assert c["emitted"] == len(out), acct
        assert c["emitted"] + c["missed"] == last - first + 1, acct
        return acct
    # the restarted run resumed after the last id its killed predecessor committed
    text = p.stopped["collector"].text()
    found = re.findall(r"resumes after uniqueId (\d+|None)", text)
    assert found and found[-1] != "None", text[-3000:]
    resume = int(found[-1])
    killed = latest_status(boot, status, "collector", before=p.killed_at["collector"],
                           tail=None)
    assert killed is not None, "no status from the killed collector"
    run1 = [u for u in out if u <= resume]
    acct["resumed_after"] = resume
    acct["killed_run_last_status"] = {k: killed["stats"].get(k) for k in COLLECTOR_KEYS}
    acct["killed_run_committed"] = {"emitted": len(run1),
                                    "missed": resume - first + 1 - len(run1)}
    # the restarted run: emitted + missed = the ids after the resume point
    assert c["emitted"] == len(out) - len(run1), acct
    assert c["emitted"] + c["missed"] == last - resume, acct
    # both runs together: every id sent, first to last
    assert (len(run1) + acct["killed_run_committed"]["missed"] + c["emitted"] + c["missed"]
            == last - first + 1), acct
    return acct


# -- the monitor -------------------------------------------------------------------------------

def _check_monitor(p: Pipeline, url: str, msgs: list[dict[str, Any]],
                   finals: dict[str, dict[str, Any]], app_id: str, boot: str) -> None:
    """The restarted monitor's totals are those of the components' final statuses (the same
    view computed straight from the status topic), and its table is kept in a compacted
    changelog topic holding every component."""
    expected = _totals(pipeline_view(latest_from_messages(msgs)))
    assert len(finals) == 4, sorted(finals)

    def matches() -> bool:
        view = _get_json(url) or {"stages": [], "components": []}
        states = {c["component"]: c["state"] for c in view["components"]}
        return _totals(view) == expected and states == dict.fromkeys(finals, "stopped")

    wait_for(matches, BOUND, f"the monitor's totals {expected}", every=1.0)
    by_kind = {s["kind"]: s for s in _get_json(url)["stages"]}
    fs = {m["kind"]: m["stats"] for m in finals.values() if m["kind"] != "consumer"}
    assert by_kind["bridge"]["frames_out"] == fs["bridge"]["delivered"]
    assert by_kind["collector"]["frames_out"] == fs["collector"]["emitted"]
    assert by_kind["consumer"]["frames_out"] == sum(
        m["stats"]["processed"] for m in finals.values() if m["kind"] == "consumer")
    changelog = f"{app_id}-latest-changelog"
    from confluent_kafka.admin import ConfigResource

    admin = Kafka(boot).admin()
    res = ConfigResource(ConfigResource.Type.TOPIC, changelog)
    conf = admin.describe_configs([res])[res].result(30)
    assert conf["cleanup.policy"].value == "compact"
    records, complete = read_partition(changelog, Kafka(boot), timeout=30)
    assert complete
    keys = {json.loads(k) if k else None for k, _v in records}
    assert set(finals) <= keys, (sorted(finals), sorted(map(str, keys)))
    p.stop("monitor")


def _totals(view: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {s["stage"]: (s["components"], s["frames_in"], s["frames_out"], s["lost_total"])
            for s in view.get("stages", [])}
