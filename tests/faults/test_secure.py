"""Every pvaflow command over SASL_SSL (SCRAM-SHA-512, TLS with the broker's own CA): the
settings come from ``-X`` and the password from ``PVAFLOW_KAFKA_SASL_PASSWORD_FILE``.

* a short pipeline (sim server -> bridge -> consumer -> collector, a mirror serving the
  ordered topic, the faust monitor) moves frames end to end; ``pvaflow status --from-topic``
  and ``pvaflow control all get_stats`` work;
* a wrong password: one line naming the cause, non-zero exit, within 30 s, per command;
* the password never appears in any captured output, the status topic, or a /metrics page.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pvaflow.ops.broker import LocalBroker

from pvaflow.kafka.client import Kafka
from pvaflow.kafka.topics import read_partition
from pvaflow.process import free_port

from .conftest import BIN, Proc, read_uids, wait_for

BOUND = 180.0


def _security(broker: LocalBroker) -> tuple[list[str], dict[str, str], str, dict[str, str]]:
    """(-X options without the password, environment with the password file, the password,
    the full client settings for the test's own readers)."""
    files = broker.security_files
    assert files is not None
    settings = broker.client_settings()
    x: list[str] = []
    for k, v in settings.items():
        if k not in ("bootstrap.servers", "sasl.password"):
            x += ["-X", f"{k}={v}"]
    env = {"PVAFLOW_KAFKA_SASL_PASSWORD_FILE": str(files.password_path)}
    return x, env, files.password(), settings


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode(errors="replace"))
    except OSError:
        return None


def _pva_port_env() -> dict[str, str]:
    """A private PVA server TCP port, for a process that serves a channel."""
    port = str(free_port())
    return {"EPICS_PVA_SERVER_PORT": port, "EPICS_PVAS_SERVER_PORT": port}


@pytest.mark.timeout(600)
def test_a_pipeline_runs_over_sasl_ssl_and_no_output_shows_the_password(
        secure_broker: LocalBroker, sim_server: Callable[..., Any],
        run: Callable[..., Proc], tmp_path: Path) -> None:
    x, env, password, settings = _security(secure_broker)
    boot = secure_broker.bootstrap
    tag = uuid.uuid4().hex[:8]
    frames, processed, ordered = f"f-{tag}", f"p-{tag}", f"o-{tag}"
    st, ctl = f"st-{tag}", f"ctl-{tag}"
    control = ["--control-topic", ctl, "--status-topic", st]
    common = ["-b", boot, *x, "--report-period", "1", *control]
    ports = {name: free_port() for name in ("bridge", "consumer", "collector", "mirror",
                                            "monitor-metrics")}
    web = free_port()
    n = 200
    sim = sim_server(nx=32, ny=32, fps=20, total_frames=n, start_delay=8.0, ready_timeout=60)

    procs = [
        run("collector", "pvaflow", "collector", "--input-topic", processed, "--output-topic",
            ordered, "--group", f"gc-{tag}", "--max-delay", "3",
            "--metrics-port", str(ports["collector"]), *common, env=env),
        run("consumer", "pvaflow", "consumer", "--input-topic", frames, "--output-topic",
            processed, "--group", f"gp-{tag}", "--processor", "passthrough",
            "--metrics-port", str(ports["consumer"]), *common, env={**env, **_pva_port_env()}),
        run("monitor", "pvaflow", "monitor", "-b", boot, *x, "--status-topic", st,
            "--app-id", f"mon-{tag}", "--web-port", str(web), "--data-dir",
            str(tmp_path / "monitor"), "--metrics-port", str(ports["monitor-metrics"]),
            env=env),
        run("bridge", "pvaflow", "bridge", "--input-channel", sim.channel, "--topic", frames,
            "--metrics-port", str(ports["bridge"]), *common, env=env),
    ]

    # the mirror serves the ordered topic: it must exist first (the collector creates it)
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**settings, "log_level": 0})
    wait_for(lambda: ordered in admin.list_topics(timeout=10).topics, BOUND,
             "the collector to create the ordered topic")
    procs.append(run("mirror", "pvaflow", "mirror", "--topic", ordered, "--output-channel",
                     f"mirror:{tag}", "--metrics-port", str(ports["mirror"]), *common,
                     env={**env, **_pva_port_env()}))

    def alive() -> None:
        for p in procs:
            assert p.poll() is None, f"{p.name} exited {p.poll()}:\n{p.text()[-3000:]}"

    wait_for(lambda: not sim.is_running(), BOUND, "the sim server to publish its frames")

    def all_ordered() -> bool:
        alive()
        got = read_uids(boot, ordered, 1, overrides=settings, timeout=30)
        return len(got) >= 50 and got[-1] >= n - 5  # the tail: the bridge joined late
    wait_for(all_ordered, BOUND, "the frames in the ordered topic", every=2.0)
    got = read_uids(boot, ordered, 1, overrides=settings, timeout=30)
    sent = read_uids(boot, frames, 1, overrides=settings, timeout=30)
    assert got == sorted(set(sent)), "ordered output differs from the bridge's frames"

    # every component reports, and answers commands, over SASL_SSL
    def monitored() -> bool:
        page = _get(f"http://127.0.0.1:{web}/status")
        kinds = {c["kind"] for c in json.loads(page)["components"]} if page else set()
        return kinds >= {"bridge", "consumer", "collector", "mirror"}
    wait_for(monitored, BOUND, "the monitor to show every component", every=2.0)

    def one_shot(*args: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([str(BIN / "pvaflow"), *args, "-b", boot, *x],
                           env={**os.environ, **env}, capture_output=True, text=True,
                           timeout=180)
        outputs.append(r.stdout + r.stderr)
        return r

    outputs: list[str] = []
    status = one_shot("status", "--from-topic", "--status-topic", st, "--components",
                      "--json", "--timeout", "90")  # 30 s by default: short beside CPU hogs
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)
    assert {c["kind"] for c in view["components"]} >= {"bridge", "consumer", "collector",
                                                       "mirror"}
    # (it returns with the last reply; the default 10 s is short beside CPU hogs)
    stats = one_shot("control", "all", "get_stats", "--from-topic", *control, "--json",
                     "--timeout", "90")
    assert stats.returncode == 0, stats.stderr
    replies = [json.loads(ln) for ln in stats.stdout.splitlines() if ln.strip()]
    assert len(replies) >= 4, stats.stdout

    pages = [(name, wait_for(partial(_get, f"http://127.0.0.1:{p}/metrics"), 60,
                             f"/metrics from {name}")) for name, p in ports.items()]
    pages.append(("monitor-web", wait_for(partial(_get, f"http://127.0.0.1:{web}/metrics"),
                                          60, "the monitor's /metrics")))
    for p in procs:
        p.stop(60)
    status_topic = read_partition(st, Kafka(boot, settings), timeout=30)[0]
    texts = [*outputs, *(p.text() for p in procs), *(page or "" for _n, page in pages),
             *((v or b"").decode(errors="replace") for _k, v in status_topic)]
    assert len(status_topic) > 10
    for text in texts:
        assert password not in text
    for p in procs:
        assert "Traceback" not in p.text(), p.name


