"""Codec throughput: pvaflow's native frame format vs ESS ``ad00`` FlatBuffers vs a plain copy.

Run: ``.venv/bin/python -m benchmarks.codec`` (about a minute). Writes the ``codec`` section of
docs/performance.md, docs/img/codec.png and benchmarks/results/codec.json.

What one iteration counts, per method (frames cycle through a pool larger than the L3 cache,
so every iteration reads pixels from DRAM, as a frame just received from the network would be):

* ``copy (np.copyto)``: copy the frame's bytes into a preallocated buffer: memory bandwidth.
* ``copy (tobytes)``: ``array.tobytes()``: allocate + copy, the one copy a Kafka client makes.
* ``native encode+decode``: ``encode(frame)`` + ``value.tobytes()`` (stands in for the copy the
  client forces: ``produce()`` copies the value into librdkafka, and a consumer's
  ``msg.value()`` is a fresh ``bytes``) + ``decode(key, bytes, headers)``, which returns a
  view. Nothing else touches the pixels.
* ``native encode+produce()``: ``encode(frame)`` + a real confluent-kafka ``produce()`` (its
  copy into librdkafka), producer pointed at no broker; queued messages are purged once a
  batch.size (4 MiB) is held, as broker acks would free them. No decode.
* ``ad00 serialise+deserialise``: ``serialise_ad00(...)`` + ``deserialise_ad00(bytes)``. ad00
  is *not* charged a transport copy (its bytes go straight to the deserialiser), so the
  native/ad00 ratio is conservative.

Both formats carry the same three attributes (int, double, string) and a timestamp.
Every (malloc setting, frame size, method) is measured in its own fresh child process: glibc
reads its malloc settings at start-up, and its dynamic mmap threshold remembers earlier large
frees, so a method measured after another inherits that method's allocator state (ad00 went
from ~135 to ~1,400 frames/s at 2 MiB just by running after the copy benchmarks).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.report import IMG, median_rate, table, write_section
from pvaflow.kafka.settings import PRODUCER_DEFAULTS

MiB = 1024 * 1024
POOL_BYTES = 64 * MiB  # > 2x the 32 MiB L3 of the reference machine
# Purge the no-broker producer once one batch.size is queued: what broker acks would free.
PRODUCE_WINDOW = int(PRODUCER_DEFAULTS["batch.size"])

SIZES: dict[str, tuple[tuple[int, int], str]] = {
    "16 KiB": ((128, 128), "uint8"),
    "2 MiB": ((1024, 1024), "uint16"),
    "8 MiB": ((2048, 2048), "uint16"),
}
METHODS = [
    "copy (np.copyto)",
    "copy (tobytes)",
    "native encode+decode",
    "native encode+produce()",
    "ad00 serialise+deserialise",
]
# glibc malloc settings (environment, read at process start).
MALLOC: dict[str, dict[str, str]] = {
    "glibc default": {},
    "mmap every buffer >128 KiB": {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)},
    "heap only, no trim": {
        "MALLOC_MMAP_THRESHOLD_": str(32 * MiB),  # glibc's documented maximum on 64-bit
        "MALLOC_TRIM_THRESHOLD_": str(1024 * MiB),
    },
}


# -- the measured operations (child process) -----------------------------------------------

def _frames(size: str) -> list[Any]:
    from pvaflow.frame import Attribute, EpicsTime, Frame

    shape, dtype = SIZES[size]
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    out = []
    for i in range(max(4, POOL_BYTES // nbytes)):
        array = rng.integers(0, int(info.max) + 1, shape, dtype=dtype)
        out.append(Frame(
            array, unique_id=i + 1, timestamp=EpicsTime(1_700_000_000, i, 0),
            data_timestamp=EpicsTime(1_700_000_000, i, 0), source="13SIM1:Pva1:Image",
            attributes=[Attribute("ColorMode", 0, "int"),
                        Attribute("Temperature", 21.5, "double"),
                        Attribute("Mode", "continuous", "string")],
        ))
    return out


def _operations(size: str) -> dict[str, Callable[[], int]]:
    from confluent_kafka import Producer
    from streaming_data_types.area_detector_ad00 import (
        Attribute as AdAttribute,
    )
    from streaming_data_types.area_detector_ad00 import (
        deserialise_ad00,
        serialise_ad00,
    )

    from pvaflow.codec import decode, encode
    from pvaflow.kafka.settings import producer_config

    frames = _frames(size)
    n = len(frames)
    nbytes = frames[0].array.nbytes
    ad_attrs = [AdAttribute("ColorMode", "", "", 0), AdAttribute("Temperature", "", "", 21.5),
                AdAttribute("Mode", "", "", "continuous")]
    dst = np.empty_like(frames[0].array)
    state = {"i": 0, "queued": 0}

    def nxt() -> Any:
        state["i"] = (state["i"] + 1) % n
        return frames[state["i"]]

    def copyto() -> int:
        np.copyto(dst, nxt().array)
        return 1

    def tobytes() -> int:
        nxt().array.tobytes()
        return 1

    def native() -> int:
        key, value, headers = encode(nxt())
        decode(key, value.tobytes(), headers)
        return 1

    quiet = logging.getLogger("pvaflow.bench.librdkafka")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    producer = Producer(producer_config(
        "127.0.0.1:9", {"enable.idempotence": False, "linger.ms": 60_000,
                        "queue.buffering.max.kbytes": 1024 * 1024,
                        "queue.buffering.max.messages": 1_000_000}), logger=quiet)

    def produce() -> int:
        key, value, headers = encode(nxt())
        producer.produce("bench", value, key=key, headers=headers)  # type: ignore[arg-type]
        state["queued"] += nbytes
        if state["queued"] >= PRODUCE_WINDOW:
            producer.purge(in_queue=True, in_flight=False)
            producer.poll(0)
            state["queued"] = 0
        return 1

    def ad00() -> int:
        f = nxt()
        ts = f.timestamp.seconds * 1_000_000_000 + f.timestamp.nanoseconds
        buf = serialise_ad00(f.source, f.unique_id, ts, f.array, ad_attrs)
        deserialise_ad00(buf)
        return 1

    # the two formats must carry the same pixels
    f0 = frames[0]
    k, v, h = encode(f0)
    assert np.array_equal(decode(k, v.tobytes(), h).array, f0.array)
    assert np.array_equal(deserialise_ad00(serialise_ad00("s", 1, 0, f0.array, ad_attrs)).data,
                          f0.array)
    return dict(zip(METHODS, (copyto, tobytes, native, produce, ad00), strict=True))


def measure(sizes: list[str], methods: list[str], repeats: int, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in sizes:
        ops = _operations(size)
        shape, dtype = SIZES[size]
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        out[size] = {"bytes": nbytes, "fps": {}, "faults": {}}
        for m in methods:
            op = ops[m]
            median_rate(op, repeats=1, min_seconds=0.1)  # warm up
            count = [0]

            def counted(op: Callable[[], int] = op, count: list[int] = count) -> int:
                count[0] += 1
                return op()

            faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            fps = median_rate(counted, repeats=repeats, min_seconds=seconds)
            faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / count[0]
            out[size]["fps"][m] = fps
            out[size]["faults"][m] = faults
            print(f"  {size:>6} {m:<28} {fps:>12,.0f} fps {fps * nbytes / 1e9:7.2f} GB/s "
                  f"{faults:9.1f} page faults/frame", file=sys.stderr, flush=True)
    return out


# -- orchestration (parent process) --------------------------------------------------------

def run_child(setting: str, size: str, method: str, repeats: int,
              seconds: float) -> dict[str, Any]:
    """One measurement in a fresh process with ``setting``'s malloc environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(MALLOC[setting])
    cmd = [sys.executable, "-m", "benchmarks.codec", "--child", json.dumps(
        {"sizes": [size], "methods": [method], "repeats": repeats, "seconds": seconds})]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, check=True, text=True)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run_setting(setting: str, sizes: list[str], methods: list[str], repeats: int,
                seconds: float) -> dict[str, Any]:
    print(f"[{setting}] {' '.join(f'{k}={v}' for k, v in MALLOC[setting].items())}",
          file=sys.stderr, flush=True)
    out: dict[str, Any] = {}
    for size in sizes:
        for method in methods:
            r = run_child(setting, size, method, repeats, seconds)[size]
            d = out.setdefault(size, {"bytes": r["bytes"], "fps": {}, "faults": {}})
            d["fps"].update(r["fps"])
            d["faults"].update(r["faults"])
    return out


