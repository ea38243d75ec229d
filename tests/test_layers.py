"""The house rules, read from the code's own imports: the core imports no wing and no ops,
and no wing imports another (wings meet only through Kafka topics and the core's types)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# room -> folder; the installed name of each is pvaflow.<room> (the core is pvaflow itself).
ROOMS = {"core": "pvaflow", "bridge": "bridge", "processors": "processors",
         "collectors": "collectors", "ops": "ops"}
WINGS = ("bridge", "processors", "collectors", "ops")


def _room_of_module(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "pvaflow":
        return "external"
    if len(parts) > 1 and parts[1] in WINGS:
        return parts[1]
    return "core"


def _module_name(room: str, path: Path) -> str:
    rel = path.relative_to(REPO / ROOMS[room]).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    base = ["pvaflow"] if room == "core" else ["pvaflow", room]
    return ".".join(base + parts)


def imports(room: str) -> list[tuple[str, str]]:
    """(file, imported module) for every import statement in a room, relative ones resolved."""
    found = []
    for path in sorted((REPO / ROOMS[room]).rglob("*.py")):
        mod = _module_name(room, path)
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(str(path.relative_to(REPO)), a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found.append((str(path.relative_to(REPO)), target))
    return found


def test_the_rule_reader_sees_imports() -> None:
    """Guards the test itself: it must find the wings' imports of the core."""
    targets = {_room_of_module(m) for _f, m in imports("bridge")}
    assert "core" in targets and "bridge" in targets


@pytest.mark.parametrize("room", list(ROOMS))
def test_imports_point_one_way(room: str) -> None:
    allowed = {"core", "external"} | ({room} if room != "core" else set())
    wrong = [(f, m) for f, m in imports(room) if _room_of_module(m) not in allowed]
    assert not wrong, f"{room} imports outside its room: {wrong}"


def test_core_imports_nothing_above_it() -> None:
    assert not [m for _f, m in imports("core") if _room_of_module(m) in WINGS]
