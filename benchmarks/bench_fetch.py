"""Bytes, requests, time and memory of 2", 20" and 120" cutouts: ranged reads versus whole-file
downloads, against every kind of server.

The archive: a 400" disc centred on the overlap of skycells p1889x07y13 and p1889x08y13, so each
of the two F814W layers is trimmed to about 10300 x 20000 px (0.8 GB per array, 2.5 GB per file with CTX).
The stand-in MAST runs in its own process with 20 ms added to every request, as each kind of
server (``--ranges``): multipart replies, the first of several ranges only, the whole file to
several ranges (object stores; also one that takes no pipelined requests), no Range at all.
Cutouts are at the disc centre, where both layers have data.

    python benchmarks/bench_fetch.py [ARCHIVE_DIR]     # the archive is built there once (~10 min)
    python benchmarks/bench_fetch.py --wider [ARCHIVE_DIR]
    python benchmarks/bench_fetch.py --throughput [ARCHIVE_DIR]

``--wider``: 2" and 20" boxes on one layer about 21000 px wide and tall (an 840" disc centred on
skycell p1889x07y13), as wide as real MVM layers: rows of a box lie 84 KB apart there.

``--throughput``: a 600" box cut into files (``cutout_mosaic(out_dir=..., products="cutouts")``,
by blocks of rows) from the multipart server, against one sequential read of as many bytes from
the same server written to a file; and the same cut held in memory against the read held in
memory (the first pair's time includes the disk's, the second's does not).

Reference time: one Range request for as many bytes as the cutout's pixels + headers.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import Cutout2D, NoOverlapError

from glue_mvmcut import conf
from glue_mvmcut.core.endpoints import file_url, using_server
from glue_mvmcut.core.fitsheaders import forget_headers, read_wcs
from glue_mvmcut.core.mast import query_layers
from glue_mvmcut.core.pipeline import cutout_mosaic
from glue_mvmcut.core.servers import forget_servers
from glue_mvmcut.core.transport import http_session
from glue_mvmcut.testing.synth import Field, LayerSpec, build_archive

WIDE = Field(
    "wide",
    180.92832223,
    26.47629294,
    radius=400.0,
    layers=(LayerSpec("acs", "wfc", "f814w"),),
    n_stars=200,
    n_galaxies=10,
    seed=5,
)
WIDER = Field(
    "wider",
    181.0613606,
    26.4753710,
    radius=420.0,
    layers=(LayerSpec("acs", "wfc", "f814w"),),
    n_stars=300,
    n_galaxies=10,
    seed=6,
)
LATENCY = 0.020
SIZES = (2, 20, 120)
#: Each kind of server (the stand-in's options for it), and the fetch modes timed against it
#: ("ranged, overfetch 2": rows joined only as far as twice the bytes needed, not wherever
#: cheaper than a request). "one-range, no pipelining": an object store that closes the
#: connection after each reply, so its requests go one at a time.
KINDS = (
    ("multipart", ("--ranges", "multipart"), ("ranged", "download")),
    ("first-range", ("--ranges", "first-range"), ("ranged", "ranged, overfetch 2")),
    ("one-range", ("--ranges", "one-range"), ("ranged", "ranged, overfetch 2")),
    ("one-range, no pipelining", ("--ranges", "one-range", "--pipelining", "closes"), ("ranged",)),
    ("no-range", ("--ranges", "no-range"), ("auto",)),
)


@contextmanager
def served(archive_dir: Path, *options: str):
    """The stand-in MAST for ``archive_dir`` in its own process, LATENCY added per request (and
    its command line ``options``), with astroquery (and so glue-mvmcut) pointed at it; yields its
    URL."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "glue_mvmcut.testing.server",
            str(archive_dir),
            "--latency",
            str(LATENCY),
            *options,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().strip()
        with using_server(url):
            yield url
    finally:
        process.terminate()
        process.wait()
        process.stdout.close()