def gbs(size_data: dict[str, Any], method: str) -> float:
    return float(size_data["fps"][method] * size_data["bytes"] / 1e9)


def plot(main: dict[str, Any], malloc: dict[str, dict[str, Any]], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [3, 2]})
    sizes = list(main)
    width = 0.8 / len(METHODS)
    colors = ["#9e9e9e", "#616161", "#1f77b4", "#6baed6", "#d62728"]
    for j, m in enumerate(METHODS):
        xs = [i + (j - (len(METHODS) - 1) / 2) * width for i in range(len(sizes))]
        ys = [gbs(main[s], m) for s in sizes]
        bars = ax1.bar(xs, ys, width, label=m, color=colors[j])
        for b, s in zip(bars, sizes, strict=True):
            ax1.annotate(f"{main[s]['fps'][m]:,.0f}", (b.get_x() + b.get_width() / 2,
                         b.get_height()), ha="center", va="bottom", fontsize=6, rotation=90)
    ax1.set_yscale("log")
    ax1.set_ylim(top=max(gbs(main[s], m) for s in sizes for m in METHODS) * 4)
    ax1.set_xticks(range(len(sizes)), [f"{s} frame" for s in sizes])
    ax1.set_ylabel("GB/s (log); labels: frames/s")
    ax1.set_title("throughput by frame size (glibc default malloc)")

    settings = list(malloc)
    methods = ["copy (tobytes)", "native encode+decode", "native encode+produce()",
               "ad00 serialise+deserialise"]
    groups = [(st, sz) for st in settings for sz in malloc[st]]
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(groups))]
        ys = [gbs(malloc[st][sz], m) for st, sz in groups]
        ax2.bar(xs, ys, width, label=m, color=colors[j + 1])
    ax2.set_yscale("log")
    short = {"glibc default": "default", "mmap every buffer >128 KiB": "mmap\n>128 KiB",
             "heap only, no trim": "heap,\nno trim"}
    ax2.set_xticks(range(len(groups)), [f"{sz}\n{short.get(st, st)}" for st, sz in groups],
                   fontsize=7)
    ax2.set_ylabel("GB/s (log)")
    ax2.set_title("glibc malloc settings (MALLOC_*_THRESHOLD_)")
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(METHODS), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- areaDetector codecs (``--ad``) -----------------------------------------------------------

