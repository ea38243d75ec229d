"""Pure pieces: ad00 round trip and its limits, topic naming, options, metrics exposition."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pvaflow.bridge import ad00
from pvaflow.bridge.bridge import Bridge, ConfigError, assign_topics, default_topic
from pvaflow.bridge.cli import build_parser, config_from_args, run_options
from pvaflow.bridge.mirror import STATUS_SCHEMA as MIRROR_SCHEMA
from pvaflow.bridge.mirror import Mirror
from pvaflow.bridge.mirror_cli import build_parser as mirror_parser
from pvaflow.bridge.source import monitor_request
from pvaflow.bridge.stats import (
    STATUS_SCHEMA,
    BridgeCollector,
    ChannelStats,
    final_json,
    parse_final,
    totals,
)

from pvaflow.codec import FrameError, decode_key
from pvaflow.control import CONTROL_TOPIC, ComponentId
from pvaflow.errors import SchemaError
from pvaflow.frame import Attribute, Codec, EpicsTime, Frame


def test_ad00_round_trip_keeps_pixels_id_time_and_simple_attributes() -> None:
    arr = np.arange(12, dtype=np.uint16).reshape(3, 4)
    f = Frame(arr, unique_id=42, timestamp=EpicsTime(1700000000, 123, 0), source="sim:x",
              attributes=[Attribute("gain", 3, "int"), Attribute("name", "det", "string"),
                          Attribute("t", 1.5, "double")])
    key, value, headers = ad00.encode(f)
    assert decode_key(key) == 42 and ad00.is_ad00(value) and ("pf.fmt", b"ad00") in headers
    g = ad00.decode(value)
    assert g.array.tobytes() == arr.tobytes() and g.array.shape == (3, 4)
    assert g.array.dtype == np.uint16
    assert (g.unique_id, g.timestamp, g.source) == (42, f.timestamp, "sim:x")
    assert [(a.name, a.value) for a in g.attributes] == [("gain", 3), ("name", "det"),
                                                         ("t", 1.5)]
    assert g.attributes[0].type == "long"   # documented limit: PVA int widens to int64


def test_ad00_refuses_compressed_frames() -> None:
    f = Frame(np.zeros(10, np.uint8), codec=Codec("lz4", np.dtype(np.uint16), (4, 4), 32))
    with pytest.raises(FrameError, match="no codec field"):
        ad00.encode(f)


def test_topic_assignment() -> None:
    assert default_topic("13SIM1:Pva1:Image") == "13SIM1.Pva1.Image"
    assert assign_topics(["a:x", "b:y"], []) == ["a.x", "b.y"]
    assert assign_topics(["a", "b"], ["t1", "t2"]) == ["t1", "t2"]
    assert assign_topics(["a", "b"], ["t"], shared=True) == ["t", "t"]
    with pytest.raises(ConfigError, match="2 channels but 1 topics"):
        assign_topics(["a", "b"], ["t"])


def test_options_follow_pvapy_names() -> None:
    args = build_parser().parse_args([
        "--input-channel", "pvapy:image", "--server-queue-size", "1000",
        "--receiver-queue-size", "-1", "--distributor-updates", "3",
        "--distributor-sets", "A,B", "--partitions", "2", "-X", "linger.ms=5",
        "--distributor-first", "auto"])
    c = config_from_args(args)
    assert (c.updates, c.sets, c.partitions, c.first) == (3, ("A", "B"), 2, None)
    assert (c.server_queue_size, c.receiver_queue_size) == (1000, -1)
    assert args.kafka_overrides == [("linger.ms", "5")]
    assert monitor_request(1000) == "record[queueSize=1000]field()"
    assert monitor_request(0) == "field()"


def test_metrics_exposition_and_final_line() -> None:
    s = ChannelStats("pvapy:image", "frames", received=5, delivered=4)
    s.dropped["buffer_full"] = 1
    s.observe_latency(0.003)
    reg = CollectorRegistry()
    reg.register(BridgeCollector([s], lambda: 7))
    text = generate_latest(reg).decode()
    assert 'pvaflow_bridge_frames_received_total{channel="pvapy:image",component="bridge"' in text
    assert 'reason="buffer_full",topic="frames"} 1.0' in text
    assert "pvaflow_bridge_producer_queue_messages{component=\"bridge\"} 7.0" in text
    assert 'pvaflow_bridge_delivery_latency_seconds_bucket{channel="pvapy:image"' in text
    assert 'le="0.005",topic="frames"} 1.0' in text
    assert parse_final("x\n" + final_json([s]))[0]["dropped"] == 1


def test_short_forms_are_pvapy_s_and_none_means_two_things() -> None:
    args = build_parser().parse_args([
        "-ic", "a:x", "-ic", "b:y", "-t", "ta", "-t", "tb", "-sqs", "5", "-rqs", "-1",
        "-du", "4", "-id", "7", "--distributor-sets", "A,B"])
    c = config_from_args(args)
    assert (c.channels, c.topics, c.updates, c.bridge_id) == (["a:x", "b:y"], ["ta", "tb"],
                                                              4, "7")
    assert (c.server_queue_size, c.receiver_queue_size, c.sets) == (5, -1, ("A", "B"))
    for gone in (["-p", "2"], ["-ds", "A,B"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["-ic", "a:x", *gone])
    m = mirror_parser().parse_args(["-t", "frames", "-oc", "mirror:x", "-id", "m1"])
    assert (m.topic, m.output_channel, m.mirror_id) == ("frames", "mirror:x", "m1")


def test_control_is_off_unless_asked_and_one_topic_brings_the_other() -> None:
    off = run_options("pvaflow-bridge", build_parser().parse_args(["-ic", "a:x"]))
    assert (off.control_topic, off.status_topic) == (None, None)
    on = run_options("pvaflow-bridge", build_parser().parse_args(
        ["-ic", "a:x", "--status-topic", "my.status"]))
    assert (on.control_topic, on.status_topic) == (CONTROL_TOPIC, "my.status")


def test_the_real_stats_match_the_status_schemas() -> None:
    a, b = ChannelStats("a:x", "ta", received=5, delivered=4), ChannelStats("b:y", "tb")
    a.dropped["buffer_full"] = 1
    a.first_id, a.last_id, b.first_id, b.last_id = 3, 7, 1, 2
    total = totals([a, b])
    STATUS_SCHEMA.check(total)
    assert (total["received"], total["dropped"], total["first_id"], total["last_id"]) == (
        5, 1, 1, 7)
    renamed = {("gaps" if k == "missed" else k): v for k, v in total.items()}
    with pytest.raises(SchemaError, match="missed"):
        STATUS_SCHEMA.check(renamed)
    mirror = Mirror("frames", "mirror:x")
    mirror.counts.served = 2
    MIRROR_SCHEMA.check(mirror.stats())
    with pytest.raises(SchemaError, match="served"):
        MIRROR_SCHEMA.check({"shown" if k == "served" else k: v
                             for k, v in mirror.stats().items()})


def test_the_bridge_has_nothing_to_configure_and_resets_its_channels() -> None:
    bridge = Bridge(config_from_args(build_parser().parse_args(["-ic", "a:x"])))
    assert bridge.identity == ComponentId("bridge", "bridge", "1")
    bridge.channels[0].received = 3
    bridge.reset_stats()
    assert bridge.channels[0].received == 0
    with pytest.raises(ConfigError, match="nothing to configure"):
        bridge.configure({"x": 1})
    final = bridge.report(final=True)
    assert final.startswith("final bridge statistics a:x -> a.x")
    assert parse_final(final)[0]["channel"] == "a:x"


def test_client_queue_defaults_to_none_as_pvapy_and_an_unbounded_one_is_refused() -> None:
    c = config_from_args(build_parser().parse_args(["-ic", "a:x"]))
    assert (c.server_queue_size, c.receiver_queue_size) == (100, -1)
    with pytest.raises(ConfigError, match="without a limit"):
        Bridge(config_from_args(build_parser().parse_args(["-ic", "a:x", "-rqs", "0"])))
    Bridge(config_from_args(build_parser().parse_args(["-ic", "a:x", "-rqs", "500"])))
