"""The status schema: how one kind of component's stats map onto frames in, out and lost.

Each wing declares its schema next to its own stats (``bridge/stats.py``,
``processors/stats.py``, ``collectors/stats.py``) and every status message carries it, so the
monitor needs no list of wings and no stats key spelled as a string anywhere else. A renamed
stats key fails :meth:`StatusSchema.check` (the wings' schema tests, and a logged error when a
component publishes), instead of silently showing zero in the pipeline view.

>>> schema = StatusSchema("consumer", frames_in="received", frames_out="processed",
...                       lost={"dlq": "dlq"})
>>> schema.check({"received": 3, "processed": 2, "dlq": 1})
>>> schema.check({"received": 3, "done": 2, "dlq": 1})
Traceback (most recent call last):
...
pvaflow.errors.SchemaError: consumer stats lack processed (frames_out); present: dlq, done, received
>>> StatusSchema.from_json(schema.to_json()) == schema
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import SchemaError

# Start order of the known kinds in the pipeline view (sources first); others sort last.
STAGE_ORDER = ("bridge", "consumer", "collector", "mirror")


@dataclass(frozen=True)
class StatusSchema:
    """``lost`` maps a loss reason shown to users to the stats key that counts it; ``extra``
    names further keys the pipeline view sums per stage (``max_keys`` are maxed instead)."""

    kind: str
    frames_in: str
    frames_out: str
    lost: Mapping[str, str] = field(default_factory=dict)
    extra: tuple[str, ...] = ()
    max_keys: tuple[str, ...] = ()

    def keys(self) -> dict[str, str]:
        """Every stats key the schema names, with the role it plays."""
        out = {self.frames_in: "frames_in", self.frames_out: "frames_out"}
        out.update({key: f"lost[{reason}]" for reason, key in self.lost.items()})
        out.update({key: "extra" for key in (*self.extra, *self.max_keys)})
        return out

    def check(self, stats: Mapping[str, Any]) -> None:
        """Raise :class:`SchemaError` unless every key the schema names is in ``stats``."""
        missing = [f"{key} ({role})" for key, role in self.keys().items() if key not in stats]
        if missing:
            raise SchemaError(f"{self.kind} stats lack {', '.join(missing)}; present: "
                              f"{', '.join(sorted(stats))}")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "in": self.frames_in, "out": self.frames_out,
                "lost": dict(self.lost), "extra": list(self.extra),
                "max": list(self.max_keys)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StatusSchema:
        return cls(str(data.get("kind", "?")), str(data.get("in", "received")),
                   str(data.get("out", "processed")),
                   {str(k): str(v) for k, v in dict(data.get("lost") or {}).items()},
                   tuple(map(str, data.get("extra") or ())),
                   tuple(map(str, data.get("max") or ())))


def generic(kind: str) -> StatusSchema:
    """What the view assumes for a message without a schema (an older or foreign producer)."""
    return StatusSchema(kind, "received", "processed")