AD_CODECS = ("bslz4", "lz4", "blosc")


def _ad_library(name: str, frame0: np.ndarray[Any, Any]) -> tuple[
        Callable[[np.ndarray[Any, Any]], Any], Callable[[Any], Any]]:
    """The chosen library called directly, as a caller without pvaflow would."""
    n, dtype, nbytes = frame0.size, frame0.dtype, frame0.nbytes
    if name == "bslz4":
        import bitshuffle

        return (lambda a: bitshuffle.compress_lz4(a.reshape(-1), 0),
                lambda p: bitshuffle.decompress_lz4(p, (n,), dtype, 0))
    if name == "lz4":
        import lz4.block

        return (lambda a: lz4.block.compress(a, store_size=False),
                lambda p: lz4.block.decompress(p, uncompressed_size=nbytes))
    import blosc

    def enc(a: np.ndarray[Any, Any]) -> Any:
        return blosc.compress_ptr(a.ctypes.data, a.size, a.dtype.itemsize, clevel=5,
                                  shuffle=blosc.BITSHUFFLE, cname="lz4")

    def dec(p: Any) -> Any:
        out = np.empty(n, dtype)
        blosc.decompress_ptr(p, out.ctypes.data)
        return out

    return enc, dec


def _extra_candidates() -> dict[str, tuple[Callable[[np.ndarray[Any, Any]], Any],
                                            Callable[[Any], Any]]]:
    """Codecs measured to decide whether they earn a place (library only)."""
    out: dict[str, Any] = {}
    try:
        import zstandard

        c, d = zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor()
        out["zstd level 1"] = (lambda a: c.compress(a.tobytes()), d.decompress)
    except ImportError:
        pass
    try:
        import bitshuffle

        out["bitshuffle+zstd"] = (lambda a: bitshuffle.compress_zstd(a.reshape(-1), 0),
                                  lambda p: bitshuffle.decompress_zstd(p, (1024 * 1024,),
                                                                       np.dtype("uint16"), 0))
    except ImportError:
        pass
    return out