# -- a wrong password, command by command ------------------------------------------------------

COMMANDS: dict[str, list[str]] = {
    "bridge": ["bridge", "--input-channel", "nobody:{tag}", "--topic", "f-{tag}"],
    "consumer": ["consumer", "--input-topic", "f-{tag}", "--processor", "passthrough"],
    "collector": ["collector", "--input-topic", "p-{tag}", "--output-topic", "o-{tag}"],
    "mirror": ["mirror", "--topic", "o-{tag}", "--output-channel", "mirror:{tag}"],
    "monitor": ["monitor", "--app-id", "mon-{tag}", "--web-port", "{port}"],
    "status": ["status", "--from-topic"],
    "control": ["control", "all", "get_stats", "--from-topic"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_wrong_password_is_one_line_naming_the_cause(
        secure_broker: LocalBroker, command: str, tmp_path: Path) -> None:
    x, _env, password, _settings = _security(secure_broker)
    wrong = tmp_path / "wrong-password"
    wrong_value = f"not-{uuid.uuid4().hex}"
    wrong.write_text(wrong_value + "\n")
    tag = uuid.uuid4().hex[:8]
    argv = [a.format(tag=tag, port=free_port()) for a in COMMANDS[command]]
    t0 = time.monotonic()
    r = subprocess.run(
        [str(BIN / "pvaflow"), *argv, "-b", secure_broker.bootstrap, *x],
        env={**os.environ, "PVAFLOW_KAFKA_SASL_PASSWORD_FILE": str(wrong),
             **_pva_port_env()},
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    elapsed = time.monotonic() - t0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0, r.stderr
    assert elapsed < 30, f"{command}: {elapsed:.1f} s"
    assert len(lines) == 1, r.stderr
    assert "authentication" in lines[0].lower() or "credentials" in lines[0].lower(), lines
    assert secure_broker.bootstrap in lines[0], lines
    assert "Traceback" not in r.stderr
    for text in (r.stdout, r.stderr):
        assert password not in text and wrong_value not in text
