"""The ``mvmcut`` command line tool.

``mvmcut query`` lists the MVM layers that overlap a box; ``mvmcut cut`` writes the cutouts and
mosaics; ``mvmcut demo`` runs ``cut`` on a synthetic archive served on 127.0.0.1.
"""

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import warnings
from pathlib import Path

# The package's own modules (which load astropy and numpy) are imported where they are used: this
# module needs the standard library only, so that `run` takes over Ctrl-C before anything else loads.

log = logging.getLogger("glue_mvmcut")

#: The seed's example: four skycells of projection cell 81 meet here.
DEMO_TARGET = (84.9208, -69.1467)
DEMO_SIZE = 20.0
_NEGATIVE_COORDINATE = re.compile(r"^-\d+(?:\.\d*)?(?:[:hdms°]|\s)")


# A size as astronomers type it: a number, then a unit or none (arcsec).
_SIZE = re.compile(r"^\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*([a-z\"'″′]*)\s*$", re.IGNORECASE)
_SIZE_UNITS = {  # arcsec per unit; pixels are the layers' fine ones (0.04")
    "": 1.0, "arcsec": 1.0, "as": 1.0, '"': 1.0, "″": 1.0,
    "arcmin": 60.0, "am": 60.0, "'": 60.0, "′": 60.0,
    "deg": 3600.0, "d": 3600.0,
    "pix": 0.04, "px": 0.04, "pixel": 0.04, "pixels": 0.04,
}  # fmt: skip
_SIZE_HELP = (
    "box width: arcsec when bare (20) or as 20arcsec, 20\", 0.5arcmin, 1', 0.01deg, or 500pix "
    "(0.04\" pixels). Unlike astrocut and astroquery's Hapcut, a bare number is arcsec, not pixels"
)


def _size(text: str) -> float:
    """An argparse type: a box side typed with or without a unit, in arcsec."""
    match = _SIZE.match(text)
    unit = match[2].lower() if match else None
    if unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(
            f'cannot read {text!r} as a size: give arcsec (20, 20arcsec, 20"), arcmin (0.5arcmin, '
            "1'), degrees (0.01deg) or pixels of 0.04\" (500pix)"
        )
    return float(match[1]) * _SIZE_UNITS[unit]


def _add_target(parser: argparse.ArgumentParser) -> None:
    from .core.coords import FRAMES

    parser.add_argument(
        "target",
        nargs="+",
        help="RA Dec in degrees (84.9208 -69.1467, 84.9208d -69.1467d) or sexagesimal "
        "(05:39:41.0 -69:08:48, 05h39m41s -69d08m48s, 05 39 41.0 -69 08 48), l b with --frame "
        "galactic, or an object name for MAST's resolver (NGC 1850)",
    )
    parser.add_argument(
        "--frame",
        choices=FRAMES,
        default="icrs",
        help="frame of a position typed as numbers: icrs (default), fk5 or galactic (l b in degrees)",
    )
    parser.add_argument("--size", type=_size, required=True, metavar="SIZE", help=_SIZE_HELP)
    parser.add_argument(
        "--size-y", type=_size, metavar="SIZE", help="box height, as --size (default: --size)"
    )
    _add_selection(parser)


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--instruments", default="acs,wfc3", help="comma-separated (default: acs,wfc3)")
    parser.add_argument("--filters", help="comma-separated filters to keep, e.g. f814w,f658n")
    parser.add_argument(
        "--refresh",
        action="store_true",
        help="ask MAST for the layers even if its answer is in the cache (kept a day: query_lifetime)",
    )