def measure_ad(repeats: int, seconds: float, n_frames: int) -> dict[str, Any]:
    from pvaflow.ops.synthetic import diffraction_frames

    from pvaflow.frame import Frame

    frames = list(diffraction_frames(n_frames))
    nbytes = frames[0].nbytes
    out: dict[str, Any] = {"frame_bytes": nbytes, "frames": n_frames, "codecs": {},
                           "load_before": os.getloadavg()[0]}

    def runner(fn: Callable[[int], Any]) -> Callable[[], int]:
        i = [0]

        def one() -> int:
            i[0] = (i[0] + 1) % n_frames
            fn(i[0])
            return 1

        return one

    def rate(fn: Callable[[int], Any]) -> float:
        one = runner(fn)
        median_rate(one, repeats=1, min_seconds=0.05)  # warm up
        return median_rate(one, repeats=repeats, min_seconds=seconds) * nbytes / 1e6

    def paired(ours: Callable[[int], Any], theirs: Callable[[int], Any]) -> tuple[
            float, float, float]:
        """Alternate the two in every repeat so both see the same machine load; medians of
        each rate and of the per-repeat ratio."""
        a, b = runner(ours), runner(theirs)
        median_rate(a, repeats=1, min_seconds=0.05)
        median_rate(b, repeats=1, min_seconds=0.05)
        ra, rb = [], []
        for _ in range(repeats):
            ra.append(median_rate(a, repeats=1, min_seconds=seconds) * nbytes / 1e6)
            rb.append(median_rate(b, repeats=1, min_seconds=seconds) * nbytes / 1e6)
        return (statistics.median(ra), statistics.median(rb),
                statistics.median(x / y for x, y in zip(ra, rb, strict=True)))

    for name in AD_CODECS:
        lib_enc, lib_dec = _ad_library(name, frames[0])
        encoded = [Frame(f).recompressed(name) for f in frames]
        payloads = [lib_enc(f) for f in frames]
        for f, e, p in zip(frames, encoded, payloads, strict=True):
            # pvaflow writes what the library writes (multithreaded Blosc orders its blocks
            # as threads finish, so only its pixels are compared)
            assert name == "blosc" or e.array.tobytes() == bytes(p)
            assert np.array_equal(e.image, f)
            back = lib_dec(p)
            back = np.frombuffer(back, f.dtype) if isinstance(back, bytes) else back
            assert np.array_equal(back.reshape(f.shape), f)
        ratio = nbytes * n_frames / sum(e.nbytes for e in encoded)
        enc = paired(lambda i, name=name: Frame(frames[i]).recompressed(name),
                     lambda i, lib_enc=lib_enc: lib_enc(frames[i]))
        dec = paired(lambda i, e=encoded: Frame(e[i].array, codec=e[i].codec).image,
                     lambda i, lib_dec=lib_dec, p=payloads: lib_dec(p[i]))
        r = {"ratio": ratio, "pvaflow encode": enc[0], "library encode": enc[1],
             "encode ratio": enc[2], "pvaflow decode": dec[0], "library decode": dec[1],
             "decode ratio": dec[2]}
        out["codecs"][name] = r
        print(f"  {name:<6} {ratio:5.2f}x " + " ".join(
            f"{k} {v:,.2f}" for k, v in r.items() if k != "ratio"), file=sys.stderr)
    for name, (enc, dec) in _extra_candidates().items():
        payloads = [enc(f) for f in frames]
        ratio = nbytes * n_frames / sum(len(p) for p in payloads)
        out["codecs"][name] = {
            "ratio": ratio,
            "library encode": rate(lambda i, enc=enc: enc(frames[i])),
            "library decode": rate(lambda i, dec=dec, p=payloads: dec(p[i])),
        }
        print(f"  {name:<6} {ratio:5.2f}x {out['codecs'][name]}", file=sys.stderr)
    out["load_after"] = os.getloadavg()[0]
    return out


