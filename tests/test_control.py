import pytest

from pvaflow.control import COMMANDS, ComponentId, command_message


@pytest.mark.parametrize("target, hit", [
    ("all", True), ("consumer", True), ("rot", True), ("consumer/rot", True),
    ("consumer/rot/2", True), ("consumer/rot/1", False), ("collector", False), ("other", False),
])
def test_targets(target, hit):
    assert ComponentId("consumer", "rot", "2").matches(target) is hit


def test_component_id_round_trips_through_text():
    c = ComponentId("bridge", "default", "1")
    assert ComponentId.parse(str(c)) == c


def test_command_message_rejects_unknown_commands():
    with pytest.raises(ValueError, match="unknown command 'reboot'"):
        command_message("all", "reboot")
    msg = command_message("rot", "configure", {"x": 100})
    assert msg["command"] in COMMANDS and msg["args"] == {"x": 100} and msg["request_id"]
