"""From a 5" box to a 3600" one: bytes fetched and written, peak memory, wall time and each
step's seconds of ``mvmcut cut``; ``mvmcut --help`` and a 5" cut's time importing; then 30
consecutive 20" boxes in one process with MAST's answers cold and kept (the query cache).

The archive is bench_fetch's (two F814W layers of about 10300 x 20000 px, trimmed to a 400"
disc); the stand-in MAST runs in its own process with 20 ms added to every request. Each box is
cut by a fresh ``mvmcut cut`` process, whose peak resident memory the kernel reports. Products
larger than a block are written a block of rows at a time; the rows of a box beyond the layers
are holes in its files, so "written" (the files' sizes) is far more than "on disk" (what the
files take) for boxes wider than the layers.

    python benchmarks/bench_scale.py [ARCHIVE_DIR]
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_fetch import LATENCY, WIDE, served

from glue_mvmcut.core.endpoints import using_server
from glue_mvmcut.core.mast import query_layers
from glue_mvmcut.core.pipeline import cutout_mosaic
from glue_mvmcut.testing.server import MastServer
from glue_mvmcut.testing.synth import build_archive

SIZES = (5, 20, 120, 600, 1800, 3600)
CONSECUTIVE = 30


def _cut(url: str, size: float, out: Path) -> dict:
    """``mvmcut cut --json`` of a box at the field centre in a process of its own: its report,
    the bytes it wrote, its wall time and peak resident memory."""
    config = out / "config" / "astropy"
    config.mkdir(parents=True)
    (config / "astroquery.cfg").write_text(f"[mast]\nserver = {url}\n")
    env = {**os.environ, "XDG_CONFIG_HOME": str(out / "config"), "MVMCUT_CACHE_DIR": str(out / "cache")}
    command = ["mvmcut", "cut", str(WIDE.ra), str(WIDE.dec), "--size", str(size), "--out", str(out / "files")]
    started = time.perf_counter()
    process = subprocess.Popen([*command, "--json"], stdout=subprocess.PIPE, env=env, text=True)
    report = json.loads(process.stdout.read())
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.stdout.close()
    if status:
        raise RuntimeError(f"mvmcut cut --size {size} failed ({status})")
    files = [p.stat() for p in (out / "files").iterdir()]
    written, on_disk = sum(f.st_size for f in files), sum(f.st_blocks * 512 for f in files)
    return {**report, "written": written, "on_disk": on_disk, "wall": wall, "peak": usage.ru_maxrss * 1024}


def _amount(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB" if nbytes < 1e9 else f"{nbytes / 1e9:.2f} GB"


def _boxes(url: str, work: Path) -> None:
    print(
        "| box | fetched | written (on disk) | peak RSS | wall | query / cut / combine / write (s) | "
        "s per Mpx fetched |"
    )
    print("|---|---|---|---|---|---|---|")
    for size in SIZES:
        r = _cut(url, size, work / f"box{size}")
        seconds = r["seconds"]
        steps = " / ".join(f"{seconds.get(step, 0):.2f}" for step in ("query", "cut", "combine", "write"))
        fetched_pixels = r["bytes_fetched"] / 8  # SCI and WHT, 4 bytes each
        print(
            f'| {size}" | {r["bytes_fetched"] / 1e6:.1f} MB | {_amount(r["written"])} '
            f"({_amount(r['on_disk'])}) | {r['peak'] / 1e6:.0f} MB | {r['wall']:.1f} s | {steps} | "
            f"{r['wall'] / fetched_pixels * 1e6:.3f} |"
        )
        shutil.rmtree(work / f"box{size}")  # the next box's room


def _start_up(url: str, work: Path, repeats: int = 5) -> None:
    """Issue #23 part 5: ``mvmcut --help``, and a 5" cut's time importing against its wall time,
    best of ``repeats`` fresh processes each (the console script run by this Python, not
    through a shim). Importing: the top-level imports' cumulative times of ``-X importtime``
    (every module the cut loads, whenever it loads it)."""
    script = str(Path(sys.executable).parent / "mvmcut")
    config = work / "config" / "astropy"
    config.mkdir(parents=True)
    (config / "astroquery.cfg").write_text(f"[mast]\nserver = {url}\n")
    env = {**os.environ, "XDG_CONFIG_HOME": str(work / "config"), "MVMCUT_CACHE_DIR": str(work / "cache")}
    cut = [script, "cut", str(WIDE.ra), str(WIDE.dec), "--size", "5", "--out", str(work / "files")]

    def run(*command: str) -> tuple[float, str]:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True, check=True)
        return time.perf_counter() - started, done.stderr

    help_seconds = min(run(script, "--help")[0] for _ in range(repeats))
    cut_seconds = min(run(*cut)[0] for _ in range(repeats))
    importing = []
    for _ in range(repeats):
        # "import time: <self µs> | <cumulative µs> | <name>", the name indented by its depth.
        rows = [line.split("|") for line in run("-X", "importtime", *cut)[1].splitlines()]
        top = [row for row in rows if len(row) == 3 and row[1].strip().isdigit() and row[2][:2] != "  "]
        importing.append(sum(int(row[1]) for row in top) / 1e6)
    print("\n| start-up | seconds |\n|---|---|")
    print(f"| `mvmcut --help` | {help_seconds:.2f} |")
    print(f'| `mvmcut cut` of a 5" box, wall | {cut_seconds:.2f} |')
    print(f"| of which importing | {min(importing):.2f} ({min(importing) / cut_seconds:.0%}) |")


def _consecutive(archive, work: Path) -> None:
    """30 boxes of 20" stepping 10" east, in this process: MAST's answers cold, then kept. The
    stand-in runs in this process here (20 ms added per request), to count what it is asked."""
    print(f'\n{CONSECUTIVE} consecutive 20" boxes in one process\n')
    print("| query cache | MAST requests | seconds per box: query | seconds per box: all |")
    print("|---|---|---|---|")
    os.environ["MVMCUT_CACHE_DIR"] = str(work / "consecutive-cache")
    boxes = [(WIDE.ra + k * 10 / 3600, WIDE.dec) for k in range(-CONSECUTIVE // 2, CONSECUTIVE // 2)]
    with MastServer(archive) as server, using_server(server.url):
        server.faults.latency = LATENCY
        query_layers(boxes[0], 1)  # astroquery's column configs, once per process
        for path in (work / "consecutive-cache").rglob("*.ecsv"):
            path.unlink()  # cold: nothing kept
        for label in ("cold (empty at the start)", "warm (kept from the first pass)"):
            server.reset_stats()
            query_seconds = 0.0
            started = time.perf_counter()
            for k, coord in enumerate(boxes):
                result = cutout_mosaic(coord, 20, out_dir=work / "consecutive" / f"{label[:4]}{k}")
                query_seconds += result.seconds["query"]
            wall = time.perf_counter() - started
            asked = len([r for r in server.requests() if r.service.startswith("Mast.")])
            print(f"| {label} | {asked} | {query_seconds / CONSECUTIVE:.3f} | {wall / CONSECUTIVE:.3f} |")


def main() -> None:
    archive_dir = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.gettempdir()) / "mvmcut-bench-wide"
    )
    archive = build_archive(archive_dir, WIDE)
    for rec in archive.layers:
        print(f"layer {rec.filename}: {rec.shape[1]} x {rec.shape[0]} px")
    with tempfile.TemporaryDirectory(prefix="mvmcut-bench-scale-") as work, served(archive_dir) as url:
        _boxes(url, Path(work))
        _start_up(url, Path(work) / "start-up")
    with tempfile.TemporaryDirectory(prefix="mvmcut-bench-scale-") as work:
        _consecutive(archive, Path(work))


if __name__ == "__main__":
    main()
