"""PvaPy-style PVA channels of one consumer or collector: output image, status and control.

They behave as ``pvapy-hpc-consumer``'s and ``pvapy-hpc-collector``'s do, so the seed's
``pvget``/``pvput`` session works unchanged: ``*`` in a channel name is the component's id
(``consumerId``/``collectorId`` in the records); the control record takes
``{"command": ..., "args": "<json>"}`` and its ``statusMessage`` shows the last command's result.
The server binds where the EPICS environment says (``EPICS_PVAS_INTF_ADDR_LIST`` etc.).

A command put on the control record runs where every other command runs, on the component's
loop thread (through the lifecycle's command bus), so the plugin is never called from pvapy's
thread; ``stop`` only asks the lifecycle to stop, as a signal does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

import pvaccess as pva

from pvaflow.codec import FrameError
from pvaflow.control import COMMANDS, CommandBus
from pvaflow.frame import Frame
from pvaflow.ntnda import ntnda_from_frame

log = logging.getLogger(__name__)

ID_FIELD = "consumerId"
CONTROL_TYPE: dict[str, Any] = {
    "objectTime": pva.DOUBLE,
    "objectTimestamp": pva.PvTimeStamp(),
    "command": pva.STRING,
    "args": pva.STRING,
    "statusMessage": pva.STRING,
}
# Status fields: (status-dict key, PVA field, type); "struct.field" is a field of a
# sub-structure. Every status record also carries the whole status as ``statsJson``.
StatusFields = tuple[tuple[str, str, Any], ...]
STATUS_FIELDS: StatusFields = (
    ("received", "nReceived", pva.ULONG),
    ("processed", "nProcessed", pva.ULONG),
    ("errors", "nErrors", pva.ULONG),
    ("dlq", "nDlq", pva.ULONG),
    ("outputs", "nOutputs", pva.ULONG),
    ("sequence_gaps", "nMissed", pva.ULONG),
    ("lag", "lag", pva.LONG),
    ("first_unique_id", "firstUniqueId", pva.LONG),
    ("last_unique_id", "lastUniqueId", pva.LONG),
    ("rate", "processingRate", pva.DOUBLE),
    ("runtime", "runtime", pva.DOUBLE),
)
# The collector's, named as pvapy-hpc-collector's collectorStats where it has the same count.
COLLECTOR_STATUS_FIELDS: StatusFields = (
    ("received", "nReceived", pva.ULONG),
    ("errors", "nErrors", pva.ULONG),
    ("dlq", "nDlq", pva.ULONG),
    ("lag", "lag", pva.LONG),
    ("last_emitted_unique_id", "lastUniqueId", pva.LONG),
    ("emitted", "collectorStats.nCollected", pva.ULONG),
    ("rate", "collectorStats.collectedRate", pva.DOUBLE),
    ("missed", "collectorStats.nMissed", pva.ULONG),
    ("late", "collectorStats.nLate", pva.ULONG),
    ("duplicates", "collectorStats.nDuplicates", pva.ULONG),
    ("cache_depth", "collectorStats.nCached", pva.ULONG),
)
_DONE_MESSAGES = {
    "configure": "Configuration successful",
    "reset_stats": "Stats reset successful",
    "get_stats": "Stats update successful",
    "stop": "Stop flag set",
}


def channel_name(pattern: str | None, component_id: int | str) -> str | None:
    return pattern.replace("*", str(component_id)) if pattern else None


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": x}`` as ``{"a": {"b": x}}`` (PvObject types and values are nested dicts)."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        head, _, tail = name.partition(".")
        if tail:
            out.setdefault(head, {})[tail] = value
        else:
            out[name] = value
    return out


def _pva_type(value: Any) -> Any:
    if isinstance(value, bool | int):
        return pva.LONG
    if isinstance(value, float):
        return pva.DOUBLE
    return pva.STRING


class PvaChannels:
    """Owns one ``PvaServer``; ``publish`` and ``update_status`` run on the loop thread,
    the control callback on pvapy's thread (it only enqueues onto the :class:`CommandBus`)."""

    def __init__(self, component_id: int | str, commands: CommandBus, stop: Callable[[], None],
                 *, output: str | None, status: str | None, control: str | None,
                 user_stats_types: Mapping[str, Any] | None = None,
                 id_field: str = ID_FIELD, status_fields: StatusFields = STATUS_FIELDS) -> None:
        self.component_id = component_id
        self.output, self.status, self.control = output, status, control
        # PvaPy's ids are integers (UINT); an id that is not one is served as a string
        numeric = isinstance(component_id, int) or str(component_id).isdigit()
        self._id = {id_field: int(component_id) if numeric else str(component_id)}
        id_type = {id_field: pva.UINT if numeric else pva.STRING}
        self._fields = status_fields
        self._commands = commands
        self._stop = stop
        self._lock = threading.Lock()
        self._server = pva.PvaServer()
        self._output_ready = False
        self._user_types = dict(user_stats_types or {})
        if status:
            fields: dict[str, Any] = {**id_type, "objectTime": pva.DOUBLE,
                                      "objectTimestamp": pva.PvTimeStamp(), "statsJson": pva.STRING}
            fields.update(_nest({name: typ for _, name, typ in status_fields}))
            if self._user_types:
                fields["userStats"] = self._user_types
            self._status = pva.PvObject(fields, self._id)
            self._server.addRecord(status, self._status)
        if control:
            self._control = pva.PvObject({**id_type, **CONTROL_TYPE}, self._id)
            self._server.addRecord(control, self._control, self._on_control)
        log.info("PVA channels: output=%s status=%s control=%s", output, status, control)

    @classmethod
    def user_types_from(cls, plugin_stats: Mapping[str, Any],
                        declared: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """PVA types of the plugin's stats: PvaPy's getStatsPvaTypes, else inferred."""
        if declared:
            return dict(declared)
        return {k: _pva_type(v) for k, v in plugin_stats.items()}

    # -- output ---------------------------------------------------------------------------

    def publish(self, frame: Frame) -> None:
        if not self.output:
            return
        try:
            nt = ntnda_from_frame(frame)
        except FrameError as exc:
            log.warning("cannot publish frame %d on %s: %s", frame.unique_id, self.output, exc)
            return
        if not self._output_ready:
            self._server.addRecord(self.output, nt)
            self._output_ready = True
        else:
            self._server.update(self.output, nt)

    # -- status ---------------------------------------------------------------------------

    def update_status(self, stats: Mapping[str, Any]) -> None:
        if not self.status:
            return
        t = time.time()
        flat: dict[str, Any] = {}
        for key, name, typ in self._fields:
            v = stats.get(key)
            if v is None:
                v = -1 if typ == pva.LONG else 0
            flat[name] = float(v) if typ == pva.DOUBLE else int(v)
        values: dict[str, Any] = {**self._id, "objectTime": t,
                                  "objectTimestamp": pva.PvTimeStamp(t),
                                  "statsJson": json.dumps(stats, default=str), **_nest(flat)}
        plugin = stats.get("plugin") or {}
        user = {}
        for k, typ in self._user_types.items():
            if k in plugin:
                v = plugin[k]
                user[k] = str(v) if typ == pva.STRING else (
                    float(v) if typ in (pva.DOUBLE, pva.FLOAT) else int(v))
        if user:
            values["userStats"] = user
        with self._lock:
            try:
                self._status.set(values)
            except Exception as exc:
                log.debug("status channel update failed: %s", exc)
            self._server.update(self.status, self._status)

    # -- control --------------------------------------------------------------------------

    def _set_control(self, message: str) -> None:
        t = time.time()
        with self._lock:
            self._control.set({"statusMessage": message, "objectTime": t,
                               "objectTimestamp": pva.PvTimeStamp(t)})

    def _on_control(self, pv: Any) -> None:
        try:
            command = pv["command"]
        except Exception:
            command = ""
        if command not in COMMANDS:
            self._set_control(f"Ignoring invalid request (unrecognized command "
                              f"specified): {command!r}")
            return
        raw = ""
        with contextlib.suppress(Exception):
            raw = pv["args"]
        args: dict[str, Any] = {}
        if raw:
            try:
                parsed = json.loads(raw)
                args = parsed if isinstance(parsed, dict) else {"args": parsed}
            except ValueError:
                args = {"args": raw}
        log.info("control channel: %s %s", command, args)
        if command == "stop":
            self._set_control(_DONE_MESSAGES[command])
            self._stop()
            return
        self._set_control("Command successful")
        fut = self._commands.submit(command, args)
        fut.add_done_callback(lambda f: self._finished(command, f))

    def _finished(self, command: str, fut: Future[Any]) -> None:
        """Runs on the loop thread, which set the future's result."""
        exc = fut.exception()
        if exc is not None:
            msg = {"configure": "Configuration failed"}.get(command, f"{command} failed")
            self._set_control(f"{msg}: {exc}")
            return
        if command == "get_stats":  # PvaPy's get_stats refreshes the status record
            self.update_status(fut.result() or {})
        self._set_control(_DONE_MESSAGES[command])

    def stop(self) -> None:
        try:
            self._server.stop()
        except Exception as exc:
            log.debug("stopping PVA server: %s", exc)
