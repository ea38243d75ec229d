import pytest
from pvaflow.ops.pipeline import PipelineError, components, load, main, to_args


def test_keys_map_onto_options():
    args = to_args({"input_topic": ["a", "b"], "exactly_once": True, "dlq_topic": None,
                    "verbose": False, "processor_args": {"x": 100}, "n_consumers": 2})
    assert args == ["--input-topic", "a", "--input-topic", "b", "--exactly-once",
                    "--processor-args", '{"x": 100}', "--n-consumers", "2"]


def test_components_start_sinks_first_and_share_bootstrap():
    parts = components({
        "bootstrap_servers": "h:1",
        "bridge": {"input_channel": ["pv:image"], "topic": "frames"},
        "stages": [{"name": "rot", "input_topic": "frames", "output_topic": "out"}],
        "collector": {"input_topic": ["out"]},
    })
    assert [p.name for p in parts] == ["collector", "rot", "bridge"]
    stage = parts[1]
    assert stage.module == "pvaflow.processors.cli"
    assert stage.args[:2] == ["--bootstrap-servers", "h:1"]
    assert stage.args[-2:] == ["--group", "rot"]


def test_stage_keeps_its_own_bootstrap_and_group():
    (stage,) = components({"bootstrap_servers": "h:1",
                           "stages": [{"bootstrap_servers": "x:2", "group": "g"}]})
    assert "h:1" not in stage.args and "x:2" in stage.args
    assert stage.args.count("--group") == 1


@pytest.mark.parametrize("spec, message", [
    ({"bridg": {}}, "unknown keys"),
    ({"stages": {"a": 1}}, "must be a list"),
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
    assert "not valid YAML" in err


def test_dry_run_prints_commands(tmp_path, capsys):
    f = tmp_path / "p.yaml"
    f.write_text("bridge: {topic: frames, partitions: 2}\n")
    assert main([str(f), "--dry-run"]) == 0
    assert "bridge: pvaflow.bridge.cli --topic frames --partitions 2" in capsys.readouterr().out
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