def _add_cut_options(parser: argparse.ArgumentParser) -> None:
    from .core.combiners import COMBINERS

    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--products",
        choices=("both", "mosaics", "cutouts"),
        default="both",
        help="what to write beside the query table: both (default; a band of one cutout gets no "
        "second copy as its mosaic), mosaics (one per band) or cutouts",
    )
    parser.add_argument(
        "--no-combine", dest="products", action="store_const", const="cutouts", help="as --products cutouts"
    )
    parser.add_argument(
        "--combine",
        choices=tuple(COMBINERS),
        default="wmean",
        help="how overlapping cutouts make a mosaic pixel: wmean (WHT-weighted mean, default), "
        "median, mean, min, max, first or last (the WHT of each: see the docs)",
    )
    parser.add_argument(
        "--resample",
        choices=("interp", "exact"),
        default="exact",
        help="resampler for cutouts off the mosaic grid: exact (flux-conserving, default) or interp (faster)",
    )
    parser.add_argument(
        "--fetch",
        choices=("auto", "ranged", "download"),
        default="auto",
        help="ranged: read only the box's rows from the archive; download: cache whole layers; "
        "auto (default): ranged, or download if the server ignores Range",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mvmcut``."""
    parser = argparse.ArgumentParser(
        prog="mvmcut",
        description="Hubble Multi-visit Mosaic cutouts and mosaics from MAST.",
        epilog="MAST is reached through astroquery's [mast] server setting (astroquery.cfg in "
        "astropy's configuration directory, e.g. ~/.config/astropy; errors reaching MAST name the file).",
    )
    _add_verbose(parser, 0)
    _add_json(parser, False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    query = commands.add_parser("query", help="list the MVM layers that overlap a box on the sky")
    _add_target(query)

    cut = commands.add_parser("cut", help="write the cutouts and mosaics of every MVM layer over a box")
    _add_target(cut)
    _add_cut_options(cut)
    cut.add_argument("--png", action="store_true", help="also write a PNG quick-look of each mosaic")
    cut.add_argument(
        "--cache", metavar="DIR", help="download cache (default: $MVMCUT_CACHE_DIR or the astropy cache)"
    )

    batch = commands.add_parser(
        "batch",
        help="the same cutouts for every target of a table (CSV, ECSV or FITS), on Dask; resumable",
        description="One folder per target (named by the table's id column, else the row number) "
        "holding what 'mvmcut cut' writes, and DIR/manifest.ecsv with every target's outcome. "
        "Running the same command again finishes what is missing.",
    )
    batch.add_argument(
        "table", help="target table with columns ra, dec (or name), optional id, size, size_y, filters"
    )
    batch.add_argument(
        "--size", type=_size, metavar="SIZE", help="box width for rows without a size column; " + _SIZE_HELP
    )
    batch.add_argument("--size-y", type=_size, metavar="SIZE", help="box height, as --size (default: --size)")
    _add_selection(batch)
    _add_cut_options(batch)
    batch.add_argument(
        "--workers", type=int, metavar="N", help="threads on this machine (default: 4 per core, at most 16)"
    )
    where = batch.add_mutually_exclusive_group()
    where.add_argument(
        "--processes",
        action="store_const",
        const=True,
        dest="processes",
        help="run on a process per core (the default for batches of more than 128 targets to run)",
    )
    where.add_argument(
        "--threads",
        action="store_const",
        const=False,
        dest="processes",
        help="run on threads in this process only (the default for smaller batches: processes take "
        "seconds to start)",
    )
    batch.add_argument(
        "--scheduler", metavar="ADDRESS", help="run on an existing Dask cluster, e.g. tcp://host:8786"
    )
    batch.add_argument("--retry-failed", action="store_true", help="also run the targets that failed before")
    batch.add_argument(
        "--dashboard",
        action="store_true",
        help="give the cluster on this machine Dask's dashboard, on a free port (needs bokeh)",
    )

    check = commands.add_parser(
        "check-server",
        help="probe the configured MAST with one small layer and say what the cutter will do with it",
    )
    check.add_argument(
        "--at",
        nargs=2,
        type=float,
        metavar=("RA", "DEC"),
        help="where to look for MVM layers, in degrees (default: the LMC field of mvmcut demo)",
    )

    demo = commands.add_parser(
        "demo", help="cut the seed's LMC example out of a synthetic archive served on 127.0.0.1 (no network)"
    )
    demo.add_argument("--out", default="mvmcut-demo", help="output folder (default: ./mvmcut-demo)")
    demo.add_argument(
        "--glue",
        action="store_true",
        help="then open the mosaics in Glue, linked (needs glue-qt and a display)",
    )
    for name, command in commands.choices.items():
        _add_verbose(command, argparse.SUPPRESS)  # -v after the command too (it does not add up)
        if name != "demo":
            _add_json(command, argparse.SUPPRESS)
    return parser


def _add_verbose(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument(
        "-v", "--verbose", action="count", default=default, help="more log output (-vv: debug)"
    )


def _add_json(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument(
        "--json", action="store_true", default=default, help="print one JSON object describing the result"
    )


def _split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _print_layers(table) -> None:
    if not len(table):
        print("No MVM layers found.")
        return
    shown = table["productFilename", "skycell", "instrument", "detector", "filter", "scale", "level"]
    shown["MB"] = [round(size / 1e6, 1) for size in table["size"]]
    shown.pprint(max_lines=-1, max_width=-1)
    print(f"{len(table)} layers, {sum(table['size']) / 1e6:.1f} MB in all")


def _box(args):
    from .core.mast import resolve_target

    coord = resolve_target(" ".join(part.strip() for part in args.target), frame=args.frame)
    return coord, (args.size_y if args.size_y is not None else args.size, args.size)


def _query(args) -> None:
    from .core.mast import LAYER_COLUMNS, query_layers

    coord, size = _box(args)
    table = query_layers(
        coord, size, instruments=_split(args.instruments), filters=_split(args.filters), refresh=args.refresh
    )
    if args.json:
        layers = [{name: row[name].item() for name in LAYER_COLUMNS} for row in table]
        print(json.dumps({"ra": coord.ra.deg, "dec": coord.dec.deg, "size_arcsec": size, "layers": layers}))
    else:
        _print_layers(table)


class _ProgressBar:
    """Adapts the pipeline's ``progress(done, total, message)`` to a tqdm bar on stderr."""

    def __init__(self, unit: str = "step"):
        from tqdm import tqdm

        self.bar = tqdm(total=1, unit=unit, file=sys.stderr, disable=None, dynamic_ncols=True)

    def __call__(self, done: int, total: int, message: str) -> None:
        self.bar.total = total
        self.bar.set_postfix_str(message[-60:], refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _run_cut(
    coord,
    size,
    out: Path,
    *,
    instruments=None,
    filters=None,
    combine=True,
    png=False,
    resample="exact",
    cache=None,
    fetch="auto",
    refresh=False,
    products="both",
):
    from .core.pipeline import cutout_mosaic

    bar = _ProgressBar()
    try:
        result = cutout_mosaic(
            coord,
            size,
            instruments=instruments,
            filters=filters,
            out_dir=out,
            combine=combine,
            cache=cache,
            resample=resample,
            fetch=fetch,
            refresh=refresh,
            products=products,
            progress=bar,
        )
    finally:
        bar.close()
    pngs = []
    if png:
        from .quicklook import save_quicklook

        for path, mosaic in zip(result.paths["mosaics"], result.mosaics.values(), strict=True):
            pngs.append(save_quicklook(mosaic, path.with_suffix(".png")))
    return result, pngs


def _summary(result, pngs, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "query": [str(p) for p in result.paths["query"]],
                    "cutouts": [str(p) for p in result.paths["cutouts"]],
                    "mosaics": [str(p) for p in result.paths["mosaics"]],
                    "quicklooks": [str(p) for p in pngs],
                    "skipped": result.skipped,
                    "layers": len(result.layers),
                    "bytes_fetched": result.stats.bytes,
                    "requests": result.stats.requests,
                    "seconds": {step: round(value, 3) for step, value in result.seconds.items()},
                }
            )
        )
        return
    if not len(result.layers):
        print("No MVM layers found: nothing written.")
        return
    print(
        f"{len(result.layers)} layers, {len(result.cutouts)} cutouts, {len(result.mosaics)} mosaics; "
        f"{result.stats.bytes / 1e6:.1f} MB fetched"
    )
    for path in result.files() + pngs:
        print(f"  {path}")


