import sys

import pytest
from pvaflow.ops.pipeline import PipelineError, components, load, main, start, stop_all, to_args

from pvaflow.commands import find


def test_keys_map_onto_options():
    args = to_args({"input_topic": ["a", "b"], "exactly_once": True, "dlq_topic": None,
                    "verbose": False, "processor_args": {"x": 100}, "n_consumers": 2})
    assert args == ["--input-topic", "a", "--input-topic", "b", "--exactly-once",
                    "--processor-args", '{"x": 100}', "--n-consumers", "2"]


@pytest.mark.parametrize("key", ["consumers", "stages"])
def test_components_start_sinks_first_and_share_bootstrap(key):
    parts = components({
        "bootstrap_servers": "h:1",
        "bridge": {"input_channel": ["pv:image"], "topic": "frames"},
        key: [{"name": "rot", "input_topic": "frames", "output_topic": "out"}],
        "collector": {"input_topic": ["out"]},
    })
    assert [p.name for p in parts] == ["collector", "rot", "bridge"]
    stage = parts[1]
    assert stage.program == "consumer" and find(stage.program).name == "consumer"
    assert stage.command()[:4] == [sys.executable, "-m", "pvaflow.cli", "consumer"]
    assert stage.args[:2] == ["--bootstrap-servers", "h:1"]
    assert stage.args[-2:] == ["--group", "rot"]


def test_kafka_settings_become_repeated_x_for_every_component():
    parts = {p.name: p.args for p in components({
        "bootstrap_servers": "h:1", "X": {"security.protocol": "SASL_SSL", "linger.ms": 5},
        "monitor": {}, "mirror": {"topic": "t"},
        "consumers": [{"name": "c", "X": ["linger.ms=20", "fetch.max.bytes=1000"]}],
        "bridge": {"X": {"enable.idempotence": True}},
    })}
    for name, args in parts.items():
        assert args[:2] == ["--bootstrap-servers", "h:1"], name
        assert "--X" not in args and "-X" in args, name
        pairs = [args[i + 1] for i, a in enumerate(args) if a == "-X"]
        assert "security.protocol=SASL_SSL" in pairs, name
    consumer = [parts["c"][i + 1] for i, a in enumerate(parts["c"]) if a == "-X"]
    assert consumer == ["security.protocol=SASL_SSL", "linger.ms=20", "fetch.max.bytes=1000"]
    assert "enable.idempotence=true" in parts["bridge"]


@pytest.mark.parametrize("x, message", [
    ("oops", "must be a mapping"),
    (["no-equals-sign"], "expected key=value"),
])
def test_bad_kafka_settings_are_explained(x, message):
    with pytest.raises(PipelineError, match=message):
        components({"bridge": {"X": x}})