def ad_section(result: dict[str, Any], args: argparse.Namespace, elapsed: float) -> str:
    rows, extra = [], []
    for name, r in result["codecs"].items():
        if "pvaflow encode" in r:
            rows.append([name, r["ratio"], r["pvaflow encode"], r["library encode"],
                         r["encode ratio"], r["pvaflow decode"], r["library decode"],
                         r["decode ratio"]])
        else:
            extra.append([name, r["ratio"], r["library encode"], r["library decode"]])
    omp = os.environ.get("OMP_NUM_THREADS")
    omp = f"OMP_NUM_THREADS={omp} " if omp else ""
    cmd = (f"{omp}.venv/bin/python -m benchmarks.codec --ad --repeats {args.repeats} "
           f"--seconds {args.seconds} --frames {args.frames}")
    return f"""
## areaDetector codecs on realistic frames

`{cmd}` ({elapsed:.0f} s). Frames: {result['frames']} synthetic 1024x1024 uint16 detector
frames (`pvaflow.ops.synthetic`: Poisson counts, mean ~1.4 photons/pixel, on diffraction rings;
seeded), one after another. MB/s counts uncompressed bytes; medians of {args.repeats} runs of
>= {args.seconds} s, pvaflow and the library alternating run by run so both see the same load
(the pvaflow/library columns are medians of the per-run ratios). "pvaflow" is
`Frame(pixels).recompressed(name)` and `Frame(payload, codec=...).image` (registry lookup, size
checks, the bslz4 block walk, a read-only result); "library" calls the same library directly
(bitshuffle, python-lz4, python-blosc), which is also what PvaPy's AdImageUtility calls. The
benchmark first checks that pvaflow's payload is byte-for-byte the library's (blosc: same
pixels; its threads write blocks in the order they finish) and decodes to the same pixels.

{table(["codec", "ratio", "pvaflow encode MB/s", "library encode MB/s", "encode pvaflow/library",
        "pvaflow decode MB/s", "library decode MB/s", "decode pvaflow/library"], rows)}

Load average (1 min) {result['load_before']:.1f} before and {result['load_after']:.1f} after
the run on this 2-core machine: the other runs of the box share it, so single cells move by
±20 % between runs; read the pvaflow/library columns as "about the same". pvaflow's own work
per 2 MiB frame is tens of microseconds (for bslz4 the block walk that keeps the C library
inside the payload is ~25 us, against ~0.8 ms of decompression), so on a quiet machine the
ratio is the library's speed minus a few percent. blosc here is LZ4 + bit shuffle, level 5,
both cores (python-blosc's default thread count); python-lz4 is one thread; bitshuffle runs
its blocks with OpenMP, whose spinning threads collapse on an oversubscribed box (bslz4
encode fell to ~20 MB/s at load 8 with two OpenMP threads), hence `OMP_NUM_THREADS=1` for
this run: on a dedicated machine leave it unset.

Candidates measured and left out (library only, same frames):

{table(["codec", "ratio", "encode MB/s", "decode MB/s"], extra)}

zstd does not earn a place: plain zstd compresses these frames less than bslz4 and more
slowly, bitshuffle+zstd gains a little ratio at a fraction of the speed, and neither
areaDetector's NDPluginCodec nor PvaPy's AdImageUtility can decode a `zstd` frame, so a PvaPy
consumer downstream would be left with bytes it cannot read. A site that wants it can plug one
in (entry point group `pvaflow.codecs`).
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=0.3, help="minimum time per repeat")
    p.add_argument("--ad", action="store_true",
                   help="only the areaDetector codecs (section ad-codecs)")
    p.add_argument("--frames", type=int, default=4, help="realistic frames (--ad)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ad:
        t0 = time.monotonic()
        result = measure_ad(args.repeats, args.seconds, args.frames)
        elapsed = time.monotonic() - t0
        write_section("ad-codecs", ad_section(result, args, elapsed), result)
        return
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(measure(spec["sizes"], spec["methods"], spec["repeats"],
                                 spec["seconds"])))
        return

    t0 = time.monotonic()
    main_run = run_setting("glibc default", list(SIZES), METHODS, args.repeats, args.seconds)
    malloc_runs: dict[str, dict[str, Any]] = {"glibc default": {
        s: main_run[s] for s in ("2 MiB", "8 MiB")}}
    for setting in list(MALLOC)[1:]:
        malloc_runs[setting] = run_setting(
            setting, ["2 MiB", "8 MiB"],
            ["copy (tobytes)", "native encode+decode", "native encode+produce()",
             "ad00 serialise+deserialise"],
            args.repeats, max(0.2, args.seconds * 2 / 3))
    elapsed = time.monotonic() - t0

    rows = [[size, m, d["fps"][m], gbs(d, m), round(d["faults"][m], 1)]
            for size, d in main_run.items() for m in METHODS]
    ratios = []
    for size, d in main_run.items():
        f = d["fps"]
        ratios.append([
            size,
            f["native encode+decode"] / f["ad00 serialise+deserialise"],
            f["native encode+decode"] / f["copy (tobytes)"],
            f["native encode+decode"] / f["copy (np.copyto)"],
            f["native encode+produce()"] / f["copy (tobytes)"],
        ])
    malloc_rows = [
        [setting, size, *(d["fps"][m] for m in (
            "copy (tobytes)", "native encode+decode", "native encode+produce()",
            "ad00 serialise+deserialise")),
         d["fps"]["native encode+decode"] / d["fps"]["ad00 serialise+deserialise"]]
        for setting, per_size in malloc_runs.items() for size, d in per_size.items()
    ]
    r2 = next(r for r in ratios if r[0] == "2 MiB")
    r8 = next(r for r in ratios if r[0] == "8 MiB")
    r16 = next(r for r in ratios if r[0] == "16 KiB")
    mm2 = malloc_runs["mmap every buffer >128 KiB"]["2 MiB"]
    heap2 = malloc_runs["heap only, no trim"]["2 MiB"]["fps"]
    heap_ratio = heap2["native encode+decode"] / heap2["ad00 serialise+deserialise"]
    ad_faults = main_run["2 MiB"]["faults"]["ad00 serialise+deserialise"]
    nat_faults = main_run["2 MiB"]["faults"]["native encode+decode"]
    prod_faults = main_run["2 MiB"]["faults"]["native encode+produce()"]
    tuned_sentence = (
        f"With malloc tuned for reuse (`heap only, no trim` below) ad00 reaches "
        f"{heap2['ad00 serialise+deserialise']:,.0f} frames/s at 2 MiB and the ratio is "
        f"{heap_ratio:.1f}x: what its extra copies alone cost. "
        + ("The 10x target therefore holds against ad00 as shipped (glibc defaults), not "
           "against an ad00 whose process has its malloc tuned."
           if heap_ratio < 10 else "The 10x target holds in every malloc setting."))

    plot(main_run, malloc_runs, IMG / "codec.png")
    markdown = f"""
