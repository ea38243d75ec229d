"""Metadata channels (``-mc``): PVA and CA values joined to frames by timestamp."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pvaflow.bridge.bridge import Bridge, BridgeConfig
from pvaflow.bridge.cli import build_parser, config_from_args
from pvaflow.bridge.metadata import (
    ChannelSpec,
    MetadataChannel,
    MetadataCollector,
    MetadataJoin,
    Value,
    parse_final_metadata,
    parse_metadata_channels,
)
from pvaflow.bridge.stats import parse_final
from pvaflow.ops.simulator import SimServer, ca_loopback_env, sim_args

from pvaflow.codec import decode
from pvaflow.errors import ConfigError
from pvaflow.frame import EpicsTime, Frame
from pvaflow.plugin import PvaPyAdapter
from pvaflow.process import free_port
from tests.procs import wait_for

from .conftest import BridgeProcess, read_topic

BASE = 1_800_000_000


def stamp(t: float) -> EpicsTime:
    ns = round(t * 1e9)
    return EpicsTime(ns // 1_000_000_000, ns % 1_000_000_000, 0)


def frame_at(t: float, uid: int = 1) -> Frame:
    return Frame(np.zeros((2, 2), np.uint8), unique_id=uid, timestamp=stamp(t))


def value_at(t: float, value: float) -> Value:
    return Value(stamp(t).to_float(), value, "double", stamp(t), 8)


def joiner(tolerance: float, *specs: ChannelSpec, max_values: int = 1000) -> MetadataJoin:
    join = MetadataJoin.from_specs(specs or (ChannelSpec("pva", "m:x"),), tolerance, max_values)
    join.clock = lambda: 4e9  # frames are old by this clock: never wait in unit tests
    return join


# -- parsing and options ---------------------------------------------------------------------

def test_channel_urls_as_pvapy_reads_them() -> None:
    assert parse_metadata_channels(["pva://a:b,ca://c", "d"]) == [
        ChannelSpec("pva", "a:b"), ChannelSpec("ca", "c"), ChannelSpec("ca", "d")]
    assert parse_metadata_channels(None) == []
    with pytest.raises(ConfigError, match="pva://NAME"):
        parse_metadata_channels("http://x")
    with pytest.raises(ConfigError, match="twice"):
        parse_metadata_channels("pva://x,ca://x")


def test_cli_options_reach_the_config() -> None:
    args = build_parser().parse_args(
        ["-ic", "det:image", "-mc", "pva://m:1,ca://m:2", "--metadata-tolerance", "0.005",
         "--metadata-queue-size", "7"])
    config = config_from_args(args)
    assert config.metadata_channels == ["pva://m:1,ca://m:2"]
    assert (config.metadata_tolerance, config.metadata_queue_size) == (0.005, 7)
    bridge = Bridge(config)
    assert bridge.metadata is not None
    assert [c.spec.url for c in bridge.metadata.channels] == ["pva://m:1", "ca://m:2"]
    with pytest.raises(ConfigError, match="one --input-channel"):
        Bridge(BridgeConfig(["a", "b"], metadata_channels=["pva://m"]))


# -- the join ----------------------------------------------------------------------------------

def test_value_goes_to_the_nearest_frame_within_the_tolerance() -> None:
    join = joiner(0.010)
    ch = join.channels[0]
    for t, v in ((BASE + 0.000, 1.0), (BASE + 0.003, 2.0), (BASE + 0.098, 3.0),
                 (BASE + 0.150, 4.0), (BASE + 0.205, 5.0)):
        ch.put(value_at(t, v))
    frames = [frame_at(BASE + 0.001 + 0.1 * i, i + 1) for i in range(3)]
    for f in frames:
        join.join(f)
    # frame 1 (t+1 ms): 1.0 is 1 ms off, 2.0 2 ms: the nearer one wins, 2.0 stays queued
    assert frames[0].attribute("m:x") == 1.0
    # frame 2 (t+101 ms): 2.0 is 98 ms before it (outside), 3.0 is 3 ms off
    assert frames[1].attribute("m:x") == 3.0
    # frame 3 (t+201 ms): 4.0 is 51 ms off (outside), 5.0 4 ms off
    assert frames[2].attribute("m:x") == 5.0
    attr = frames[1].attributes[0]
    assert attr.timestamp == stamp(BASE + 0.098)
    assert (attr.source, attr.type) == ("pva://m:x", "double")
    # 2.0 (passed over for a nearer one) and 4.0 (no frame within 10 ms) are counted
    assert (ch.stats.matched, ch.stats.unmatched, ch.stats.queued) == (3, 2, 0)


def test_a_value_newer_than_the_frame_waits_for_the_next_frame() -> None:
    join = joiner(0.002)
    ch = join.channels[0]
    ch.put(value_at(BASE + 0.050, 7.0))
    first, second = frame_at(BASE, 1), frame_at(BASE + 0.0505, 2)
    join.join(first)
    join.join(second)
    assert first.attribute("m:x") is None
    assert second.attribute("m:x") == 7.0
    assert (ch.stats.matched, ch.stats.unmatched) == (1, 0)


def test_the_queue_is_bounded_and_evictions_are_counted() -> None:
    join = joiner(0.001, max_values=3)
    ch = join.channels[0]
    for i in range(10):
        ch.put(value_at(BASE + i, float(i)))
    assert (ch.stats.received, ch.stats.unmatched, ch.stats.queued) == (10, 7, 3)
    f = frame_at(BASE + 9)
    join.join(f)
    assert f.attribute("m:x") == 9.0
    assert (ch.stats.matched, ch.stats.unmatched) == (1, 9)
    small = MetadataChannel(ChannelSpec("ca", "big"), max_values=100, max_bytes=20)
    for i in range(5):
        small.put(value_at(BASE + i, float(i)))
    assert small.stats.queued == 2 and small.stats.unmatched == 3


def test_a_fresh_frame_waits_at_most_the_tolerance_for_a_late_value() -> None:
    join = MetadataJoin.from_specs([ChannelSpec("pva", "m:x")], 0.3)
    ch = join.channels[0]
    now = time.time()
    ch.put(value_at(now - 5, 0.0))  # the channel has delivered before: it is waited for
    f = frame_at(now)
    t0 = time.monotonic()
    join.join(f)
    waited = time.monotonic() - t0
    assert 0.1 < waited < 2.0
    assert f.attribute("m:x") is None and ch.stats.unmatched == 1


def test_stats_and_metrics_count_unmatched_per_channel() -> None:
    join = joiner(0.001, ChannelSpec("pva", "m:a"), ChannelSpec("ca", "m:b"))
    a, b = join.channels
    a.put(value_at(BASE, 1.0))
    b.put(value_at(BASE - 1, 2.0))
    join.join(frame_at(BASE))
    stats = join.stats()
    assert stats["metadata_unmatched"] == 1 and stats["metadata_matched"] == 1
    assert stats["metadata"]["m:b"]["metadata_unmatched"] == 1
    assert stats["metadata"]["m:a"]["metadata_unmatched"] == 0
    samples = {(s.name, s.labels.get("channel")): s.value
               for m in MetadataCollector(join).collect() for s in m.samples}
    assert samples[("pvaflow_bridge_metadata_unmatched_total", "m:b")] == 1
    assert samples[("pvaflow_bridge_metadata_matched_total", "m:a")] == 1
    bridge = Bridge(BridgeConfig(["det:image"]))
    assert bridge.stats()["metadata_unmatched"] == 0  # present without metadata channels


# -- PvaPy plugins: metadataQueueMap -----------------------------------------------------------

class PvaPyMetadataReader:
    """Reads metadata the PvaPy way (HpcAdMetadataProcessor): from metadataQueueMap."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.metadataQueueMap: dict[str, Any] = {}
        self.seen: list[tuple[str, float, float]] = []

    def process(self, pv: Any) -> Any:
        import pvaccess as pva

        for name, queue in self.metadataQueueMap.items():
            while True:
                try:
                    md = queue.get(0)
                except pva.QueueEmpty:
                    break
                ts = md["timeStamp"]
                self.seen.append((name, md["value"],
                                  ts["secondsPastEpoch"] + ts["nanoseconds"] * 1e-9))
        return pv

    def getStats(self) -> dict[str, Any]:
        return {}

    def resetStats(self) -> None:
        pass


