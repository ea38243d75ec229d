"""The one component lifecycle: every long-running pvaflow process is a :class:`Component`
driven by :func:`run_component`.

A wing writes what its stage does (``start``, one bounded ``step`` of work, its stats, its
commands, ``close``); the lifecycle owns everything every stage needs the same way: signals,
the runtime, the report period, the control agent and status publishing, Prometheus, the
cluster's health, the final report, and turning any :class:`~pvaflow.errors.PvaflowError`
into one clear line and its exit code. So no wing hand-writes a loop, a signal handler or a
control dispatcher, and a stage behaves like every other one when the broker is missing, when
it is asked to stop, or when its time is up.

The loop, on the main thread::

    check Kafka is reachable  ->  component.start(ctx)  ->  metrics, control agent
    while not stopping:  component.step()  ->  pending commands  ->  Kafka health  ->  report
    component.close()  ->  final status  ->  final report  ->  exit code

Commands (configure, reset_stats, get_stats) run on that same thread between two steps;
``stop`` (a signal, the control topic, or the PVA control channel) only sets ``ctx.stop``.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

from confluent_kafka import KafkaException, Producer
from prometheus_client import REGISTRY
from prometheus_client.registry import Collector

from . import metrics
from .control import CONTROL_TOPIC, STATUS_TOPIC, CommandBus, ComponentId, ControlAgent
from .errors import EXIT_OK, KafkaFailure, PvaflowError
from .kafka.client import Kafka
from .kafka.produce import OnFull, Sender
from .options import set_log_identity
from .status import StatusSchema

log = logging.getLogger(__name__)

TICK = 0.2  # seconds: the longest a step should take, so stop and commands are prompt


@dataclass
class Context:
    """What the lifecycle hands a component at start."""

    kafka: Kafka
    stop: threading.Event = field(default_factory=threading.Event)
    commands: CommandBus = field(default_factory=CommandBus)

    def sender(self, producer: Producer, *, on_full: OnFull, max_wait: float | None = None,
               serve: Callable[[float], Any] | None = None,
               conf: Mapping[str, Any] | None = None) -> Sender:
        """The produce-with-backpressure policy, bound to this run's stop and health; given
        the producer's ``conf``, its batch size follows the first record's size."""
        return Sender(producer, stop=self.stop, max_wait=max_wait, on_full=on_full,
                      health=self.kafka.health, serve=serve,
                      resize=None if conf is None else self.kafka.resizer(conf))


class Component(Protocol):
    """One stage of the pipeline. ``start`` does all the I/O (constructors do none)."""

    identity: ComponentId
    schema: StatusSchema

    def start(self, ctx: Context) -> None:
        """Create topics and clients, load state, start threads; raise PvaflowError if it
        cannot work."""

    def step(self) -> None:
        """One bounded turn of work (at most about :data:`TICK` seconds)."""

    def stats(self) -> dict[str, Any]:
        """The status dict (keys per :attr:`schema`); called from any thread."""

    def configure(self, args: dict[str, Any]) -> Mapping[str, Any] | None:
        """Runtime reconfiguration (the ``configure`` command)."""

    def reset_stats(self) -> None:
        """The ``reset_stats`` command."""

    def report(self, final: bool = False) -> str:
        """The periodic report printed on stdout ('' prints nothing)."""

    def metrics(self) -> Collector | None:
        """Prometheus metrics of this component, read at scrape time."""

    def ready(self) -> str | None:
        """None when connected and working (``/readyz`` 200), else why not; any thread."""

    def close(self) -> int:
        """Drain, flush and release everything; return the exit code."""


@dataclass
class RunOptions:
    """The options every component shares (:func:`pvaflow.options.add_run_args`)."""

    prog: str
    runtime: float = 0.0
    report_period: float = 10.0
    metrics_port: int | None = None
    stall_after: float = metrics.STALL_AFTER
    control_topic: str | None = CONTROL_TOPIC
    status_topic: str | None = STATUS_TOPIC

    @classmethod
    def from_args(cls, prog: str, args: Any) -> RunOptions:
        return cls(prog, runtime=args.runtime, report_period=args.report_period,
                   metrics_port=args.metrics_port,
                   stall_after=getattr(args, "stall_after", metrics.STALL_AFTER),
                   control_topic=getattr(args, "control_topic", None) or None,
                   status_topic=getattr(args, "status_topic", None) or None)


def fail(prog: str, exc: PvaflowError) -> int:
    """Print ``exc`` as the one line a user reads; return its exit code."""
    print(f"{prog}: error: {exc.line()}", file=sys.stderr, flush=True)
    return exc.exit_code


def as_pvaflow_error(exc: KafkaException, kafka: Kafka) -> PvaflowError:
    """A Kafka exception that escaped a component, as the one line it deserves."""
    if not kafka.health.reachable or kafka.health.auth_failed:
        return kafka.health.unavailable("lost Kafka", kafka.bootstrap)
    return KafkaFailure(f"Kafka error: {exc.args[0] if exc.args else exc}")


def run_command(prog: str, body: Callable[[], int]) -> int:
    """For commands that are not components (status, control, run, ...): the same one-line
    errors and exit codes."""
    try:
        return body()
    except PvaflowError as exc:
        return fail(prog, exc)
    except KeyboardInterrupt:
        return 130


def run_component(component: Component, options: RunOptions, kafka: Kafka) -> int:
    """Run ``component`` until it is stopped or its runtime ends; returns the exit code."""
    ctx = Context(kafka)
    ident = component.identity
    set_log_identity(ident.kind, ident.group, ident.id)
    previous = _install_signals(ctx.stop, options.prog)
    agent: ControlAgent | None = None
    collector: Collector | None = None
    started = False
    code = EXIT_OK
    # Probes answer from the start: /healthz stays green while start() waits (for a topic,
    # a channel), /readyz says "starting" until the component's own condition holds.
    probes = metrics.Probes(float("inf"))
    kafka_cpu = metrics.KafkaThreadsCpu(ident.kind) if options.metrics_port is not None else None
    try:
        if kafka_cpu is not None:
            # librdkafka's threads are per process: a second component here adds nothing
            try:
                REGISTRY.register(kafka_cpu)
            except ValueError:
                kafka_cpu = None
        metrics.serve(options.metrics_port, probes=probes)
        kafka.check_reachable()
        component.start(ctx)
        started = True
        probes.stall_after = options.stall_after
        probes.beat()
        probes.not_ready = lambda: _not_ready(component, kafka)
        collector = component.metrics()
        if collector is not None:
            REGISTRY.register(collector)
        if options.control_topic and options.status_topic:
            agent = ControlAgent(
                ident, handler=ctx.commands.call, stats=component.stats, kafka=kafka,
                schema=component.schema, control_topic=options.control_topic,
                status_topic=options.status_topic,
                report_period=options.report_period or 10.0, on_stop=ctx.stop.set).start()
        _loop(component, ctx, options, probes)
    except PvaflowError as exc:
        code = fail(options.prog, exc)
    except KafkaException as exc:
        code = fail(options.prog, as_pvaflow_error(exc, kafka))
    except KeyboardInterrupt:  # a second signal: no clean stop wanted, no traceback either
        code = 130
    finally:
        ctx.stop.set()
        if started:
            code = _close(component, options, kafka, code)
        if agent is not None:
            agent.close(flush_timeout=10.0 if kafka.health.reachable else 1.0)
        for registered in (collector, kafka_cpu):
            if registered is not None:
                REGISTRY.unregister(registered)
        _restore_signals(previous)
    return code


def _not_ready(component: Component, kafka: Kafka) -> str | None:
    if not kafka.health.reachable:
        return f"Kafka at {kafka.bootstrap} unreachable ({kafka.health.cause})"
    return component.ready()


def _loop(component: Component, ctx: Context, options: RunOptions,
          probes: metrics.Probes) -> None:
    now = time.monotonic()
    deadline = now + options.runtime if options.runtime > 0 else float("inf")
    period = options.report_period
    next_report = now + period if period > 0 else float("inf")

    def execute(command: str, args: dict[str, Any]) -> Mapping[str, Any] | None:
        log.info("command %s %s", command, args)
        if command == "configure":
            return component.configure(args)
        if command == "reset_stats":
            component.reset_stats()
            return {}
        if command == "get_stats":
            return component.stats()
        raise ValueError(f"unknown command {command!r}")

    while not ctx.stop.is_set():
        probes.beat()
        component.step()
        ctx.commands.run_pending(execute)
        ctx.kafka.health.check()
        now = time.monotonic()
        if now >= deadline:
            log.info("runtime of %g s reached: stopping", options.runtime)
            break
        if now >= next_report:
            next_report = now + period
            _print(component.report())


def _close(component: Component, options: RunOptions, kafka: Kafka, code: int) -> int:
    try:
        closed = component.close()
    except PvaflowError as exc:
        closed = fail(options.prog, exc)
    except KafkaException as exc:
        closed = fail(options.prog, as_pvaflow_error(exc, kafka))
    _print(component.report(final=True))
    return code or closed


def _print(text: str) -> None:
    if text:
        print(text, flush=True)


_Handlers = dict[int, Any]


def _install_signals(stop: threading.Event, prog: str) -> _Handlers:
    """SIGINT/SIGTERM ask for a clean stop; a second one stops waiting for it."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            log.warning("%s again: not waiting for a clean stop", signal.Signals(signum).name)
            raise KeyboardInterrupt
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    return {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(previous: _Handlers) -> None:
    for s, handler in previous.items():
        signal.signal(s, handler)
