"""Plugin API and loading, shared by processors and collectors.

It lives in the core (not in ``pvaflow.processors``) because the collector loads its plugins
with the same API and wings never import each other. Three ways to name a plugin:

* an entry point in group ``pvaflow.processors`` (installable plugin packages): ``rotate``;
* ``module:Class`` (or PvaPy's dotted ``module.Class``);
* a Python file plus a class name (PvaPy's ``--processor-file`` / ``--processor-class``).

A class written against PvaPy's ``UserDataProcessor`` is wrapped in :class:`PvaPyAdapter`,
so it runs unchanged: it gets an ``NtNdArray`` and what it publishes becomes the output.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import math
import sys
from collections.abc import Iterable
from dataclasses import replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PluginError
from .frame import Frame

ENTRY_POINT_GROUP = "pvaflow.processors"

Output = Frame | Iterable[Frame] | None
StatValue = float | int | str

# Attributes whose source is a metadata channel (the bridge's -mc) and how many of their
# values a PvaPy plugin's metadataQueueMap holds per channel (PvaPy's own default).
METADATA_SOURCES = ("pva://", "ca://")
METADATA_QUEUE_SIZE = 1000


class Processor:
    """Base class of pvaflow plugins. Override ``process``; the rest is optional.

    ``process`` returns the output frame, several frames (any iterable), or ``None`` (nothing
    to publish). Raising sends the input frame to the dead-letter topic with the exception as
    the reason; processing then goes on with the next frame.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config: dict[str, Any] = dict(config or {})
        self.log = logging.getLogger(f"pvaflow.plugin.{type(self).__name__}")

    def start(self) -> None:
        """Called once before the first frame (open files, allocate buffers)."""

    def configure(self, config: dict[str, Any]) -> None:
        """Runtime reconfiguration (control command ``configure``); default merges keys."""
        self.config.update(config)

    def process(self, frame: Frame) -> Output:
        return frame

    def process_batch(self, frames: list[Frame]) -> Output:
        """Optional: override to get frames in batches (``--accumulate-objects N``,
        ``--accumulation-timeout SECONDS``): up to N frames at once, fewer when no frame
        arrived for SECONDS. Return every output of the batch (one frame, an iterable, or
        ``None``). Raising sends every frame of the batch to the dead-letter topic. Without
        an override, frames are accumulated the same way and handed to ``process`` one by
        one, as PvaPy does."""
        out: list[Frame] = []
        for frame in frames:
            out += outputs(self.process(frame))
        return out

    def stop(self) -> None:
        """Called once at shutdown, after the last frame."""

    def reset_stats(self) -> None:
        """Control command ``reset_stats``."""

    def get_stats(self) -> dict[str, StatValue]:
        """Plugin-specific statistics, merged into the component's status under ``plugin``."""
        return {}


def takes_batches(processor: Processor) -> bool:
    """Whether ``processor`` overrides :meth:`Processor.process_batch`."""
    return type(processor).process_batch is not Processor.process_batch


def object_id(frame: Frame, field: str = "uniqueId") -> int | None:
    """PvaPy's ``--oid-field``: the frame's ``uniqueId``, or the integer value of the
    NTNDArray attribute named ``field`` (``None`` when the frame has no such attribute or its
    value is not a whole number)."""
    if field == "uniqueId":
        return frame.unique_id
    for attr in frame.attributes:
        if attr.name == field:
            value = attr.value
            if isinstance(value, bool):
                return None
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            try:
                return int(str(value))
            except ValueError:
                return None
    return None


def outputs(result: Output) -> list[Frame]:
    """Normalise what ``process`` returned to a list of frames."""
    if result is None:
        return []
    if isinstance(result, Frame):
        return [result]
    return [f for f in result if f is not None]


# -- PvaPy compatibility ---------------------------------------------------------------------