def test_pvapy_plugin_reads_the_values_from_metadata_queue_map() -> None:
    join = joiner(0.001, ChannelSpec("pva", "m:a"), ChannelSpec("ca", "m:b"))
    join.channels[0].put(value_at(BASE, 1.5))
    join.channels[1].put(value_at(BASE + 0.0005, 2.5))
    f = frame_at(BASE)
    join.join(f)
    inner = PvaPyMetadataReader({})
    adapter = PvaPyAdapter(inner)
    [out] = adapter.process(f)
    assert sorted(inner.metadataQueueMap) == ["m:a", "m:b"]
    assert sorted((n, v) for n, v, _ in inner.seen) == [("m:a", 1.5), ("m:b", 2.5)]
    assert {n: t for n, _, t in inner.seen}["m:a"] == pytest.approx(BASE, abs=1e-6)
    assert out.attribute("m:a") == 1.5 and out.attribute("m:b") == 2.5


# -- the real thing: sim server -mpv, bridge CLI, Kafka -------------------------------------------

@pytest.fixture
def metadata_sim(tmp_path: Path, pva_env: dict[str, str],
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[SimServer, str, str]]:
    """A gated sim server updating a CA and a PVA metadata PV with each frame (CA settings in
    os.environ so that bridges started by the test find its embedded IOC)."""
    tag = uuid.uuid4().hex[:6]
    channel, ca, pv = f"md:{tag}:image", f"md:{tag}:ca", f"md:{tag}:pva"
    ca_env = ca_loopback_env()
    for k, v in ca_env.items():
        monkeypatch.setenv(k, v)
    args = sim_args(channel, nx=16, ny=16, fps=5, n_frames=4,
                    metadata_pvs=[f"ca://{ca}", f"pva://{pv}"], gated=True)
    server = SimServer(args, channel, {**pva_env, **ca_env}, tmp_path / "sim.log")
    server.start()
    try:
        yield server, ca, pv
    finally:
        server.stop()


