"""Throughput and mask agreement of LocalEngine beside rembg, on the same images and model file.

rembg is a benchmark-only dependency; install it in a separate virtual environment together
with this checkout (see ``benchmarks/requirements-rembg.txt``)::

    python -m venv /tmp/rembg-venv
    /tmp/rembg-venv/bin/pip install -r benchmarks/requirements-rembg.txt -e .
    /tmp/rembg-venv/bin/python benchmarks/local_vs_rembg.py

rembg is pointed (``U2NET_HOME``) at a temporary folder holding a copy of the ``u2netp.onnx``
bundled with photoroom_bg, so both tools run the very same weights and nothing is downloaded.
Imports, session creation and one warm-up image per tool are excluded from the timings. rembg
is timed the way its Python API is used, ``remove(bytes, session=...)`` one image after the
other; LocalEngine the way :class:`~photoroom_bg.BatchRemover` drives it, a round's images submitted
at once to ``process``. Each round covers every image ``--repeat`` times, so a pool of workers
is measured busy rather than waiting on a round's last image. Both produce PNG cut-outs at the
input's full size.

The mask agreement is the mean and maximum absolute difference of the two alpha channels, in
1/255 steps, over all pixels of all images.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = ROOT / "examples" / "images"
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def alpha_of(png: bytes) -> np.ndarray:
    """The alpha channel of an encoded RGBA image, as int16 for safe subtraction."""
    return np.asarray(Image.open(io.BytesIO(png)).getchannel("A"), np.int16)


def time_rembg(images: list[bytes], rounds: int) -> tuple[list[float], list[bytes]]:
    """Seconds per round for rembg, and its outputs of the last round."""
    from rembg import new_session, remove

    session = new_session("u2netp")
    remove(images[0], session=session)  # warm-up
    durations, outputs = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        outputs = [remove(data, session=session) for data in images]
        durations.append(time.perf_counter() - start)
    return durations, [bytes(out) for out in outputs]  # type: ignore[arg-type]


async def time_local(
    images: list[bytes], rounds: int, max_workers: int | None
) -> tuple[list[float], list[bytes], str]:
    """Seconds per round for LocalEngine, its outputs of the last round, and its description."""
    from photoroom_bg import SegmentOptions
    from photoroom_bg.engines.local import LocalEngine

    options = SegmentOptions()
    async with LocalEngine(max_workers=max_workers) as engine:
        await engine.process(images[0], options)  # warm-up, creates the session
        durations, outputs = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            results = await asyncio.gather(*(engine.process(data, options) for data in images))
            durations.append(time.perf_counter() - start)
            outputs = [result.content for result in results]
        label = f"{engine.max_workers} worker(s) x {engine.threads_per_worker} thread(s)"
    return durations, outputs, label


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of images")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes over the images")
    parser.add_argument("--repeat", type=int, default=4, help="copies of each image per pass")
    parser.add_argument("--max-workers", type=int, default=None, help="LocalEngine max_workers")
    args = parser.parse_args()
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in SUFFIXES)
    if not paths:
        parser.error(f"no images in {args.images}")
    images = [p.read_bytes() for p in paths] * args.repeat

    from photoroom_bg.engines._onnx_models import BUNDLED_DIR

    with tempfile.TemporaryDirectory() as home:
        shutil.copy(BUNDLED_DIR / "u2netp.onnx", Path(home) / "u2netp.onnx")
        os.environ["U2NET_HOME"] = home
        started = time.perf_counter()
        import rembg  # noqa: F401  (slow first import, kept out of the timings)

        print(f"rembg imported in {time.perf_counter() - started:.1f} s (not timed)")
        rembg_times, rembg_out = time_rembg(images, args.rounds)
    local_times, local_out, label = asyncio.run(time_local(images, args.rounds, args.max_workers))

    count = len(images)
    distinct = len(paths)
    rembg_rate = count / statistics.median(rembg_times)
    local_rate = count / statistics.median(local_times)
    pairs = zip(rembg_out[:distinct], local_out[:distinct], strict=True)
    deltas = [np.abs(alpha_of(a) - alpha_of(b)) for a, b in pairs]
    mean_delta = float(np.concatenate([d.ravel() for d in deltas]).mean())
    max_delta = int(max(int(d.max()) for d in deltas))
    sizes = ", ".join(f"{Image.open(p).width}x{Image.open(p).height}" for p in paths)

    where = args.images.relative_to(ROOT) if args.images.is_relative_to(ROOT) else args.images
    print(f"images: {distinct} from {where} ({sizes})")
    print(f"timing: median of {args.rounds} rounds of {count} images ({args.repeat} copies each)")
    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}")
    print(f"rembg (u2netp, sequential remove()):    {rembg_rate:6.2f} images/s")
    print(f"LocalEngine (u2netp, {label}): {local_rate:6.2f} images/s")
    print(f"speed-up: {local_rate / rembg_rate:.2f}x")
    print(f"alpha difference: mean {mean_delta:.3f}/255, max {max_delta}/255")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
