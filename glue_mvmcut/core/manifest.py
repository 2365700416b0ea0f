"""The batch manifest (``manifest.ecsv``): one row per target — what it asked for and what came
of it — and what a new run of the same batch can skip.

A target counts as finished when its folder is complete and verifies (`complete_files`) and it
asked for the same box, instruments and filters; the manifest itself may be lost or damaged in
a crash, and is then rebuilt from the folders.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

from .files import fits_problem, write_atomically
from .pipeline import query_table_name
from .targets import Target

__all__ = ["MANIFEST", "STATUSES", "complete_files", "previous_records", "write_manifest"]

log = logging.getLogger(__name__)

#: Name of the batch manifest in the output folder.
MANIFEST = "manifest.ecsv"
#: Status of a target in the manifest; ``pending`` ones have not run yet (e.g. after a cancel).
STATUSES = ("done", "no data", "failed", "pending")
_MANIFEST_COLUMNS = (
    ("id", str),
    ("row", int),
    ("target", str),
    ("ra", float),
    ("dec", float),
    ("selection", str),
    ("status", str),
    ("n_files", int),
    ("files", str),
    ("bytes", np.int64),
    ("requests", int),
    ("seconds", float),
    ("error", str),
)


@dataclass
class Record:
    """The outcome of one target: a manifest row."""

    target: Target
    status: str = "pending"
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    requests: int = 0
    seconds: float = 0.0
    error: str = ""

    def row(self) -> dict:
        t = self.target
        return {
            "id": t.id,
            "row": t.row,
            "target": t.text,
            "ra": np.nan if t.ra is None else t.ra,
            "dec": np.nan if t.dec is None else t.dec,
            "selection": t.selection,
            "status": self.status,
            "n_files": len(self.files),
            "files": " ".join(self.files),
            "bytes": self.bytes,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }


def _query_table_name(target: Target) -> str | None:
    """The query table ``mvmcut cut`` writes for this target's box (None while a name is unresolved)."""
    if target.ra is None or target.size is None:
        return None
    return query_table_name(SkyCoord(target.ra, target.dec, unit="deg"), target.size * u.arcsec)


def complete_files(folder: Path, query_table: str | None) -> list[str] | None:
    """The files of a finished target folder, or None if it is missing, was made for another box
    (its query table has another name), or anything in it fails to verify (a FITS file cut
    short, an unreadable query table, a leftover partial file)."""
    if not folder.is_dir():
        return None
    files = sorted(p.name for p in folder.iterdir())
    tables = [name for name in files if name.endswith(".ecsv")]
    if len(tables) != 1 or any(not name.endswith((".fits", ".ecsv")) for name in files):
        return None
    if query_table is not None and tables[0] != query_table:
        return None
    try:
        Table.read(folder / tables[0], format="ascii.ecsv")
    except Exception:  # any unreadable table means: not complete
        return None
    if any(fits_problem(folder / name) for name in files if name.endswith(".fits")):
        return None
    return files


def previous_records(out_dir: Path, targets: list[Target]) -> dict[str, Record]:
    """Records of the targets a previous run finished (their folders verify) or saw fail."""
    path = out_dir / MANIFEST
    rows = {}
    if path.is_file():
        try:
            rows = {str(r["id"]): r for r in Table.read(path, format="ascii.ecsv")}
        except Exception as exc:  # a damaged manifest is rebuilt from the folders
            log.warning("Ignoring the unreadable manifest %s (%s).", path, exc)
    records = {}
    for target in targets:
        row = rows.get(target.id)
        if target.ra is None and row is not None and np.isfinite(row["ra"]):  # a name resolved before
            target.ra, target.dec = float(row["ra"]), float(row["dec"])
        if row is not None and "selection" in row.colnames and row["selection"] != target.selection:
            continue  # made for other instruments or filters (or another box): run it again
        files = complete_files(out_dir / target.id, _query_table_name(target))
        if files is not None:
            record = Record(
                target, status="no data" if not any(f.endswith(".fits") for f in files) else "done"
            )
            record.files = files
            if row is not None and row["status"] == record.status:
                record.bytes, record.requests, record.seconds = (
                    int(row["bytes"]),
                    int(row["requests"]),
                    float(row["seconds"]),
                )
            records[target.id] = record
        elif row is not None and row["status"] == "failed":
            records[target.id] = Record(target, status="failed", error=str(row["error"]))
    return records


def write_manifest(out_dir: Path, records: dict[str, Record], meta: dict) -> Path:
    """Write the manifest atomically (temporary name, then rename)."""
    table = Table(
        rows=[r.row() for r in records.values()],
        names=[name for name, _ in _MANIFEST_COLUMNS],
        dtype=[kind for _, kind in _MANIFEST_COLUMNS],
    )
    table.meta.update(meta)
    return write_atomically(
        out_dir / MANIFEST, lambda path: table.write(path, format="ascii.ecsv", overwrite=True)
    )