def _cut(args) -> None:
    coord, size = _box(args)
    result, pngs = _run_cut(
        coord,
        size,
        Path(args.out),
        instruments=_split(args.instruments),
        filters=_split(args.filters),
        combine=args.combine,
        png=args.png,
        resample=args.resample,
        cache=args.cache,
        fetch=args.fetch,
        refresh=args.refresh,
        products=args.products,
    )
    _summary(result, pngs, args.json)


def _batch(args) -> int:
    from .core.batch import STATUSES, cutout_batch

    bar = _ProgressBar(unit="target")
    failed = 0

    def progress(done: int, total: int, message: str) -> None:
        nonlocal failed
        failed += message.endswith(": failed")
        bar(done, total, f"{failed} failed" if failed else "")

    try:
        manifest = cutout_batch(
            args.table,
            out_dir=args.out,
            size=args.size,
            size_y=args.size_y,
            instruments=_split(args.instruments),
            filters=_split(args.filters),
            scheduler=args.scheduler,
            workers=args.workers,
            processes=args.processes,
            retry_failed=args.retry_failed,
            combine=args.combine,
            resample=args.resample,
            fetch=args.fetch,
            refresh=args.refresh,
            products=args.products,
            progress=progress,
            dashboard=args.dashboard,
        )
    finally:
        bar.close()
    counts = {status: int((manifest["status"] == status).sum()) for status in STATUSES}
    ran, fetched = manifest.meta["targets_run"], manifest.meta["bytes_fetched"]
    path = Path(args.out) / "manifest.ecsv"
    if args.json:
        report = {"manifest": str(path), "targets": len(manifest), **counts, "run_now": ran}
        print(json.dumps({**report, "bytes_fetched": fetched}))
    else:
        print(
            f"{len(manifest)} targets: {counts['done']} done, {counts['no data']} no data, "
            f"{counts['failed']} failed ({ran} run now, {fetched / 1e6:.1f} MB fetched). Manifest: {path}"
        )
    if counts["failed"]:
        failures = manifest[manifest["status"] == "failed"]
        for row in failures[:5]:
            print(f"  {row['id']}: {row['error']}", file=sys.stderr)
        print(
            f"mvmcut: {counts['failed']} of {len(manifest)} targets failed (see {path}); "
            "fix them, or run again with --retry-failed.",
            file=sys.stderr,
        )
        return 1
    return 0


