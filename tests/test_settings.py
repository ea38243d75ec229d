import argparse

import pytest

from pvaflow.kafka import settings


def test_cli_overrides_beat_environment_which_beats_defaults(monkeypatch, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("PVAFLOW_BOOTSTRAP", "10.0.0.1:9092")
    monkeypatch.setenv("PVAFLOW_KAFKA_LINGER_MS", "50")
    monkeypatch.setenv("PVAFLOW_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("PVAFLOW_KAFKA_SASL_PASSWORD_FILE", str(secret))
    conf = settings.producer_config(None, [("linger.ms", "7")])
    assert conf["bootstrap.servers"] == "10.0.0.1:9092"
    assert conf["linger.ms"] == "7"
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.password"] == "s3cret"
    assert conf["enable.idempotence"] is True


def test_explicit_bootstrap_wins_over_environment(monkeypatch):
    monkeypatch.setenv("PVAFLOW_BOOTSTRAP", "10.0.0.1:9092")
    assert settings.consumer_config("g", "127.0.0.1:1")["bootstrap.servers"] == "127.0.0.1:1"


def test_consumer_defaults_commit_manually_and_bound_prefetch():
    conf = settings.consumer_config("grp", "h:1", session_timeout_ms=3000)
    assert conf["group.id"] == "grp"
    assert conf["enable.auto.commit"] is False
    assert conf["session.timeout.ms"] == 3000
    assert conf["queued.max.messages.kbytes"] > 0
    assert conf["max.partition.fetch.bytes"] >= 16 * settings.MiB


def test_admin_config_drops_client_only_keys():
    conf = settings.admin_config("h:1", [("security.protocol", "SSL")])
    assert "linger.ms" not in conf and "group.id" not in conf
    assert conf["security.protocol"] == "SSL"


@pytest.mark.parametrize("text", ["novalue", "=x", ""])
def test_bad_override_is_a_clear_argparse_error(text):
    with pytest.raises(argparse.ArgumentTypeError, match="key=value"):
        settings.parse_override(text)


def test_override_value_may_contain_equals():
    assert settings.parse_override("sasl.jaas.config=a=b") == ("sasl.jaas.config", "a=b")


def test_latency_profile_layers_over_defaults_and_component_settings_under_x(monkeypatch):
    monkeypatch.delenv("PVAFLOW_KAFKA_LINGER_MS", raising=False)
    assert settings.producer_config("h:1")["linger.ms"] == settings.PRODUCER_DEFAULTS["linger.ms"]
    conf = settings.producer_config("h:1", profile="latency", linger_ms=5)  # a component's own
    assert conf["linger.ms"] == 0 and conf["socket.nagle.disable"] is True
    assert "fetch.wait.max.ms" not in conf  # a consumer setting stays with consumers
    assert settings.producer_config("h:1", [("linger.ms", "3")], profile="latency")[
        "linger.ms"] == "3"
    c = settings.consumer_config("g", "h:1", profile="latency")
    assert c["fetch.wait.max.ms"] == 10 and "linger.ms" not in c
    with pytest.raises(ValueError, match="no producer settings profile 'fast'"):
        settings.producer_config("h:1", profile="fast")


def test_latency_option_reaches_every_client_of_a_command():
    from pvaflow.kafka.client import Kafka
    from pvaflow.options import add_kafka_args

    p = argparse.ArgumentParser()
    add_kafka_args(p)
    assert Kafka.from_args(p.parse_args([])).producer_config()["linger.ms"] == 10
    kafka = Kafka.from_args(p.parse_args(["--latency"]))
    assert kafka.producer_config()["linger.ms"] == 0
    assert kafka.consumer_config("g")["fetch.wait.max.ms"] == 10