class _Publisher:
    """Stands in for PvaPy's DataPublisher: collects what ``updateOutputChannel`` publishes."""

    def __init__(self) -> None:
        self.published: list[Any] = []

    def updateOutputChannel(self, pv_object: Any) -> None:  # PvaPy spelling
        self.published.append(pv_object)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class PvaPyAdapter(Processor):
    """Runs a PvaPy ``UserDataProcessor`` instance as a :class:`Processor`.

    The frame goes in as a ``pvaccess.NtNdArray``; the objects the plugin passes to
    ``updateOutputChannel`` become the output frames, or, if it publishes nothing, the object
    it returns. Its ``getStats`` values (PvaPy's ``FloatWithUnits`` included) are reported as
    plain numbers.

    Metadata: PvaPy hands a plugin its metadata channels as ``metadataQueueMap``, a dict of
    ``PvObjectQueue`` (objects with ``value`` and ``timeStamp``) keyed by channel name. Here
    the bridge joined those values to the frames already (attributes whose ``source`` is
    ``pva://NAME`` or ``ca://NAME``); before each ``process`` call they are put into
    ``metadataQueueMap[NAME]`` too (a queue appears with a channel's first value; each holds
    the latest METADATA_QUEUE_SIZE values), so a PvaPy metadata plugin runs unchanged. The
    attributes also stay on the NtNdArray the plugin gets.
    """

    def __init__(self, inner: Any, config: dict[str, Any] | None = None,
                 processor_id: int = 1, output_channel: str = "pvaflow:output") -> None:
        super().__init__(config)
        self.inner = inner
        self._publisher = _Publisher()
        # The attributes PvaPy's DataProcessingController sets before start().
        inner.processorId = processor_id
        inner.objectIdField = "uniqueId"
        inner.inputChannel = getattr(inner, "inputChannel", None) or ""
        inner.outputChannel = output_channel
        inner.dataPublisher = self._publisher
        if not hasattr(inner, "pvaServer"):
            inner.pvaServer = None
        self.metadata_queues: dict[str, Any] = {}
        inner.metadataQueueMap = self.metadata_queues  # as PvaPy's consumer sets it
        if not hasattr(inner, "logger"):
            inner.logger = logging.getLogger(type(inner).__name__)

    def start(self) -> None:
        self.inner.start()

    def configure(self, config: dict[str, Any]) -> None:
        self.inner.configure(config)

    def process(self, frame: Frame) -> Output:
        from .ntnda import ntnda_from_frame

        published = self._publisher.published
        published.clear()
        self._queue_metadata(frame)
        # The NTNDArray as PvaPy would hand it over: a compressed frame keeps its payload and
        # codec fields (AdImageUtility.reshapeNtNdArray decompresses it); nothing is decoded.
        returned = self.inner.process(ntnda_from_frame(frame))
        objects = list(published) or ([returned] if returned is not None else [])
        published.clear()
        origin = frame.codec.name if frame.codec is not None else frame.origin_codec
        return [_frame_of_output(nt, frame.source, origin) for nt in objects]

    def _queue_metadata(self, frame: Frame) -> None:
        import pvaccess as pva

        from .ntnda import value_pv

        for a in frame.attributes:
            if not a.source.startswith(METADATA_SOURCES):
                continue
            name = a.source.split("://", 1)[1]
            queue = self.metadata_queues.get(name)
            if queue is None:
                queue = self.metadata_queues[name] = pva.PvObjectQueue(METADATA_QUEUE_SIZE)
            pv = value_pv(a)
            try:
                queue.put(pv)
            except pva.QueueFull:  # the plugin does not read it: keep the latest values
                queue.get(0)
                queue.put(pv)

    def stop(self) -> None:
        self.inner.stop()

    def reset_stats(self) -> None:
        self.inner.resetStats()

    def get_stats(self) -> dict[str, StatValue]:
        stats = self.inner.getStats() or {}
        return {str(k): _plain(v) for k, v in stats.items()}


