"""Every test the docs name as proof exists (a renamed test must not leave a row proving
nothing)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REF = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def _references() -> list[tuple[str, str, str]]:
    refs = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for path, name in REF.findall(doc.read_text()):
            refs.append((doc.name, path, name))
    return refs


def test_the_docs_name_tests() -> None:
    assert len(_references()) >= 10


@pytest.mark.parametrize(("doc", "path", "name"), _references())
def test_each_named_test_exists(doc: str, path: str, name: str) -> None:
    source = ROOT / path
    assert source.exists(), f"{doc} names {path}, which does not exist"
    assert re.search(rf"^\s*(async )?def {name}\(", source.read_text(), re.M), \
        f"{doc} names {path}::{name}, which is not defined there"