def frames_of(bootstrap: str, topic: str) -> list[Frame]:
    return [decode(r.key, r.value, r.headers) for r in read_topic(bootstrap, topic, settle=2.0)]


def metric(port: int, name: str, channel: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + "{") and f'channel="{channel}"' in line:
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} for {channel}")


@pytest.mark.integration
def test_ca_and_pva_metadata_arrive_on_the_right_frames(
    metadata_sim: tuple[SimServer, str, str], bridge_process: Callable[..., BridgeProcess],
    kafka_bootstrap: str,
) -> None:
    server, ca, pv = metadata_sim
    channels = f"ca://{ca},pva://{pv}"
    topic_a, topic_b = f"t-md-a-{uuid.uuid4().hex[:8]}", f"t-md-b-{uuid.uuid4().hex[:8]}"
    port_b = free_port()
    # A: 20 ms, well under half the 200 ms frame period: each value has one frame in reach.
    a = bridge_process("-ic", server.channel, "-t", topic_a, "-mc", channels,
                       "--metadata-tolerance", "0.02")
    # B: zero tolerance. The sim server stamps the PVA value with the frame's own time and
    # puts the CA value a little before it: PVA values match exactly, CA values never do.
    b = bridge_process("-ic", server.channel, "-t", topic_b, "-mc", channels,
                       "--metadata-tolerance", "0", "--metrics-port", str(port_b))
    for p in (a, b):  # every channel of both bridges live before the first frame
        p.wait_for(f"channel {server.channel} connected", timeout=90)
        for url in (f"ca://{ca}", f"pva://{pv}"):  # a monitor's first value: the PV's own
            wait_for(lambda p=p, url=url: re.search(
                rf"metadata {re.escape(url)}: received [1-9]", p.stdout), 90, f"{url} monitored")
    server.release()
    for p in (a, b):
        p.wait_stats("delivered", 12, timeout=90)
    unmatched_metric = metric(port_b, "pvaflow_bridge_metadata_unmatched_total", ca)
    finals = {}
    for name, p in (("a", a), ("b", b)):
        code = p.interrupt()
        assert code == 0, p.stderr[-3000:]
        assert parse_final(p.stdout)[0]["delivered"] >= 12
        finals[name] = {m["channel"]: m for m in parse_final_metadata(p.stdout)}

    got_a = frames_of(kafka_bootstrap, topic_a)
    assert len(got_a) >= 12
    both = 0
    for f in got_a:
        tf = f.timestamp.to_float()
        attrs = {a.name: a for a in f.attributes}
        for name in (ca, pv):
            if name in attrs:  # the right frame: the value is stamped within 20 ms of it
                assert abs(attrs[name].timestamp.to_float() - tf) <= 0.02, (name, f)
                assert attrs[name].source in (f"ca://{ca}", f"pva://{pv}")
                assert isinstance(attrs[name].value, float)
        if pv in attrs:
            assert attrs[pv].timestamp == f.timestamp  # the value published with this frame
        both += ca in attrs and pv in attrs
    # every frame got both, bar start-up (a frame before a channel connected)
    assert both >= len(got_a) - 3, [(f.unique_id, f.attributes) for f in got_a]
    values = [f.attribute(pv) for f in got_a if f.attribute(pv) is not None]
    assert len(set(values)) == len(values)  # each value on one frame only
    fa = finals["a"]
    assert fa[pv]["metadata_matched"] >= len(got_a) - 3
    assert fa[ca]["metadata_unmatched"] <= 3 and fa[pv]["metadata_unmatched"] <= 3

    got_b = frames_of(kafka_bootstrap, topic_b)
    assert len(got_b) >= 12
    assert not any(f.attribute(ca) is not None for f in got_b)  # never within 0 s
    for f in got_b:
        attr = next((x for x in f.attributes if x.name == pv), None)
        if attr is not None:
            assert attr.timestamp == f.timestamp
    assert sum(f.attribute(pv) is not None for f in got_b) >= len(got_b) - 3
    fb = finals["b"]
    # every CA value found no frame within the tolerance: counted, not dropped silently
    assert fb[ca]["metadata_matched"] == 0
    assert fb[ca]["metadata_unmatched"] >= len(got_b) - 3
    assert fb[ca]["metadata_unmatched"] + fb[ca]["metadata_queued"] == fb[ca]["metadata_received"]
    assert unmatched_metric >= 10
    assert json.dumps(fb)  # plain data


def test_ca_env_points_the_embedded_ioc_at_the_dbd_files() -> None:
    env = ca_loopback_env(5999)
    assert env["EPICS_CA_SERVER_PORT"] == "5999"
    assert os.path.isfile(os.path.join(env["EPICS_DB_INCLUDE_PATH"], "base.dbd"))
