"""Control commands from any thread (control topic agent, PVA control channel), executed on
the runner thread between batches: the plugin is never called from two threads at once."""

from __future__ import annotations

import queue
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

Executor = Callable[[str, dict[str, Any]], Mapping[str, Any] | None]


class CommandBus:
    def __init__(self) -> None:
        self._q: queue.SimpleQueue[tuple[str, dict[str, Any], Future[Any]]] = queue.SimpleQueue()

    def submit(self, command: str, args: dict[str, Any] | None = None) -> Future[Any]:
        fut: Future[Any] = Future()
        self._q.put((command, dict(args or {}), fut))
        return fut

    def call(self, command: str, args: dict[str, Any] | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        """Submit and wait: what the control agent's handler does."""
        return dict(self.submit(command, args).result(timeout) or {})

    def run_pending(self, execute: Executor) -> None:
        while True:
            try:
                command, args, fut = self._q.get_nowait()
            except queue.Empty:
                return
            try:
                fut.set_result(execute(command, args))
            except Exception as exc:
                fut.set_exception(exc)
