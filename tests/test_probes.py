"""/healthz and /readyz on the metrics port (pure logic plus a real local HTTP server)."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry

from pvaflow.metrics import Probes, serve


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_probes_follow_the_heartbeat_and_the_readiness_condition() -> None:
    now = [0.0]
    probes = Probes(stall_after=5.0, clock=lambda: now[0])
    port = serve(0, CollectorRegistry(), probes)
    assert port
    assert _get(port, "/healthz") == (200, "ok\n")
    assert _get(port, "/readyz") == (503, "starting\n")
    reason: list[str | None] = [None]
    probes.not_ready = lambda: reason[0]
    assert _get(port, "/readyz") == (200, "ok\n")
    reason[0] = "PVA channel sim:image disconnected"
    assert _get(port, "/readyz") == (503, "PVA channel sim:image disconnected\n")
    now[0] = 6.0  # the loop did not come round
    status, text = _get(port, "/healthz")
    assert status == 503 and "stalled" in text
    probes.beat()
    assert _get(port, "/healthz")[0] == 200
    status, text = _get(port, "/metrics")
    assert status == 200


def test_a_failing_readiness_check_is_not_ready_not_a_crash() -> None:
    probes = Probes()

    def broken() -> str | None:
        raise RuntimeError("boom")

    probes.not_ready = broken
    ok, text = probes.ready()
    assert not ok and "boom" in text