def test_dry_run_and_the_start_log_never_show_a_secret(tmp_path, capsys):
    f = tmp_path / "p.yaml"
    f.write_text("X: {sasl.username: alice, sasl.password: hunter2}\n"
                 "monitor: {X: [ssl.key.password=kpass]}\n")
    assert main([str(f), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "kpass" not in out
    assert "-X sasl.password=*** " in out and "-X sasl.username=alice" in out
    assert "-X ssl.key.password=***" in out
    parts = load(f)
    assert "sasl.password=hunter2" in parts[0].command()  # the child gets the real value
    # main() set up logging (INFO, to stderr); --version: the child exits at once
    procs = start([type(parts[0])(parts[0].name, "monitor", [*parts[0].args, "--version"])],
                  log_dir=tmp_path / "logs")
    assert procs[0][1].wait(60) == 0 and stop_all(procs) == 0
    logged = capsys.readouterr().err
    assert "starting monitor: pvaflow monitor" in logged
    assert "hunter2" not in logged and "kpass" not in logged and "sasl.password=***" in logged


def test_stage_keeps_its_own_bootstrap_and_group():
    (stage,) = components({"bootstrap_servers": "h:1",
                           "stages": [{"bootstrap_servers": "x:2", "group": "g"}]})
    assert "h:1" not in stage.args and "x:2" in stage.args
    assert stage.args.count("--group") == 1


@pytest.mark.parametrize("spec, message", [
    ({"bridg": {}}, r"unknown key 'bridg' \(did you mean bridge\?\)"),
    ({"consumer": []}, r"did you mean consumers\?"),
    ({"stages": {"a": 1}}, "stages: must be a list"),
    ({"consumers": [{}], "stages": [{}]}, "name the same role"),
    ({"bridge": ["x"]}, "must be a mapping of its options"),
    ({}, "names no component"),
    (["bridge"], "must be a mapping"),
])
def test_bad_files_are_explained(spec, message):
    with pytest.raises(PipelineError, match=message):
        components(spec)


def test_cli_reports_bad_yaml_in_one_line(tmp_path, capsys):
    bad = tmp_path / "p.yaml"
    bad.write_text("bridge: [unclosed\n")
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err and err.startswith("pvaflow run: error: ")


def test_dry_run_prints_commands(tmp_path, capsys):
    f = tmp_path / "p.yaml"
    f.write_text("bridge: {topic: frames, partitions: 2}\n")
    assert main([str(f), "--dry-run"]) == 0
    assert "bridge: pvaflow bridge --topic frames --partitions 2" in capsys.readouterr().out
    assert load(f)[0].command()[-4:] == ["--topic", "frames", "--partitions", "2"]


def test_each_role_gets_only_the_shared_settings_its_command_takes():
    parts = {p.name: p.args for p in components({
        "bootstrap_servers": "h:1", "control_topic": "ctl", "status_topic": "st",
        "monitor": {}, "mirror": {"topic": "t", "output_channel": "pv"}, "bridge": {},
    })}
    assert parts["monitor"] == ["--bootstrap-servers", "h:1", "--status-topic", "st"]
    assert parts["mirror"][:2] == ["--bootstrap-servers", "h:1"]
    assert "--status-topic" not in parts["mirror"] and "--control-topic" not in parts["mirror"]
    assert "--control-topic" in parts["bridge"] and "--status-topic" in parts["bridge"]


def test_demo_takes_runtime_like_every_command_and_builds_a_runnable_graph():
    from pvaflow.ops.demo import build_parser, spec

    parser = build_parser()
    assert parser.parse_args([]).runtime == 15.0
    assert parser.parse_args(["-rt", "4"]).runtime == parser.parse_args(
        ["--seconds", "4"]).runtime == 4.0
    assert "--seconds" not in parser.format_help()
    graph = spec("h:1", "demo:x:image", "x", 2)
    assert "consumers" in graph and "stages" not in graph
    parts = components(graph)
    assert [(p.program, p.name) for p in parts] == [
        ("collector", "collector"), ("consumer", "demo-x-rotate"), ("bridge", "bridge")]
    assert all(p.args[:2] == ["--bootstrap-servers", "h:1"] for p in parts)


def test_demo_refuses_a_non_positive_runtime_in_one_line(capsys):
    from pvaflow.ops.demo import main as demo_main

    assert demo_main(["--runtime", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pvaflow demo: error: --runtime, --fps, --size and --partitions must be > 0"]


@pytest.mark.integration
def test_run_starts_the_monitor_through_the_registry_with_x_settings(kafka_bootstrap, tmp_path):
    """No wing needed: `pvaflow run` with only a monitor, whose -X settings come from X:."""
    import json
    import os
    import signal
    import socket
    import subprocess
    import urllib.request
    import uuid

    from tests.collectors.helpers import wait_for

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tag = uuid.uuid4().hex[:8]
    f = tmp_path / "p.yaml"
    f.write_text(f"bootstrap_servers: {kafka_bootstrap}\n"
                 f"status_topic: t-run-status-{tag}\n"
                 "X: {security.protocol: PLAINTEXT, linger.ms: 1}\n"
                 f"monitor: {{web_port: {port}, app_id: run-{tag}, "
                 f"data_dir: {tmp_path / 'mon'}}}\n")

    def view() -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=3) as r:
                return dict(json.load(r))
        except OSError:
            return None

    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        run = subprocess.Popen([sys.executable, "-m", "pvaflow.cli", "run", str(f)],
                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: view() is not None or run.poll() is not None, 120, "the monitor")
        assert run.poll() is None, log.read_text()
        current = view()
        assert current is not None and (current["stages"], current["lost_total"]) == ([], 0)
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole group
        assert run.wait(60) == 0, log.read_text()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    text = log.read_text()
    assert "starting monitor: pvaflow monitor --bootstrap-servers" in text
    assert "-X security.protocol=PLAINTEXT -X linger.ms=1" in text
    assert "do not apply" not in text and "Traceback" not in text
