"""Realistic detector frames: Poisson counts on diffraction rings, and HDF5 files of them.

Random uniform pixels compress to nothing, which makes every codec look useless; a real area
detector sees a few photons per pixel on a dark background with bright Debye-Scherrer rings.
These frames reproduce that statistic (a 1024x1024 uint16 frame compresses ~5.5x with
bitshuffle-LZ4), deterministically from a seed, so tests and benchmarks see the same pixels
every run.

``write_hdf5`` stores them as a detector writes them (``/entry/data/data``, one frame per
chunk, a compression filter from hdf5plugin), which is what ``pvapy-ad-sim-server -if FILE
-hds /entry/data/data -hcm`` streams as compressed NTNDArrays.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DATASET = "/entry/data/data"
# HDF5 filter per pvaflow codec name (the ids the sim server maps back to codec names).
FILTERS = ("bslz4", "lz4", "blosc")


def ring_profile(
    shape: tuple[int, int], *, radii: Sequence[float] | None = None, width: float = 3.0,
    peak: float = 40.0, background: float = 0.35, seed: int = 0,
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Expected counts per pixel: a flat background plus Gaussian rings around a slightly
    off-centre beam, with azimuthal texture (what a powder sample gives)."""
    ny, nx = shape
    rng = np.random.default_rng(seed)
    cy = ny / 2 + rng.uniform(-0.05, 0.05) * ny
    cx = nx / 2 + rng.uniform(-0.05, 0.05) * nx
    y, x = np.ogrid[:ny, :nx]
    r = np.hypot(y - cy, x - cx)
    phi = np.arctan2(y - cy, x - cx)
    rmax = math.hypot(ny, nx) / 2
    if radii is None:
        radii = [rmax * f for f in (0.12, 0.2, 0.27, 0.35, 0.41, 0.52, 0.6, 0.71)]
    mean = np.full(shape, background)
    for i, r0 in enumerate(radii):
        texture = 1.0 + 0.5 * np.cos(phi * (2 + i) + rng.uniform(0, 2 * np.pi))
        amp = peak * rng.uniform(0.3, 1.0) / (1 + i * 0.3)
        mean = mean + amp * texture * np.exp(-0.5 * ((r - r0) / width) ** 2)
    mean[r < 0.05 * rmax] = 0.0  # beam stop
    return mean


def diffraction_frames(
    n: int, shape: tuple[int, int] = (1024, 1024), dtype: Any = np.uint16, *, seed: int = 0,
    **profile: Any,
) -> Iterator[np.ndarray[Any, Any]]:
    """``n`` frames of Poisson counts on the same ring profile (each frame its own noise)."""
    dt = np.dtype(dtype)
    mean = ring_profile(shape, seed=seed, **profile)
    rng = np.random.default_rng(seed + 1)
    top = np.iinfo(dt).max if dt.kind in "iu" else None
    for _ in range(n):
        counts = rng.poisson(mean)
        if top is not None:
            counts = np.minimum(counts, top)
        yield counts.astype(dt)


def diffraction_frame(
    shape: tuple[int, int] = (1024, 1024), dtype: Any = np.uint16, *, seed: int = 0,
    **profile: Any,
) -> np.ndarray[Any, Any]:
    """One frame (the first of ``diffraction_frames`` for this seed)."""
    return next(diffraction_frames(1, shape, dtype, seed=seed, **profile))


def hdf5_filter(codec: str | None) -> Any:
    """hdf5plugin filter options for a codec name (None: no compression)."""
    if codec is None or codec == "none":
        return {}
    import hdf5plugin

    if codec == "bslz4":
        return hdf5plugin.Bitshuffle(cname="lz4")
    if codec == "lz4":
        return hdf5plugin.LZ4()
    if codec == "blosc":
        return hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.BITSHUFFLE)
    raise ValueError(f"no HDF5 filter for codec {codec!r} (choose from {', '.join(FILTERS)})")


def write_hdf5(
    path: str | Path, n: int = 10, shape: tuple[int, int] = (1024, 1024),
    dtype: Any = np.uint16, *, codec: str | None = "bslz4", seed: int = 0,
    dataset: str = DATASET,
) -> np.ndarray[Any, Any]:
    """Write ``n`` frames to ``dataset`` in ``path``, one frame per chunk, compressed with
    ``codec``'s HDF5 filter; returns the frames written (shape ``(n, *shape)``)."""
    import h5py

    frames = np.stack(list(diffraction_frames(n, shape, dtype, seed=seed)))
    with h5py.File(path, "w") as f:
        f.create_dataset(dataset, data=frames, chunks=(1, *shape), **hdf5_filter(codec))
    return frames


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pvaflow.ops.synthetic",
        description="Write an HDF5 file of synthetic diffraction frames for "
                    "pvapy-ad-sim-server -if FILE -hds /entry/data/data -hcm.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-n", "--frames", type=int, default=10, metavar="N")
    p.add_argument("-nx", type=int, default=1024, metavar="N")
    p.add_argument("-ny", type=int, default=1024, metavar="N")
    p.add_argument("--dtype", default="uint16")
    p.add_argument("--codec", default="bslz4", choices=(*FILTERS, "none"))
    p.add_argument("--seed", type=int, default=0, metavar="N")
    args = p.parse_args(argv)
    frames = write_hdf5(args.file, args.frames, (args.ny, args.nx), args.dtype,
                        codec=args.codec, seed=args.seed)
    size = Path(args.file).stat().st_size
    print(f"{args.file}: {len(frames)} frames {args.ny}x{args.nx} {args.dtype}, "
          f"{args.codec}, {frames.nbytes / max(size, 1):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
