"""The plain Prometheus rules file, made from the chart's one source of alert rules.

``helm/pvaflow/files/alerts.yaml`` holds the rules with placeholders (a dollar sign and a key
of ``monitoring.alerts`` in braces); the chart's PrometheusRule template fills them from the
values. ``alerts/pvaflow.rules.yaml`` is the same text filled with the chart's default values,
for a Prometheus without the operator. ``make alerts`` (``python -m tests.ops.rules``) writes it;
tests/ops/test_alerts.py checks it is up to date and agrees with the rendered PrometheusRule.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Any

import yaml

from .conftest import CHART, REPO

SOURCE = CHART / "files" / "alerts.yaml"
PLAIN = REPO / "alerts" / "pvaflow.rules.yaml"
PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
HEADER = """\
# pvaflow alert rules for Prometheus' rule_files (no prometheus-operator needed).
# Generated from helm/pvaflow/files/alerts.yaml with the chart's default thresholds
# (monitoring.alerts in helm/pvaflow/values.yaml) by `make alerts`; do not edit by hand.
# Check: promtool check rules alerts/pvaflow.rules.yaml
"""


def default_thresholds() -> dict[str, Any]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    thresholds: dict[str, Any] = values["monitoring"]["alerts"]
    return thresholds


def value_text(value: Any) -> str:
    """A value as the chart's pvaflow.argText writes it (whole numbers without a fraction)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def fill(text: str, thresholds: Mapping[str, Any]) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group(1) not in thresholds:
            raise KeyError(f"{SOURCE.name} uses ${{{m.group(1)}}}, which monitoring.alerts "
                           "does not set")
        return value_text(thresholds[m.group(1)])
    return PLACEHOLDER.sub(one, text)


def plain_rules(thresholds: Mapping[str, Any] | None = None) -> str:
    """The plain rules file's text: the source without its comment header, filled in."""
    lines = SOURCE.read_text().splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    body = fill("".join(lines), default_thresholds() if thresholds is None else thresholds)
    return HEADER + body


if __name__ == "__main__":
    sys.stdout.write(plain_rules())
