"""The one exception of the launcher, in its own module so every part can raise it without
importing the others."""

from __future__ import annotations

from pvaflow.errors import PvaflowError


class BrokerError(PvaflowError):
    """The broker could not be fetched, started or stopped; the message says why."""
