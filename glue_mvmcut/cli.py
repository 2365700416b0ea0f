"""The ``mvmcut`` command line tool.

``mvmcut query RA DEC --size ARCSEC`` lists the MVM layers that overlap a box;
``mvmcut demo`` does the same against a synthetic archive served on 127.0.0.1.
"""

import argparse
import logging
import re
import sys
import warnings
from pathlib import Path

from .core.errors import MVMCutError, NoMVMDataWarning

log = logging.getLogger("glue_mvmcut")

#: The seed's example: four skycells of projection cell 81 meet here.
DEMO_TARGET = (84.9208, -69.1467)
DEMO_SIZE = 20.0
_NEGATIVE_COORDINATE = re.compile(r"^-\d+(?:[:hdms]|\s)")


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ra", help="right ascension: degrees (84.9208) or hours (05:39:41.0)")
    parser.add_argument("dec", help="declination: degrees (-69.1467) or sexagesimal (-69:08:48)")
    parser.add_argument("--size", type=float, required=True, metavar="ARCSEC", help="box width in arcsec")
    parser.add_argument("--size-y", type=float, metavar="ARCSEC", help="box height (default: --size)")
    parser.add_argument("--instruments", default="acs,wfc3", help="comma-separated (default: acs,wfc3)")
    parser.add_argument("--filters", help="comma-separated filters to keep, e.g. f814w,f658n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mvmcut``."""
    parser = argparse.ArgumentParser(
        prog="mvmcut",
        description="Hubble Multi-visit Mosaic cutouts and mosaics from MAST.",
        epilog="MAST is reached through astroquery's [mast] server setting (astroquery.cfg).",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    query = commands.add_parser("query", help="list the MVM layers that overlap a box on the sky")
    _add_target(query)

    demo = commands.add_parser(
        "demo", help="serve a synthetic MVM archive on 127.0.0.1 and query it (no network needed)"
    )
    demo.add_argument("--out", default="mvmcut-demo", help="folder for the archive (default: ./mvmcut-demo)")
    return parser


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


def _query(args) -> None:
    from .core.archive import query_layers
    from .core.coords import parse_coord

    coord = parse_coord(args.ra.strip(), args.dec.strip())
    size = (args.size_y if args.size_y is not None else args.size, args.size)
    table = query_layers(coord, size, instruments=_split(args.instruments), filters=_split(args.filters))
    _print_layers(table)


def _demo(args) -> None:
    from .core.archive import query_layers, using_server
    from .testing.server import MastServer
    from .testing.synth import build_archive

    archive_dir = Path(args.out) / "archive"
    print(f"Building the synthetic MVM archive in {archive_dir} ...", flush=True)
    archive = build_archive(archive_dir, "lmc")
    with MastServer(archive) as server, using_server(server.url):
        print(f"Stand-in MAST serving {len(archive.layers)} layers at {server.url}")
        ra, dec = DEMO_TARGET
        print(f"\nMVM layers overlapping a {DEMO_SIZE:g}\" box at RA={ra} Dec={dec}:\n")
        _print_layers(query_layers(DEMO_TARGET, DEMO_SIZE))
    print(f"\nThe layer files are in {archive_dir.resolve()}")


def _protect_negative_coordinates(argv: list[str]) -> list[str]:
    # argparse takes "-69:08:48" for an option; a leading space makes it a positional argument
    # (parse_coord strips it). Plain negative numbers such as -69.1467 need no help.
    return [" " + arg if _NEGATIVE_COORDINATE.match(arg) else arg for arg in argv]


def _show_warning(message, category, filename, lineno, file=None, line=None):
    log.warning("%s", message)


def main(argv: list[str] | None = None) -> int:
    """Run ``mvmcut``; return the exit status (0 success, 1 error, 2 usage, 130 interrupted)."""
    argv = _protect_negative_coordinates(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING)
    commands = {"query": _query, "demo": _demo}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", NoMVMDataWarning)
            warnings.showwarning = _show_warning
            commands[args.command](args)
    except MVMCutError as exc:
        print(f"mvmcut: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mvmcut: interrupted", file=sys.stderr)
        return 130
    finally:
        log.removeHandler(handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
