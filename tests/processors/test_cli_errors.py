"""What a user reads when ``pvaflow-consumer`` cannot work: one line on stderr naming the
cause, the documented exit code, no traceback; and never a wait without end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pvaflow.ops.broker import LocalBroker

from pvaflow.process import free_port
from pvaflow.testing import make_frames

from .conftest import feed, wait_for

PROG = "pvaflow-consumer"
PLUGIN = ("--processor", "passthrough")
# The shared control topic stays out of these runs (another test's "stop all" must not count).
NO_CONTROL = ("--control-topic", "", "--status-topic", "")


def consumer_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pvaflow.processors.cli", *args]


def run(*args: str, timeout: float = 60.0) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PVAFLOW_KAFKA_")}
    t0 = time.monotonic()
    done = subprocess.run(consumer_cmd(*args), capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL, check=False)
    return done, time.monotonic() - t0


def lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def the_error_line(stderr: str, *names: str) -> str:
    """Exactly one error line, naming every one of ``names``; no traceback anywhere."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in lines(stderr) if line.startswith(f"{PROG}: error:")]
    assert len(errors) == 1, stderr
    for name in names:
        assert [line for line in lines(stderr) if name in line] == errors, stderr
    return errors[0]


def test_n_consumers_must_be_positive() -> None:
    for value in ("0", "-2"):
        done, _ = run("--input-topic", "frames", *PLUGIN, "--n-consumers", value)
        assert done.returncode == 2
        assert lines(done.stderr) == [the_error_line(done.stderr, "--n-consumers")]
        assert "at least 1" in done.stderr


def test_output_codec_must_be_same_none_or_an_installed_codec() -> None:
    done, _ = run("--input-topic", "frames", *PLUGIN, "--output-codec", "zstd")
    assert done.returncode == 2
    assert lines(done.stderr) == [the_error_line(done.stderr, "--output-codec")]
    assert "same, none or one of blosc, bslz4, lz4" in done.stderr


def test_processor_args_must_be_a_json_object() -> None:
    done, _ = run("--input-topic", "frames", "-pf", "x.py", "-pc", "X", "-pa", "[1, 2]")
    assert done.returncode == 2
    assert lines(done.stderr) == [the_error_line(done.stderr, "--processor-args")]


def test_unknown_kafka_setting_is_one_line_naming_it() -> None:
    # Refused before any connection: no broker is needed to say so.
    done, _ = run("--input-topic", "frames", *PLUGIN, *NO_CONTROL, "-b",
                  f"127.0.0.1:{free_port()}", "-X", "no.such.property=1")
    assert done.returncode == 2
    assert lines(done.stderr) == [the_error_line(done.stderr, "no.such.property")]


def test_malformed_producer_setting_is_one_line_naming_it(
        kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    # linger.ms only exists for producers: the cluster answers, then the producer refuses it.
    # The input topic does not exist: the setting must be refused before waiting for it.
    done, elapsed = run("--input-topic", f"missing-{make_topic()}", *PLUGIN, *NO_CONTROL,
                        "-b", kafka_bootstrap, "-X", "linger.ms=abc", "--output-topic",
                        make_topic(suffix="out"))
    assert done.returncode == 2
    line = the_error_line(done.stderr, "linger.ms=abc")
    assert lines(done.stderr) == [line]
    assert elapsed < 30


def test_unreachable_bootstrap_is_one_line_and_exit_3_within_15_s() -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    done, elapsed = run("--input-topic", "frames", *PLUGIN, "-b", bootstrap, timeout=30)
    assert done.returncode == 3, done.stderr
    line = the_error_line(done.stderr, bootstrap)
    assert "cannot reach Kafka" in line
    assert elapsed < 15


@pytest.mark.timeout(240)
def test_broker_gone_for_good_mid_run_is_one_line_and_exit_3(
        private_broker: Callable[..., LocalBroker], tmp_path: Path) -> None:
    kafka = private_broker()
    bootstrap = kafka.bootstrap
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic("frames", 1, 1)])["frames"].result(30)
    del admin  # its reconnect attempts would fill the test log once the broker is gone
    feed(bootstrap, "frames", make_frames(5, (4, 4)))
    err = tmp_path / "stderr.log"
    with open(err, "w") as stderr, open(tmp_path / "stdout.log", "w") as stdout:
        proc = subprocess.Popen(
            consumer_cmd("--input-topic", "frames", "--output-topic", "out", *PLUGIN,
                         *NO_CONTROL, "-b", bootstrap, "--kafka-timeout", "8",
                         "--report-period", "1"),
            stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
    try:
        # Running: every fed frame processed (the report on stdout says so).
        wait_for(lambda: "'processed': 5" in (tmp_path / "stdout.log").read_text(), 90,
                 "the consumer to process the fed frames")
        t0 = time.monotonic()  # the --kafka-timeout clock starts while the broker stops
        kafka.stop()
        code = proc.wait(120)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    text = err.read_text()
    assert code == 3, text
    line = the_error_line(text, bootstrap)
    assert "lost Kafka" in line
    assert 8 <= elapsed < 90, elapsed


def test_input_topic_that_never_appears_ends_with_the_runtime(
        kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    missing = f"missing-{make_topic()}"
    done, elapsed = run("--input-topic", missing, *PLUGIN, *NO_CONTROL, "-b", kafka_bootstrap,
                        "--runtime", "3", "--dlq-topic", "")
    assert done.returncode == 1
    line = the_error_line(done.stderr)
    assert missing in line and "did not appear within 3 s" in line
    assert elapsed < 30


def test_stop_while_waiting_for_the_input_topic_is_a_clean_exit(
        kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path) -> None:
    err = tmp_path / "stderr.log"
    with open(err, "w") as stderr:
        proc = subprocess.Popen(
            consumer_cmd("--input-topic", f"missing-{make_topic()}", *PLUGIN, *NO_CONTROL,
                         "-b", kafka_bootstrap, "--dlq-topic", ""),
            stdout=subprocess.DEVNULL, stderr=stderr, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: "waiting for topic" in err.read_text(), 60, "the wait for the topic")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert "Traceback" not in err.read_text() and "error" not in err.read_text()