def _needed_bytes(archive, coord, size) -> tuple[int, int]:
    """Pixel bytes the box covers in every layer it touches (SCI + WHT) and those layers' header
    bytes (of PRIMARY, SCI and WHT), from the archive's own files."""
    pixels = headers = 0
    for rec in archive.layers:
        with fits.open(archive.directory / rec.filename) as hdul:
            # The box's window on the layer, as Cutout2D places it (an array of the layer's
            # shape that takes no memory stands in for its pixels).
            try:
                box = Cutout2D(
                    np.broadcast_to(np.float32(0), rec.shape),
                    coord,
                    [size, size] * u.arcsec,
                    wcs=read_wcs(hdul["SCI"].header).celestial,
                    mode="partial",
                )
            except NoOverlapError:  # a neighbouring skycell's sliver of the field
                continue
            headers += sum(hdul.fileinfo(i)["datLoc"] - hdul.fileinfo(i)["hdrLoc"] for i in range(3))
        (y0, y1), (x0, x1) = box.bbox_original
        pixels += 2 * 4 * (y1 - y0 + 1) * (x1 - x0 + 1)
    return pixels, headers


def _one_request_seconds(url: str, nbytes: int, repeats: int = 10) -> float:
    with http_session() as session:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            session.get(url, headers={"Range": f"bytes=0-{nbytes - 1}"}).content  # noqa: B018
            best = min(best, time.perf_counter() - start)
    return best


def _run(layers, coord, size, mode: str, cache: Path, repeats: int = 10):
    """The pipeline's own path (layers cut concurrently), without the query and the combine.

    Returns the transfer stats of a cutout whose layers' headers must be read, the best seconds
    of ``repeats`` such cutouts (header and WCS caches emptied, and what was learned of the
    server, before each: a first contact), the best of ``repeats`` with
    the headers cached in the process (only pixels move), and the peak Python memory of a
    separate call (tracemalloc slows allocation: never timed). An untimed first call warms the
    process (imports, first use of WCS and thread pools), which is not fetching.
    """
    cold, warm, stats = [], [], None

    def timed(clear: bool) -> float:
        nonlocal stats
        if clear:
            forget_headers()
            forget_servers()
        for old in cache.glob("*.fits*"):
            old.unlink()
        start = time.perf_counter()
        result = cutout_mosaic(coord, size, layers=layers, combine=False, fetch=mode, cache=cache)
        seconds = time.perf_counter() - start
        stats = stats if stats is not None or not clear else result.stats
        return seconds

    timed(True)
    cold = [timed(True) for _ in range(repeats)]
    warm = [timed(False) for _ in range(repeats)]
    for old in cache.glob("*.fits*"):
        old.unlink()
    tracemalloc.start()
    cutout_mosaic(coord, size, layers=layers, combine=False, fetch=mode, cache=cache)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return stats, min(cold), min(warm), peak


def _sequential_seconds(url: str, nbytes: int, into: Path | None = None) -> float:
    """One Range request for ``nbytes`` from the file's start, read as it comes (16 MB at a
    time), into memory or written to the file ``into``."""
    with http_session() as session, open(into or os.devnull, "wb") as file:
        start = time.perf_counter()
        with session.get(url, headers={"Range": f"bytes=0-{nbytes - 1}"}, stream=True) as reply:
            for chunk in reply.iter_content(16 << 20):
                if into is not None:
                    file.write(chunk)
        return time.perf_counter() - start