## Codec: native frame format vs ESS ad00 vs a plain copy

`benchmarks/codec.py`. Medians of {args.repeats} runs of >= {args.seconds} s each. Frames
(random pixels, 3 attributes, timestamps) cycle through a {POOL_BYTES // MiB} MiB pool, larger
than this machine's L3 cache, so pixels come from DRAM on every iteration. **Every number comes
from its own fresh process** (one per malloc setting, frame size and method): glibc's malloc
keeps state (its dynamic mmap threshold rises after the first large free), so a method measured
after another inherits the other's allocator state; run in one process after the copy
benchmarks, ad00 at 2 MiB looked ten times faster than it does on its own.

One iteration is:

* **copy (np.copyto)**: copy the frame's bytes into a preallocated array (memory bandwidth);
* **copy (tobytes)**: `array.tobytes()`: allocate + copy, exactly one copy of the frame;
* **native encode+decode**: `encode(frame)` + `value.tobytes()` + `decode(key, bytes,
  headers)`. `tobytes()` stands in for the one copy the Kafka client forces per side
  (`produce()` copies the value into librdkafka; a consumer's `msg.value()` is a fresh
  `bytes`); `encode` itself copies nothing (the value is the frame's array) and `decode`
  returns a numpy view over the bytes. Nothing else touches the pixels;
* **native encode+produce()**: `encode(frame)` + a real confluent-kafka `produce()` (its copy
  into librdkafka), producer with no broker, queue purged every batch.size (4 MiB) as acks
  would free it; no decode. The bridge's per-frame cost minus the network;
* **ad00 serialise+deserialise**: `serialise_ad00(...)` + `deserialise_ad00(buf)` from
  ess-streaming-data-types, same attributes. ad00 is *not* charged a transport copy (its
  bytes go straight to the deserialiser), so the native/ad00 ratio is conservative.

![codec throughput](img/codec.png)

{table(["frame", "method", "frames/s", "GB/s", "page faults / frame"], rows)}

A 2 MiB frame is 512 pages of 4 KiB: the page-fault column (minor faults per iteration,
`getrusage`) shows who gets fresh memory from the kernel on every frame.

Ratios (same run, side by side):

{table(["frame", "native / ad00", "native / copy (tobytes)", "native / copy (np.copyto)",
        "encode+produce() / copy (tobytes)"], ratios)}

* **native / ad00 on 2 MiB frames: {r2[1]:.1f}x** (target >= 10x); 8 MiB: {r8[1]:.1f}x;
  16 KiB: {r16[1]:.1f}x. ad00's serialiser copies the pixels several times (`flatten()`,
  `tobytes()` inside `CreateNumpyVector`, into a FlatBuffers builder that grows by allocating
  zeroed buffers of doubling size, then `builder.Output()` and `bytes(...)`). With glibc's
  default malloc those growing buffers also go back to the kernel after every frame and are
  faulted in again: {ad_faults:,.0f} page faults per 2 MiB ad00 frame against
  {nat_faults:.1f} for native. {tuned_sentence}
* **native / copy (tobytes) on 2 MiB frames: {r2[2]:.2f}** (target >= 0.5); 8 MiB:
  {r8[2]:.2f}. Native encode+decode is one copy plus a fixed header cost (tens of
  microseconds of Python), so it approaches the copy as frames grow. At 16 KiB
  ({r16[2]:.2f}) that fixed cost dominates a copy of about a microsecond; it is still
  {main_run['16 KiB']['fps']['native encode+decode']:,.0f} frames/s on one core, far above
  what the sim server or the broker deliver.
* `produce()` is the client's own copy plus librdkafka's per-message work, measured so the
  `tobytes()` stand-in can be checked against the real thing: encode+produce() runs at
  {r2[4]:.2f} of a plain copy at 2 MiB ({prod_faults:.1f} page faults per frame). librdkafka
  mallocs every message and frees it when acked, so this is the number the allocator moves
  most between runs and settings.

glibc malloc settings (frames/s, each cell its own process):

{table(["malloc setting", "frame", "copy (tobytes)", "native encode+decode",
        "native encode+produce()", "ad00 ser+deser", "native / ad00"], malloc_rows)}

* `mmap every buffer` (`MALLOC_MMAP_THRESHOLD_=131072`; setting it also freezes glibc's
  dynamic threshold) serves every MB-sized allocation with fresh mmapped memory, so every copy
  pays page faults: a plain 2 MiB copy drops to {gbs(mm2, "copy (tobytes)"):.1f} GB/s
  (from {gbs(main_run["2 MiB"], "copy (tobytes)"):.1f} GB/s), whoever copies.
* `heap only, no trim` (`MALLOC_MMAP_THRESHOLD_=33554432`, glibc's maximum,
  `MALLOC_TRIM_THRESHOLD_=1073741824`) keeps freed memory for reuse. Setting only
  `MALLOC_TRIM_THRESHOLD_` is a trap: it also freezes the mmap threshold at 128 KiB, which is
  the slow case above. Use both for the bridge and processors when frames are MB-sized.

Benchmark wall time: {elapsed:.0f} s.
"""
    data = {"main": main_run, "malloc": malloc_runs, "ratios": {
        r[0]: {"native/ad00": r[1], "native/copy_tobytes": r[2], "native/copy_copyto": r[3],
               "produce/copy_tobytes": r[4]} for r in ratios},
        "repeats": args.repeats, "seconds": args.seconds, "pool_bytes": POOL_BYTES,
        "elapsed_s": elapsed}
    write_section("codec", markdown, data)
    print(f"done in {elapsed:.0f} s; native/ad00 2 MiB {r2[1]:.1f}x, native/copy 2 MiB "
          f"{r2[2]:.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
