"""Plugin API, loading by every route, and PvaPy UserDataProcessor compatibility (no Kafka)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pvaflow.processors.plugins.rotate import Rotate

from pvaflow.frame import Attribute, Frame
from pvaflow.plugin import (
    PluginError,
    Processor,
    PvaPyAdapter,
    find_class,
    load_processor,
    outputs,
)

HERE = Path(__file__).parent
PVAPY_PLUGIN = HERE / "processors" / "pvapy_rotate_plugin.py"


def frame(uid: int = 7, shape: tuple[int, ...] = (3, 4), dtype: str = "uint16") -> Frame:
    return Frame(np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape), unique_id=uid,
                 attributes=[Attribute("ColorMode", 0, "int")])


def test_processor_defaults_pass_frames_and_merge_configuration() -> None:
    p = Processor({"a": 1})
    f = frame()
    assert p.process(f) is f
    p.configure({"b": 2})
    assert p.config == {"a": 1, "b": 2}
    assert p.get_stats() == {}


def test_reexported_from_processors_package() -> None:
    from pvaflow.processors import Processor as P2

    assert P2 is Processor


def test_outputs_normalises_every_return_shape() -> None:
    f, g = frame(1), frame(2)
    assert outputs(None) == []
    assert outputs(f) == [f]
    assert outputs([f, None, g]) == [f, g]
    assert outputs(x for x in (f, g)) == [f, g]


def test_load_builtin_by_entry_point_name() -> None:
    p = load_processor("rotate", config={"k": 1})
    assert isinstance(p, Rotate) and p.config == {"k": 1}


@pytest.mark.parametrize("spec", ["pvaflow.processors.plugins.rotate:Rotate",
                                  "pvaflow.processors.plugins.rotate.Rotate"])
def test_load_by_module_and_class(spec: str) -> None:
    assert isinstance(load_processor(spec), Rotate)


def test_load_by_file_and_class(tmp_path: Path) -> None:
    src = tmp_path / "mine.py"
    src.write_text("from pvaflow.processors import Processor\n"
                   "class Double(Processor):\n"
                   "    def process(self, frame):\n"
                   "        return [frame, frame]\n")
    p = load_processor(file=str(src), class_name="Double")
    assert len(outputs(p.process(frame()))) == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"spec": "no-such-plugin"}, "no plugin named 'no-such-plugin'"),
    ({"spec": "no_such_module:X"}, "cannot import"),
    ({"spec": "pvaflow.processors.plugins.rotate:Nope"}, "has no 'Nope'"),
    ({"file": "/nonexistent/p.py", "class_name": "X"}, "does not exist"),
    ({"file": str(PVAPY_PLUGIN)}, "needs a class name"),
    ({"file": str(PVAPY_PLUGIN), "class_name": "Missing"}, "defines no class"),
    ({}, "no plugin given"),
    ({"spec": "builtins:dict"}, "neither a pvaflow Processor nor a PvaPy"),
])
def test_load_errors_say_what_is_wrong(kwargs: dict, message: str) -> None:
    with pytest.raises(PluginError, match=message):
        load_processor(**kwargs)


def test_unknown_name_lists_installed_plugins() -> None:
    with pytest.raises(PluginError) as info:
        find_class("nope")
    assert "passthrough" in str(info.value) and "rotate" in str(info.value)


def test_pvapy_plugin_file_runs_unchanged() -> None:
    p = load_processor(file=str(PVAPY_PLUGIN), class_name="HpcAdImageProcessor")
    assert isinstance(p, PvaPyAdapter)
    p.start()
    assert p.inner.started
    f = frame(uid=11)
    [out] = outputs(p.process(f))
    assert out.unique_id == 11
    assert out.shape == (4, 3)
    np.testing.assert_array_equal(out.array, f.array.T)
    assert out.attribute("ColorMode") == 0
    p.configure({"x": 100})
    stats = p.get_stats()
    assert stats["nProcessed"] == 1 and stats["lastConfigX"] == 100
    assert type(stats["processingTime"]) is float  # FloatWithUnits became a plain number
    p.reset_stats()
    assert p.get_stats()["nProcessed"] == 0
    p.stop()


def test_pvapy_base_class_by_dotted_name_passes_frames_through() -> None:
    p = load_processor(class_name="pvapy.hpc.userDataProcessor.UserDataProcessor")
    [out] = outputs(p.process(frame(uid=3, dtype="float32")))
    assert out.unique_id == 3 and out.dtype == np.float32
    np.testing.assert_array_equal(out.array, frame(dtype="float32").array)


def test_pvapy_plugin_that_only_returns_or_publishes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "ret.py"
    src.write_text(
        "from pvapy.hpc.userDataProcessor import UserDataProcessor\n"
        "class Returns(UserDataProcessor):\n"
        "    def process(self, pv):\n"
        "        pv['uniqueId'] = pv['uniqueId'] + 1000\n"
        "        return pv\n"
        "class Drops(UserDataProcessor):\n"
        "    def process(self, pv):\n"
        "        return None\n")
    [out] = outputs(load_processor(file=str(src), class_name="Returns").process(frame(uid=5)))
    assert out.unique_id == 1005
    assert outputs(load_processor(file=str(src), class_name="Drops").process(frame())) == []


def test_pvapy_plugin_exceptions_propagate_to_the_runner(tmp_path: Path) -> None:
    src = tmp_path / "bad.py"
    src.write_text("from pvapy.hpc.userDataProcessor import UserDataProcessor\n"
                   "class Bad(UserDataProcessor):\n"
                   "    def process(self, pv):\n"
                   "        raise ValueError('boom')\n")
    with pytest.raises(ValueError, match="boom"):
        load_processor(file=str(src), class_name="Bad").process(frame())