def _throughput(archive_dir: Path, archive, coord, size: float = 600, repeats: int = 3) -> None:
    """A ``size`` box cut into files and held in memory, against one sequential read of as many
    bytes written to a file and held in memory (best of ``repeats`` each, in turns; what was
    written is synced to disk before each is timed)."""
    print(f'\n{size:g}" box cut against one sequential read of as many bytes, into files and in memory\n')
    print("| box | bytes | into | cut: seconds | cut: MB/s | one read: seconds | one read: MB/s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    times = {"files": ([], []), "memory": ([], [])}
    with served(archive_dir), tempfile.TemporaryDirectory() as work:
        layers = query_layers(coord, size)
        url = file_url(f"mast:HST/product/{archive.layers[0].filename}")
        moved = 0
        for k in range(repeats):
            for into in times:
                out = Path(work) / f"{into}{k}"
                forget_headers()
                os.sync()
                start = time.perf_counter()
                result = cutout_mosaic(
                    coord, size, layers=layers, out_dir=out if into == "files" else None, products="cutouts"
                )
                times[into][0].append(time.perf_counter() - start)
                moved = result.stats.bytes
                del result
                shutil.rmtree(out, ignore_errors=True)
                os.sync()
                read_into = Path(work) / "read.bin" if into == "files" else None
                times[into][1].append(_sequential_seconds(url, min(moved, archive.layers[0].size), read_into))
                if read_into is not None:
                    read_into.unlink()
    for into, (cut, read) in times.items():
        rate, sequential = moved / min(cut) / 1e6, moved / min(read) / 1e6
        print(
            f'| {size:g}" | {moved / 1e6:.0f} MB | {into} | {min(cut):.2f} | {rate:.0f} | {min(read):.2f} | '
            f"{sequential:.0f} | {rate / sequential:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("archive_dir", nargs="?", type=Path, help="where the archive is built once")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--wider", action="store_true", help="one layer as wide as a real one")
    which.add_argument("--throughput", action="store_true", help='a 600" cut against one read')
    args = parser.parse_args()
    field, sizes = (WIDER, (2, 20)) if args.wider else (WIDE, SIZES)
    archive_dir = args.archive_dir or Path(tempfile.gettempdir()) / f"mvmcut-bench-{field.name}"
    if args.throughput:
        archive = build_archive(archive_dir, WIDE)
        _throughput(archive_dir, archive, SkyCoord(WIDE.ra, WIDE.dec, unit="deg"))
        return
    with tempfile.TemporaryDirectory(prefix="mvmcut-bench-cache-") as answers:
        os.environ["MVMCUT_CACHE_DIR"] = answers  # MAST's answers, and nothing left behind
        _table(archive_dir, field, sizes)


def _table(archive_dir: Path, field, sizes) -> None:
    """The table of bytes, requests and seconds for every box, server kind and mode."""
    started = time.perf_counter()
    archive = build_archive(archive_dir, field)
    built = time.perf_counter() - started
    for rec in archive.layers:
        print(f"layer {rec.filename}: {rec.shape[1]} x {rec.shape[0]} px, {rec.size / 1e9:.2f} GB")
    print(f"(archive ready in {built:.0f} s)")
    coord = SkyCoord(field.ra, field.dec, unit="deg")
    print(f"\nstand-in MAST with {LATENCY * 1000:.0f} ms added per request\n")
    print(
        "| box | server | mode | bytes moved | pixel + header bytes | ratio | requests | "
        "seconds, headers read | seconds, headers cached | one request | "
        "time ratio (read / cached) | peak Python memory |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    needed = {size: sum(_needed_bytes(archive, coord, size)) for size in sizes}
    reference = {}  # one request for that many bytes, asked of the multipart server
    for kind, options, modes in KINDS:
        with served(archive_dir, *options), tempfile.TemporaryDirectory() as cache:
            layers = query_layers(coord, max(sizes))
            url = file_url(f"mast:HST/product/{archive.layers[0].filename}")
            for size in sizes:
                if size not in reference:
                    reference[size] = _one_request_seconds(url, needed[size])
                for mode in modes:
                    # Whole files take seconds, one range per request many round trips: fewer repeats.
                    ranged = mode.startswith("ranged")
                    repeats = 1 if not ranged else 10 if kind == "multipart" else 3
                    with conf.set_temp("overfetch", 2 if mode.endswith("overfetch 2") else 0):
                        stats, first, best, peak = _run(
                            layers, coord, size, mode.split(",")[0], Path(cache), repeats
                        )
                    want, one = needed[size], reference[size]
                    print(
                        f'| {size}" | {kind} | {mode} | {stats.bytes / 1e6:.2f} MB | {want / 1e6:.2f} MB | '
                        f"{stats.bytes / want:.2f} | {stats.requests} | {first:.3f} | {best:.3f} | "
                        f"{one:.3f} s | {first / one:.1f} / {best / one:.1f} | {peak / 1e6:.0f} MB |"
                    )


if __name__ == "__main__":
    main()
