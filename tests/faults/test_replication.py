"""Topic replication from options, and the producer settings every component really gets.

On the single development broker (``default.replication.factor`` 1) the defaults give
replication factor 1 and ``min.insync.replicas`` 1; an explicit factor the cluster cannot
meet is one line naming the cause. (The 3-broker defaults are checked in
``test_leader_kill.py``, beside the cluster that module starts.)
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from pvaflow.errors import TopicError
from pvaflow.kafka.settings import PRODUCER_DEFAULTS
from pvaflow.kafka.topics import Replication, ensure_topic
from pvaflow.options import Parser, add_kafka_args

from .conftest import Proc, wait_for


def _parse(*argv: str) -> Any:
    p = Parser(prog="t")
    add_kafka_args(p)
    return p.parse_args(list(argv))


def test_options_default_to_the_broker_default_and_automatic_min_isr() -> None:
    r = Replication.from_args(_parse())
    assert (r.factor, r.min_insync) == (-1, 0)
    assert Replication.from_args(_parse("--replication-factor", "3")).min_insync_for(3) == 2
    assert Replication(5).min_insync_for(5) == 2
    assert Replication(2).min_insync_for(2) == 1
    assert Replication(1).min_insync_for(1) == 1
    assert Replication(3, 3).min_insync_for(3) == 3


@pytest.mark.parametrize("argv, message", [
    (["--replication-factor", "0"], "expected -1"),
    (["--replication-factor", "-2"], "expected -1"),
    (["--replication-factor", "x"], "expected a whole number"),
    (["--min-insync-replicas", "-1"], "must be >= 0"),
])
def test_bad_values_are_one_line(argv: list[str], message: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _parse(*argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_producers_default_to_acks_all_and_idempotence() -> None:
    assert PRODUCER_DEFAULTS["acks"] == "all"
    assert PRODUCER_DEFAULTS["enable.idempotence"] is True


def _describe(admin: AdminClient, topic: str) -> tuple[int, str]:
    md = admin.list_topics(topic=topic, timeout=10).topics[topic]
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    isr = admin.describe_configs([res])[res].result(30)["min.insync.replicas"].value
    return len(md.partitions[0].replicas), str(isr)


def test_single_broker_defaults_and_an_impossible_factor(kafka_admin: AdminClient) -> None:
    name = f"t-repl-{uuid.uuid4().hex[:8]}"
    try:
        assert ensure_topic(name, 2, admin=kafka_admin) == 2
        assert _describe(kafka_admin, name) == (1, "1")
        with pytest.raises(TopicError) as info:
            ensure_topic(f"{name}-3", 1, admin=kafka_admin, replication=Replication(3))
        line = info.value.line()
        assert "replicated 3 times" in line and "--replication-factor" in line
        assert "\n" not in line
        with pytest.raises(TopicError, match="more than the replication factor 1"):
            ensure_topic(f"{name}-isr", 1, admin=kafka_admin, replication=Replication(-1, 2))
    finally:
        kafka_admin.delete_topics([name], operation_timeout=10)


def test_cli_with_an_impossible_factor_is_one_line(kafka_bootstrap: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    t0 = time.monotonic()
    r = subprocess.run(
        [str(Path(sys.executable).parent / "pvaflow"), "collector", "--input-topic",
         f"in-{tag}", "--output-topic", f"out-{tag}", "-b", kafka_bootstrap,
         "--replication-factor", "3", "--control-topic", "", "--status-topic", ""],
        capture_output=True, text=True, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and "replicated 3 times" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and time.monotonic() - t0 < 60


# -- the effective configuration of every producer, as librdkafka itself reports it -----------

_CONF = re.compile(r"CONF \[(?P<client>[^\]\s]*#producer-\d+)\] \[thrd:app\]:\s+"
                   r"(?P<key>[a-z.]+) = (?P<value>\S+)")


def producer_configs(text: str) -> dict[str, dict[str, str]]:
    """Per librdkafka producer instance, the configuration it dumped (``-X debug=conf``)."""
    out: dict[str, dict[str, str]] = {}
    for m in _CONF.finditer(text):
        out.setdefault(m["client"], {})[m["key"]] = m["value"]
    # Without a bootstrap it is one of Kafka.validate()'s probes of a -X setting, not a client.
    return {c: conf for c, conf in out.items() if "metadata.broker.list" in conf}


def test_every_component_producer_really_runs_with_acks_all_and_idempotence(
        kafka_bootstrap: str, run: Callable[..., Proc]) -> None:
    """Each component started with ``-X debug=conf``: librdkafka logs the configuration
    each client was created with; every producer must show ``request.required.acks = -1``
    (all) and every frame producer ``enable.idempotence = true``, however the component
    layered its own settings."""
    tag = uuid.uuid4().hex[:8]
    common = ["-b", kafka_bootstrap, "-X", "debug=conf", "--log-level", "debug",
              "--control-topic", f"ctl-{tag}", "--status-topic", f"st-{tag}"]
    procs = {
        "bridge": run("bridge", "pvaflow", "bridge", "--input-channel", f"nobody:{tag}",
                      "--topic", f"f-{tag}", *common),
        "consumer": run("consumer", "pvaflow", "consumer", "--input-topic", f"f-{tag}",
                        "--output-topic", f"p-{tag}", "--processor", "passthrough", *common),
        "consumer-eos": run("consumer-eos", "pvaflow", "consumer", "--input-topic",
                            f"f-{tag}", "--output-topic", f"pe-{tag}", "--exactly-once",
                            "--group", f"eos-{tag}", "--processor", "passthrough", *common),
        "collector": run("collector", "pvaflow", "collector", "--input-topic", f"p-{tag}",
                         "--output-topic", f"o-{tag}", "--group", f"c-{tag}", *common),
    }

    def dumped(p: Proc) -> dict[str, dict[str, str]] | None:
        assert p.poll() is None, p.text()[-3000:]
        # the component's own producer and its status producer (control agent)
        confs = producer_configs(p.text())
        return confs if len(confs) >= 2 and all(
            "request.required.acks" in c for c in confs.values()) else None

    for name, p in procs.items():
        confs = wait_for(partial(dumped, p), 120, f"{name}'s producer configuration")
        # The status/reply producer of the control agent (pvaflow/control.py) sends with
        # linger 0 and, by design, without idempotence (a status message is superseded by
        # the next one); every frame producer is idempotent.
        frames = {c: conf for c, conf in confs.items()
                  if conf.get("queue.buffering.max.ms") != "0"}
        assert frames, (name, confs)
        for client, conf in frames.items():
            assert conf.get("enable.idempotence") == "true", (name, client, conf)
        for client, conf in confs.items():
            assert conf["request.required.acks"] == "-1", (name, client, conf)
        if name in ("collector", "consumer-eos"):
            assert any("transactional.id" in c for c in frames.values()), (name, confs)
