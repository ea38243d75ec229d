"""Pure pieces: ad00 round trip and its limits, topic naming, options, metrics exposition."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pvaflow.bridge import ad00
from pvaflow.bridge.bridge import ConfigError, assign_topics, default_topic
from pvaflow.bridge.cli import build_parser, config_from_args
from pvaflow.bridge.source import monitor_request
from pvaflow.bridge.stats import BridgeCollector, ChannelStats, final_json, parse_final

from pvaflow.codec import FrameError, decode_key
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
    assert c.overrides == [("linger.ms", "5")]
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
