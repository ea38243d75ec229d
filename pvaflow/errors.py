"""The one error root of pvaflow, and the exit code each kind of failure means.

Every failure a user can cause or meet (a wrong option, an unreachable broker, a bad frame, a
plugin that will not load) is a :class:`PvaflowError`. The component lifecycle and every command
catch exactly this root and print its :meth:`~PvaflowError.line` as the one line a user reads,
then exit with its :attr:`~PvaflowError.exit_code`; anything else is a bug and keeps its
traceback.

>>> err = KafkaUnavailable("cannot reach Kafka at 127.0.0.1:9092",
...                        hint="start one with `pvaflow broker run`")
>>> err.line()
'cannot reach Kafka at 127.0.0.1:9092; start one with `pvaflow broker run`'
>>> err.exit_code
3
"""

from __future__ import annotations

# Exit codes, shared by every command (documented in docs/operations.md).
EXIT_OK = 0
EXIT_FAILURE = 1  # the run failed (a fatal Kafka error, a sink that broke, ...)
EXIT_USAGE = 2  # the command line or a configuration cannot work
EXIT_KAFKA_UNAVAILABLE = 3  # Kafka could not be reached, or was lost for good


class PvaflowError(Exception):
    """Root of every error pvaflow reports to a user: a message and what to do about it."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def line(self) -> str:
        """The one line a user reads: what happened, then what to do."""
        return f"{self.message}; {self.hint}" if self.hint else self.message


class UsageError(PvaflowError):
    """The command line asks for something that cannot work (argparse-level mistakes)."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A setting (``-X``, a pipeline file, an option combination) that cannot work."""


class TopicError(ConfigError):
    """A topic exists with a shape that contradicts what the command was asked for."""


class PluginError(UsageError):
    """A processor plugin could not be found, imported or constructed."""


class KafkaUnavailable(PvaflowError):
    """Kafka could not be reached at start, or stayed unreachable past the bounded retry."""

    exit_code = EXIT_KAFKA_UNAVAILABLE


class KafkaFailure(PvaflowError):
    """Kafka answered with an error the component cannot recover from (fenced, denied)."""


class FrameError(PvaflowError, ValueError):
    """A record that is not a valid pvaflow frame; ``reason`` is short and goes to the DLQ."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SchemaError(PvaflowError):
    """A component's stats do not carry the keys its status schema promises the monitor."""