def _demo(args) -> None:
    from .core.endpoints import using_server
    from .testing.server import MastServer
    from .testing.synth import build_archive

    out = Path(args.out)
    print(f"Building the synthetic MVM archive in {out / 'archive'} ...", flush=True)
    archive = build_archive(out / "archive", "lmc")
    with MastServer(archive) as server, using_server(server.url):
        ra, dec = DEMO_TARGET
        print(
            f"Stand-in MAST serving {len(archive.layers)} layers at {server.url}\n"
            f'Cutting a {DEMO_SIZE:g}" box at RA={ra} Dec={dec} (four skycells meet there) ...',
            flush=True,
        )
        result, pngs = _run_cut(DEMO_TARGET, DEMO_SIZE, out / "cutouts", png=True, cache=out / "cache")
    _summary(result, pngs, as_json=False)
    mosaics = [path.resolve() for path in result.paths["mosaics"]]
    if args.glue:
        _open_in_glue(mosaics, f"LMC demo · {DEMO_SIZE:g}″")
        return
    folder = (out / "cutouts").resolve()
    print(
        "\nWhat next:\n"
        f"  - look at the PNG quick-looks: {folder}/hst_combined_skycells-*.png\n"
        f"  - open the FITS files (SCI and WHT extensions) in {folder}\n"
        f"  - see the mosaics in Glue, loaded and linked by WCS: mvmcut demo --glue --out {out}\n"
        "    (or start glue and use Plugins > MVM cutouts from MAST...)\n"
        '  - cut real HST data from MAST: mvmcut cut "NGC 1850" --size 30 --out ngc1850 --png'
    )


