"""The Kafka layer's handling of settings and secrets (pure logic: no broker needed)."""

from __future__ import annotations

import pytest

from pvaflow.errors import ConfigError, KafkaUnavailable
from pvaflow.kafka.client import Health, Kafka
from pvaflow.kafka.settings import is_secret, redact


def test_unknown_setting_names_it() -> None:
    with pytest.raises(ConfigError) as info:
        Kafka("127.0.0.1:9", [("no.such.property", "1")]).producer()
    assert "no.such.property" in info.value.line()
    assert info.value.exit_code == 2


def test_malformed_value_names_the_setting_the_user_gave() -> None:
    """librdkafka names linger.ms by its canonical name; the user must see theirs."""
    with pytest.raises(ConfigError) as info:
        Kafka("127.0.0.1:9", [("linger.ms", "abc")]).consumer("g")
    line = info.value.line()
    assert "-X linger.ms=abc" in line, line


def test_a_refused_secret_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PVAFLOW_KAFKA_MY_SECRET_TOKEN", "hunter2")
    with pytest.raises(ConfigError) as info:
        Kafka("127.0.0.1:9").producer()
    line = info.value.line()
    assert "my.secret.token" in line and "PVAFLOW_KAFKA_*" in line
    assert "hunter2" not in line


def test_secrets_are_masked() -> None:
    conf = {"sasl.username": "alice", "sasl.password": "pw", "ssl.key.password": "k",
            "sasl.oauthbearer.client.secret": "s", "linger.ms": 5}
    shown = redact(conf)
    assert shown == {"sasl.username": "alice", "sasl.password": "***",
                     "ssl.key.password": "***", "sasl.oauthbearer.client.secret": "***",
                     "linger.ms": 5}
    assert is_secret("SASL_PASSWORD") and not is_secret("sasl.username")
    assert "pw" not in Kafka("h:1", [("sasl.password", "pw")]).describe()


class _Err:
    def __init__(self, code: int, text: str) -> None:
        self._code, self._text = code, text

    def code(self) -> int:
        return self._code

    def str(self) -> str:
        return self._text

    def fatal(self) -> bool:
        return False


def test_health_gives_up_only_after_the_timeout_and_recovers() -> None:
    from confluent_kafka import KafkaError

    now = [0.0]
    answers = [False, False, True]
    health = Health(lambda: answers.pop(0), timeout=10.0, clock=lambda: now[0])
    health.check()  # nothing heard: nothing to do
    health.on_error(_Err(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert not health.reachable
    now[0] = 5.0
    health.check()  # probe fails, still within the timeout
    now[0] = 11.0
    with pytest.raises(KafkaUnavailable) as info:
        health.check()
    assert "lost Kafka for 11 s" in info.value.line()
    assert "pvaflow broker run" in info.value.line()
    now[0] = 14.0
    health.check()  # the probe answers: reachable again
    assert health.reachable


def test_authentication_failure_says_so() -> None:
    from confluent_kafka import KafkaError

    health = Health(lambda: False, timeout=1.0, clock=lambda: 0.0)
    health.on_error(_Err(KafkaError._AUTHENTICATION, "SASL authentication error: bad password"))
    err = health.unavailable("cannot reach Kafka", "h:1")
    assert "SASL authentication error" in err.line() and "sasl.password" in err.line()
