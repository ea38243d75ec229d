import json

from pvaflow.metrics import consumer_lag


def _stats(**parts):
    return json.dumps({"topics": {"frames": {"partitions": parts}}})


def test_lag_falls_back_to_committed_lag_when_nothing_is_stored():
    stats = _stats(**{
        "0": {"fetch_state": "active", "consumer_lag_stored": -1, "consumer_lag": 40},
        "1": {"fetch_state": "active", "consumer_lag_stored": 7, "consumer_lag": 9},
    })
    assert consumer_lag(stats) == {("frames", 0): 40, ("frames", 1): 7}


def test_unassigned_and_internal_partitions_are_left_out():
    stats = _stats(**{
        "-1": {"fetch_state": "active", "consumer_lag": 5},
        "2": {"fetch_state": "none", "consumer_lag": 5},
        "3": {"fetch_state": "active", "consumer_lag_stored": -1, "consumer_lag": -1},
    })
    assert consumer_lag(stats) == {}