def _open_in_glue(paths, title: str) -> None:
    """Start the Glue application with ``paths`` loaded and linked, its viewers in a tab named
    ``title``; return when it is closed."""
    from .core.errors import MVMCutError

    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("QT_QPA_PLATFORM")
    ):
        raise MVMCutError(
            "--glue needs a display, and this session has none (DISPLAY is not set). Run it on a "
            "desktop, or copy the files and open them there with: glue " + " ".join(p.name for p in paths)
        )
    try:
        from .glue.qt import open_in_glue
    except ImportError as exc:
        raise MVMCutError(f'--glue needs Glue: pip install "glue-mvmcut[qt]" ({exc}).') from exc
    open_in_glue(paths, title).start()


def _check_server(args) -> int:
    from .core.probe import PROBE_POSITION, check_server

    report = check_server(tuple(args.at) if args.at else PROBE_POSITION)
    print(json.dumps(report.as_dict()) if args.json else "\n".join(report.lines()))
    return 0


def _protect_negative_coordinates(argv: list[str]) -> list[str]:
    # argparse takes "-69:08:48" for an option; a leading space makes it a positional argument
    # (parse_coord strips it). Plain negative numbers such as -69.1467 need no help.
    return [" " + arg if _NEGATIVE_COORDINATE.match(arg) else arg for arg in argv]


def _show_warning(message, category, filename, lineno, file=None, line=None):
    log.warning("%s", message)


def main(argv: list[str] | None = None) -> int:
    """Run ``mvmcut``; return the exit status (0 success, 1 error, 2 usage, 130 interrupted)."""
    from .core.errors import MVMCutError, NoMVMDataWarning

    argv = _protect_negative_coordinates(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(argv)
    # The command's own output, on stderr, instead of the package's handlers (astropy's, which
    # print INFO to stdout); all put back when done: main may run inside a longer-lived process.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handlers = log.handlers[:]
    for other in handlers:
        log.removeHandler(other)
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING)
    commands = {"query": _query, "cut": _cut, "batch": _batch, "check-server": _check_server, "demo": _demo}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", NoMVMDataWarning)
            warnings.showwarning = _show_warning
            status = commands[args.command](args)
    except MVMCutError as exc:
        print(f"mvmcut: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        if not isinstance(exc, _Interrupted):  # said by the signal handler of `run`
            print("mvmcut: interrupted", file=sys.stderr)
        return getattr(exc, "status", 130)
    finally:
        log.removeHandler(handler)
        for other in handlers:
            log.addHandler(other)
        log.setLevel(level)
    return status or 0


#: Seconds an interrupted run may spend cleaning up before the process ends regardless.
_CLEANUP_GRACE = 3.0


class _Interrupted(KeyboardInterrupt):
    """Ctrl-C (status 130) or SIGTERM (143), already said on stderr."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


def _interrupted(signum, frame) -> None:
    """The signal handler of `run`: one line, then silence while the run cleans up (closing a
    Dask cluster in the middle of its work makes its threads log hundreds of lines); a second
    signal ends the process at once."""
    status = 128 + signum
    signal.signal(signal.SIGINT, lambda *_: os._exit(status))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(status))
    sys.stdout.flush()  # what the run said so far, before a cleanup cut short loses it
    print(
        f"mvmcut: {'interrupted' if signum == signal.SIGINT else 'terminated'}", file=sys.stderr, flush=True
    )
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # Python's writes and native ones alike
    # The run's own cleanup (a batch's manifest) takes milliseconds; threads blocked on a silent
    # server would hold the exit for as long as its timeout: cut short after a grace period.
    watchdog = threading.Timer(_CLEANUP_GRACE, os._exit, args=(status,))
    watchdog.daemon = True
    watchdog.start()
    raise _Interrupted(status)


def run(argv: list[str] | None = None) -> None:
    """The ``mvmcut`` command: `main` with Ctrl-C and SIGTERM said in one line (status 130 or 143)
    and nothing after it. The files a run leaves are complete (written atomically), so an
    interrupted run ends without waiting for threads and ``atexit`` handlers to finish."""
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        status = main(argv)
    except _Interrupted as exc:  # before or after the command itself (parsing its arguments)
        status = exc.status
    if status in (130, 143):
        sys.stdout.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    run()
