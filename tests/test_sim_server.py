"""The sim_server fixture: a real pvapy-ad-sim-server that clients reach on loopback only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from tests.procs import wait_for

pytestmark = pytest.mark.integration

# A fresh interpreter so the client reads exactly the EPICS settings it is given.
CLIENT = r"""
import json, sys, time
import pvaccess as pva
name, want = sys.argv[1], int(sys.argv[2])
ch = pva.Channel(name)
deadline = time.time() + 20
while True:
    try:
        pv = ch.get("field()")
        if pv["uniqueId"] >= want:
            break
    except Exception as exc:
        if time.time() > deadline:
            print(json.dumps({"error": str(exc)}))
            sys.exit(3)
    if time.time() > deadline:
        print(json.dumps({"error": "uniqueId stayed at %d" % pv["uniqueId"]}))
        sys.exit(4)
    time.sleep(0.1)
value = pv["value"][0]
field = list(value)[0]
print(json.dumps({
    "uniqueId": pv["uniqueId"],
    "dims": [d["size"] for d in pv["dimension"]],
    "field": field,
    "n": len(value[field]),
}))
"""


def _client_get(channel: str, env: Mapping[str, str], min_unique_id: int = 1,
                timeout: float = 40.0) -> dict[str, object]:
    r = subprocess.run([sys.executable, "-c", CLIENT, channel, str(min_unique_id)],
                       env={**os.environ, **env}, capture_output=True, text=True,
                       timeout=timeout, check=False)
    assert r.returncode == 0, f"client failed: {r.stdout} {r.stderr}"
    result: dict[str, object] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def test_client_subprocess_reads_frames(sim_server: Callable[..., Any]) -> None:
    server = sim_server(nx=32, ny=16, datatype="uint16", fps=20)
    got = _client_get(server.channel, server.env, min_unique_id=3)
    assert got["dims"] == [32, 16]
    assert got["field"] == "ushortValue"
    assert got["n"] == 32 * 16
    assert isinstance(got["uniqueId"], int) and got["uniqueId"] >= 3


def test_env_is_loopback_only(sim_server: Callable[..., Any]) -> None:
    server = sim_server()
    env = server.env
    assert env["EPICS_PVA_ADDR_LIST"] == "127.0.0.1"
    assert env["EPICS_PVA_AUTO_ADDR_LIST"] == "NO"
    assert env["EPICS_PVAS_INTF_ADDR_LIST"] == "127.0.0.1"
    assert server.server_env["EPICS_PVAS_SERVER_PORT"] == str(server.port)
    for k, v in env.items():
        assert os.environ[k] == v  # applied for in-process pvapy clients


def test_stop_kills_the_process(sim_server: Callable[..., Any]) -> None:
    server = sim_server(fps=50)
    pid = server.pid
    assert server.listening()
    server.stop()
    assert not server.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not server.listening()


def test_restart_serves_again(sim_server: Callable[..., Any]) -> None:
    server = sim_server(fps=20)
    _client_get(server.channel, server.env, min_unique_id=2)
    old_pid = server.pid
    server.restart()
    assert server.pid != old_pid
    got = _client_get(server.channel, server.env, min_unique_id=2)
    assert got["dims"] == [64, 64]


def test_two_servers_and_an_in_process_client(sim_server: Callable[..., Any]) -> None:
    import pvaccess as pva

    a = sim_server(nx=8, ny=8, fps=20)
    b = sim_server(nx=16, ny=4, fps=20)
    a.apply_env()  # no-op here: pva_env already did it
    deadline = time.monotonic() + 20
    for server, dims in ((a, [8, 8]), (b, [16, 4])):
        while True:
            try:
                pv = pva.Channel(server.channel).get("field()")
                if pv["uniqueId"] > 0:
                    break
            except Exception:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)
        assert [d["size"] for d in pv["dimension"]] == dims


def test_total_frames_then_exit(sim_server: Callable[..., Any]) -> None:
    server = sim_server(nx=8, ny=8, fps=100, total_frames=20)
    deadline = time.monotonic() + 30
    while server.is_running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not server.is_running()
    assert "after publishing 20" in server.log_text()


def test_gated_server_publishes_from_unique_id_1_when_released(
        sim_server: Callable[..., Any]) -> None:
    """A gated server serves its channel but publishes nothing until released; then a client
    that connected before sees every frame from uniqueId 1. A plain server cannot be released
    (the signal would kill it)."""
    import pvaccess as pva

    server = sim_server(nx=8, ny=8, fps=50, total_frames=20, gated=True)
    got: list[int] = []
    ch = pva.Channel(server.channel)
    ch.subscribe("ids", lambda pv: got.append(pv["uniqueId"]))
    ch.startMonitor("field(uniqueId)")
    try:
        wait_for(ch.isConnected, 30, "the client to connect")
        time.sleep(2)  # a window for a frame that must not come
        assert [u for u in got if u > 0] == [] and server.current_unique_id() == 0
        server.release()
        wait_for(lambda: len([u for u in got if u > 0]) >= 20, 60, "20 frames")
        assert [u for u in got if u > 0] == list(range(1, 21))
    finally:
        ch.stopMonitor()
    wait_for(lambda: not server.is_running(), 30, "the server to exit after its frames")
    assert "after publishing 20" in server.log_text()
    plain = sim_server(nx=8, ny=8)
    with pytest.raises(RuntimeError, match="not a running gated server"):
        plain.release()
    assert plain.is_running()
