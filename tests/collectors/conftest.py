"""Fixtures of the collector's integration tests (defined in helpers, shared with the
monitor and control CLI tests)."""

from .helpers import ctl, procs

__all__ = ["ctl", "procs"]
