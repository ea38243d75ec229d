"""What a user sees when the collector cannot work: one line on stderr, no traceback, and an
exit code that says why (2: the command line or a setting, 3: Kafka unreachable or lost)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from pvaflow.process import free_port

from .helpers import BIN, produce_frames, read_records, wait_for

COLLECTOR = str(BIN / "pvaflow-collector")


def run(*args: str, timeout: float = 120.0) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    r = subprocess.run([COLLECTOR, *args], capture_output=True, text=True, timeout=timeout)
    return r, time.monotonic() - t0


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def private_topics() -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return ["--input-topic", f"t-in-{tag}", "--output-topic", f"t-out-{tag}",
            "--state-topic", f"t-state-{tag}", "--control-topic", f"t-ctl-{tag}",
            "--status-topic", f"t-status-{tag}", "--group", f"g-{tag}"]


@pytest.mark.parametrize("setting", ["no.such.property=1", "linger.ms=abc"])
def test_a_refused_kafka_setting_is_one_line_naming_it(kafka_bootstrap: str,
                                                        setting: str) -> None:
    r, _ = run(*private_topics(), "-b", kafka_bootstrap, "-X", setting)
    err = lines(r.stderr)
    assert r.returncode == 2, r.stderr
    assert len(err) == 1 and err[0].startswith("pvaflow-collector: error:"), r.stderr
    assert setting.split("=")[0] in err[0] and "Traceback" not in r.stderr


@pytest.mark.parametrize("argv", [
    ["--collector-cache-size", "0"], ["--max-delay", "-1"], ["-pa", "[1]"], ["-p", "x"],
    ["--input-topc", "x"], ["--output-codec", "zstd"], ["--h5-compression", "gzip"],
])
def test_wrong_arguments_are_parser_errors(argv: list[str]) -> None:
    r, _ = run("--input-topic", "x", *argv)
    err = lines(r.stderr)
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert err[0].startswith("pvaflow-collector: error:"), r.stderr


def test_unreachable_bootstrap_is_one_line_and_exit_3_within_15_s() -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    r, elapsed = run(*private_topics(), "-b", bootstrap, timeout=60)
    err = lines(r.stderr)
    assert r.returncode == 3, r.stderr
    assert len(err) == 1 and bootstrap in err[0], r.stderr
    assert "Traceback" not in r.stderr and elapsed < 15, (elapsed, r.stderr)


def test_broker_gone_for_good_mid_run_ends_with_one_line_and_exit_3(
        private_broker, tmp_path: Path) -> None:
    b = private_broker()
    bootstrap = b.bootstrap
    argv = private_topics()
    inp, out = argv[1], argv[3]
    produce_frames(bootstrap, inp, range(1, 21))
    stdout, stderr = tmp_path / "out.log", tmp_path / "err.log"
    with open(stdout, "wb") as o, open(stderr, "wb") as e:
        proc = subprocess.Popen([COLLECTOR, *argv, "-b", bootstrap, "--kafka-timeout", "8",
                                 "--max-delay", "1"], stdout=o, stderr=e)
    try:
        got = read_records(bootstrap, out, lambda r: len(r) >= 20, 60)
        assert len(got) == 20, stderr.read_text()
        t0 = time.monotonic()  # the --kafka-timeout clock starts while the broker stops
        b.stop()
        code = proc.wait(90)  # lost after --kafka-timeout; a spinning stop would hang here
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = stderr.read_text()
    errors = [ln for ln in lines(text) if ln.startswith("pvaflow-collector: error:")]
    assert code == 3, text
    assert len(errors) == 1 and "lost Kafka" in errors[0], text
    assert "Traceback" not in text
    assert elapsed >= 8, elapsed  # not before the bounded retry
    # ... nor long after it: a commit in flight when the broker went used to hold the run
    # for its 60 s call (61 s beside CPU hogs); now ~10 s, the bound leaves room for load
    assert elapsed < 45, elapsed
    assert lines(text)[-1] == errors[0], text  # the last word, after any warning


def test_stop_while_the_broker_is_down_exits_promptly(private_broker, tmp_path: Path) -> None:
    """A stop during an outage must not wait on commits, flushes or a full buffer."""
    b = private_broker()
    bootstrap = b.bootstrap
    argv = private_topics()
    inp, out = argv[1], argv[3]
    produce_frames(bootstrap, inp, range(1, 11))
    stderr = tmp_path / "err.log"
    with open(tmp_path / "out.log", "wb") as o, open(stderr, "wb") as e:
        # PYTHONFAULTHANDLER: a stop that hangs is shown where it hangs (SIGABRT below)
        proc = subprocess.Popen([COLLECTOR, *argv, "-b", bootstrap, "--kafka-timeout", "300",
                                 "--max-delay", "1"], stdout=o, stderr=e,
                                env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    try:
        assert len(read_records(bootstrap, out, lambda r: len(r) >= 10, 60)) == 10
        b.stop()
        wait_for(lambda: "brokers are down" in stderr.read_text(), 60, "the outage noticed")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # every thread's stack on stderr
            proc.wait(30)
            raise AssertionError("no exit within 60 s of SIGTERM during the outage:\n"
                                 + stderr.read_text()[-12000:]) from None
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = stderr.read_text()
    assert code == 0 and "Traceback" not in text, text
    assert elapsed < 20, elapsed
