"""Ops test helpers: the helm and prometheus binaries and the CRDs ``make tools`` installs,
chart rendering.

The tools live in ``<repo>/.cache/tools`` (``scripts/tools``). Without them these tests skip
with a pointer to ``make tools``, except under CI (``$CI`` set), where a missing tool fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".cache" / "tools"
CHART = REPO / "helm" / "pvaflow"
HELM = TOOLS / "helm"
PROMETHEUS = TOOLS / "prometheus" / "usr" / "bin" / "prometheus"
PROMTOOL = TOOLS / "prometheus" / "usr" / "bin" / "promtool"
CRD_DIR = TOOLS / "crds"


def missing(message: str) -> None:
    """Skip (fail under CI) because a tool ``make tools`` installs is missing."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_tool(path: Path) -> Path:
    if not (path.is_file() and os.access(path, os.X_OK)):
        missing(f"{path.relative_to(REPO)} is missing: run `make tools`")
    return path


@pytest.fixture(scope="session")
def helm() -> Path:
    return require_tool(HELM)


@pytest.fixture(scope="session")
def prometheus_bin() -> Path:
    return require_tool(PROMETHEUS)


@pytest.fixture(scope="session")
def promtool() -> Path:
    return require_tool(PROMTOOL)


@pytest.fixture(scope="session")
def crd_dir() -> Path:
    """The KEDA and prometheus-operator CRDs (scripts/tools copies them from the Go modules)."""
    from .crds import CRD_FILES
    absent = [f for f in CRD_FILES.values() if not (CRD_DIR / f).is_file()]
    if absent:
        missing(f"{CRD_DIR.relative_to(REPO)}/{absent[0]} is missing: run `make tools`")
    return CRD_DIR


class HelmError(AssertionError):
    """``helm`` exited non-zero; the message is its stderr."""


def run_helm(helm: Path, *args: str, values: Iterable[Mapping[str, Any]] = (),
             tmp: Path | None = None) -> str:
    """Run helm on the chart with values files written from ``values`` (in order)."""
    files: list[str] = []
    for i, v in enumerate(values):
        assert tmp is not None, "values need a tmp directory"
        f = tmp / f"values-{i}-{len(list(tmp.iterdir()))}.yaml"
        f.write_text(yaml.safe_dump(dict(v)))
        files += ["-f", str(f)]
    proc = subprocess.run([str(helm), *args, *files], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HELM_CACHE_HOME": str(tmp or "/tmp"),
                                            "HELM_CONFIG_HOME": str(tmp or "/tmp"),
                                            "HELM_DATA_HOME": str(tmp or "/tmp")})
    if proc.returncode != 0:
        raise HelmError(proc.stderr.strip() or proc.stdout.strip())
    return proc.stdout


def render(helm: Path, tmp: Path, *values: Mapping[str, Any], extra: Iterable[str] = ()
           ) -> list[dict[str, Any]]:
    """``helm template`` of the chart: the manifests as dicts (empty documents dropped)."""
    out = run_helm(helm, "template", "rel", str(CHART), "--namespace", "ops", *extra,
                   values=values, tmp=tmp)
    return [d for d in yaml.safe_load_all(out) if d]


def find(docs: Iterable[dict[str, Any]], kind: str, name: str | None = None
         ) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind
            and (name is None or d["metadata"]["name"] == name)]


def dashboards() -> dict[str, dict[str, Any]]:
    """The chart's dashboard JSON files by file name."""
    files = sorted((CHART / "dashboards").glob("*.json"))
    return {p.name: json.loads(p.read_text()) for p in files}


def panel_queries(board: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, rows included."""
    out = []
    stack = list(board.get("panels", []))
    while stack:
        p = stack.pop(0)
        stack.extend(p.get("panels", []))
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append((p["title"], t["expr"]))
    return out


# -- live tests: real processes and their HTTP endpoints ------------------------------------

def http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    """(status code, body) of a GET; an HTTP error status is an answer, not an exception."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status), r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Any]:
    """A ``Procs`` (see test_dashboards_live): child processes logging to files in tmp_path,
    stopped by pid, newest first, at teardown."""
    from .test_dashboards_live import Procs

    procs = Procs(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


def wait_for_answer(procs: Any, url: str, code: int, timeout: float = 90.0,
                    contains: str = "") -> str:
    """Poll ``url`` until it answers ``code`` (and its body contains ``contains``); the
    processes in ``procs`` must stay alive meanwhile. Returns the body."""
    deadline = time.monotonic() + timeout
    last: tuple[int, str] | str = "no answer"
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            last = http_get(url, timeout=5.0)
        except OSError as exc:  # not listening yet, or a probe timed out
            last = repr(exc)
        else:
            if last[0] == code and contains in last[1]:
                return last[1]
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {url} to answer {code}"
                         f"{f' with {contains!r}' if contains else ''} (last: {last!r})")