def _frame_of_output(nt: Any, source: str, origin: str | None) -> Frame:
    """A frame (owning its buffer) from an NTNDArray a PvaPy plugin published.

    New pixels in an NTNDArray that came in compressed are marked as derived from its codec,
    so the stage's ``--output-codec same`` compresses them again. AdImageUtility's
    ``replaceNtNdArrayImage2D`` puts pixels into the input NTNDArray without clearing its
    codec fields: an array still naming a codec whose value holds exactly the image's pixels
    (elements of the codec's type, as many as the image has; no blosc, lz4 or bslz4 payload is
    ever exactly the uncompressed size) is read as the uncompressed image it is."""
    from .ntnda import frame_from_ntnda

    f = frame_from_ntnda(nt, source=source)
    codec = f.codec
    if codec is not None and f.array.nbytes == codec.uncompressed_size:
        (_field, data), = nt["value"][0].items()
        pixels = np.asarray(data)
        if pixels.dtype == codec.dtype and pixels.size == math.prod(codec.shape):
            f = replace(f, array=pixels.reshape(codec.shape), codec=None)
    # frame_from_ntnda is a view over the pvapy object, which dies with this call.
    f = replace(f, array=f.array.copy())
    if f.codec is None and origin is not None:
        f.origin_codec = origin
    return f


def _plain(value: Any) -> StatValue:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def is_pvapy_processor(obj: Any) -> bool:
    """PvaPy plugins are recognised by their camelCase interface, without importing pvapy."""
    return not isinstance(obj, Processor) and all(
        callable(getattr(obj, name, None)) for name in ("process", "getStats", "resetStats")
    )


# -- loading ---------------------------------------------------------------------------------

def load_processor(
    spec: str | None = None,
    *,
    file: str | None = None,
    class_name: str | None = None,
    config: dict[str, Any] | None = None,
    group: str = ENTRY_POINT_GROUP,
) -> Processor:
    """Instantiate a plugin by entry-point name, ``module:Class``, or file + class.

    ``class_name`` alone may be dotted (``pvapy.hpc.userDataProcessor.UserDataProcessor``), as
    PvaPy's ``--processor-class`` accepts. PvaPy classes come back wrapped in
    :class:`PvaPyAdapter`. ``group`` lets the collector use its own entry-point group.
    """
    if file:
        if not class_name:
            raise PluginError("a processor file needs a class name (--processor-class)")
        cls = getattr(_import_file(file), class_name, None)
        if cls is None:
            raise PluginError(f"{file} defines no class {class_name!r}")
    elif spec or class_name:
        cls = find_class(spec or class_name or "", group)
    else:
        raise PluginError("no plugin given: use --processor NAME|module:Class or "
                          "--processor-file FILE --processor-class NAME")
    return instantiate(cls, config)


def instantiate(cls: Any, config: dict[str, Any] | None = None) -> Processor:
    conf = dict(config or {})
    try:
        obj = cls(conf)
    except Exception as exc:
        raise PluginError(f"cannot create {getattr(cls, '__name__', cls)}: {exc}") from exc
    if isinstance(obj, Processor):
        return obj
    if is_pvapy_processor(obj):
        return PvaPyAdapter(obj, conf)
    raise PluginError(f"{type(obj).__name__} is neither a pvaflow Processor nor a PvaPy "
                      "UserDataProcessor")


def find_class(spec: str, group: str = ENTRY_POINT_GROUP) -> Any:
    """Entry point first (a bare name), then ``module:Class``, then ``module.Class``."""
    eps = {ep.name: ep for ep in entry_points(group=group)}
    if spec in eps:
        try:
            return eps[spec].load()
        except Exception as exc:
            raise PluginError(f"entry point {spec!r} ({eps[spec].value}) failed: {exc}") from exc
    if ":" in spec:
        module, _, attr = spec.partition(":")
    elif "." in spec:
        module, _, attr = spec.rpartition(".")
    else:
        known = ", ".join(sorted(eps)) or "none installed"
        raise PluginError(f"no plugin named {spec!r} in entry points {group} ({known})")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise PluginError(f"cannot import {module!r} for plugin {spec!r}: {exc}") from exc
    cls: Any = mod
    for part in attr.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            raise PluginError(f"module {module!r} has no {attr!r}")
    return cls


def _import_file(path: str) -> Any:
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise PluginError(f"processor file {path} does not exist")
    name = "pvaflow_user_" + hashlib.sha1(str(p).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise PluginError(f"importing {path} failed: {exc}") from exc
    return module
