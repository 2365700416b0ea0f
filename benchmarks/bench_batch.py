"""Targets per second and bytes moved for 100 targets of 20": `cutout_batch` on 1, 4 and 16
threads, in this process and on a process per core, versus running ``mvmcut cut`` 100 times in
a loop. The cluster `cutout_batch` would start is started first and timed apart: the rate once
started is what a large batch, or one on a running cluster, approaches.

The archive is bench_fetch's (two F814W layers of 10284 x 20055 px, 2.5 GB each); the stand-in
MAST runs in its own process with 20 ms added to every request. The targets are spread at random
(seeded) over the 400" disc where the layers have data.

    python benchmarks/bench_batch.py [ARCHIVE_DIR] [N_TARGETS]

"own ranged bytes": what each target's ``mvmcut cut`` moved on its own, summed (headers, rows,
both layers where it touches both).
"""

import contextlib
import io
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.table import Table
from bench_fetch import LATENCY, WIDE, served

from glue_mvmcut.cli import main as mvmcut
from glue_mvmcut.core.batch import _client, cutout_batch, local_cluster
from glue_mvmcut.core.fitsheaders import forget_headers
from glue_mvmcut.core.manifest import Record, write_manifest
from glue_mvmcut.core.servers import forget_servers
from glue_mvmcut.core.targets import read_targets
from glue_mvmcut.testing.synth import build_archive

SIZE = 20.0
WORKERS = (1, 4, 16)


def _targets(n: int) -> Table:
    rng = np.random.default_rng(42)
    rho = 300.0 * np.sqrt(rng.uniform(size=n))
    phi = rng.uniform(0, 2 * math.pi, size=n)
    dec = WIDE.dec + rho * np.sin(phi) / 3600
    ra = WIDE.ra + rho * np.cos(phi) / 3600 / np.cos(np.radians(WIDE.dec))
    return Table({"id": [f"t{i:03d}" for i in range(n)], "ra": ra, "dec": dec})


def _cut_args(row, out: Path) -> list[str]:
    """``mvmcut`` arguments that cut one target into ``out/<id>``."""
    return ["cut", f"{row['ra']}", f"{row['dec']}", "--size", str(SIZE), "--out", str(out / row["id"])]


def _loop(targets: Table, out: Path) -> tuple[float, int]:
    """``mvmcut cut --json`` for each target in turn, each as if alone (in this process, so
    without start-up cost, but with no layer headers kept from the target before)."""
    import json

    moved = 0
    start = time.perf_counter()
    for row in targets:
        forget_headers()
        forget_servers()
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            mvmcut([*_cut_args(row, out), "--json"])
        moved += json.loads(buffer.getvalue())["bytes_fetched"]
    return time.perf_counter() - start, moved


def _shell_loop_seconds(targets: Table, out: Path, url: str) -> float:
    """Seconds per target of ``mvmcut cut`` as a new process each time (as a shell loop runs it),
    pointed at the stand-in by an astroquery.cfg as a user would."""
    config = out / "config" / "astropy"
    config.mkdir(parents=True)
    (config / "astroquery.cfg").write_text(f"[mast]\nserver = {url}\n")
    env = {**os.environ, "XDG_CONFIG_HOME": str(out / "config")}
    start = time.perf_counter()
    for row in targets:
        subprocess.run(
            ["mvmcut", *_cut_args(row, out)],
            check=True,
            capture_output=True,
            env=env,
        )
    return (time.perf_counter() - start) / len(targets)


def _manifest_rewrites(out: Path) -> None:
    """Seconds to rewrite the manifest of n targets (a row each, from the start), and what
    rewriting it after every finished target would add up to over a run of n: n rewrites."""
    print("\n| targets | one manifest rewrite | once per target, over the run |")
    print("|---|---|---|")
    for n in (100, 1000, 5000):
        plan = read_targets(_targets(n), size=SIZE)
        records = {target.id: Record(target) for target in plan}
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            write_manifest(out, records, {})
            best = min(best, time.perf_counter() - start)
        print(f"| {n} | {best * 1000:.1f} ms | {best * n:.1f} s |")


def main() -> None:
    archive_dir = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.gettempdir()) / "mvmcut-bench-wide"
    )
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    build_archive(archive_dir, WIDE)
    targets = _targets(n)
    with served(archive_dir) as url, tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        print(f'{n} targets of {SIZE:g}", stand-in MAST at {url} with {LATENCY * 1000:.0f} ms per request\n')
        loop_seconds, own_bytes = _loop(targets, scratch / "loop")
        print(f"mvmcut cut in a loop (one process): {loop_seconds:.1f} s, {own_bytes / 1e6:.1f} MB moved")
        sample = targets[:10]
        shell = _shell_loop_seconds(sample, scratch / "shell", url)
        print(f"mvmcut cut as a new process per target: {shell:.2f} s per target ({len(sample)} measured)\n")
        print(
            "| run | cluster start, s | seconds, start counted | targets / s | targets / s once started | "
            "speed-up vs loop | bytes moved | vs own ranged bytes |"
        )
        print("|---|---|---|---|---|---|---|---|")
        row = f"| `mvmcut cut` x {n} | - | {loop_seconds:.1f} | {n / loop_seconds:.2f} | - | 1.0 |"
        print(f"{row} {own_bytes / 1e6:.1f} MB | 1.00 |")
        for processes in (False, True):
            where = "a process per core" if processes else "threads in this process"
            for workers in WORKERS:
                # The cluster cutout_batch would start, started here to time it apart.
                start = time.perf_counter()
                client, cluster = _client(None, local_cluster(n, workers, processes))
                started = time.perf_counter()
                try:
                    manifest = cutout_batch(
                        targets, size=SIZE, out_dir=scratch / f"batch{workers}{processes}", scheduler=client
                    )
                finally:
                    ran = time.perf_counter() - started
                    client.close()
                    cluster.close()
                seconds = started - start + ran
                moved = manifest.meta["bytes_fetched"]
                done = int((manifest["status"] == "done").sum())
                print(
                    f"| batch, {workers} threads, {where} ({done} done) | {started - start:.1f} | "
                    f"{seconds:.1f} | {n / seconds:.2f} | {n / ran:.2f} | {loop_seconds / seconds:.1f} | "
                    f"{moved / 1e6:.1f} MB | {moved / own_bytes:.2f} |"
                )
        _manifest_rewrites(scratch)


if __name__ == "__main__":
    main()
