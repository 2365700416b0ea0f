"""Target tables: the rows of a catalogue read and checked, one `Target` each."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table

from .coords import parse_coord, parse_size
from .errors import InvalidTargetsError, MVMCutError
from .names import checked_selection, safe_filename

__all__ = ["Target", "read_targets"]


@dataclass
class Target:
    """One row of a target table, checked.

    ``ra``/``dec`` are None until a ``name`` is resolved; ``error`` says why the row cannot run.
    """

    row: int
    id: str
    text: str
    size: tuple[float, float] | None
    ra: float | None = None
    dec: float | None = None
    name: str | None = None
    instruments: tuple[str, ...] | None = None
    filters: tuple[str, ...] | None = None
    error: str | None = None

    @property
    def box(self):
        """(coord, (ny, nx)) for the pipeline."""
        return (self.ra, self.dec), self.size

    @property
    def selection(self) -> str:
        """What this target asks for besides its position: box (width x height), instruments, filters."""
        box = "?" if self.size is None else f"{self.size[1]:g}x{self.size[0]:g} arcsec"
        picked = [", ".join(chosen) if chosen else "all" for chosen in (self.instruments, self.filters)]
        return f"{box}; instruments: {picked[0]}; filters: {picked[1]}"


def _read_table(targets) -> Table:
    if isinstance(targets, Table):
        return targets
    path = Path(targets)
    if not path.is_file():
        raise InvalidTargetsError(f"No target table at {path}.")
    suffix = "".join(path.suffixes[-2:]).lower()
    fmt = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv"}.get(path.suffix.lower())
    if fmt is None and (".fits" in suffix or ".fit" in suffix):
        fmt = "fits"
    try:
        return Table.read(path, format=fmt) if fmt else Table.read(path)
    except Exception as exc:  # astropy raises many kinds for unreadable tables
        raise InvalidTargetsError(f"Cannot read the target table {path}: {exc}") from exc


def _cell(table: Table, column: str | None, row: int):
    """A table cell as a plain Python value, or None when the column is absent or the cell empty."""
    if column is None:
        return None
    value = table[column][row]
    if value is np.ma.masked or (np.ma.isMaskedArray(value) and value.mask.all()):
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        value = value.strip()
        return value or None
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


_TARGET_KEYS = ("id", "ra", "dec", "name", "size", "size_y", "filters", "instruments")


def _names(value) -> tuple[str, ...] | None:
    if value is None:
        return None
    parts = [part.strip() for part in str(value).replace(";", ",").split(",") if part.strip()]
    return tuple(parts) or None


def read_targets(
    targets,
    *,
    size=None,
    size_y=None,
    instruments: Sequence[str] | None = None,
    filters: Sequence[str] | None = None,
) -> list[Target]:
    """Read and check a target table; problems with single rows are kept as `Target.error`.

    Parameters
    ----------
    targets : `~astropy.table.Table` or path
        A table (or a CSV, ECSV or FITS file) with columns ``ra`` and ``dec`` (degrees, or
        sexagesimal strings with RA in hours) or ``name`` (resolved by MAST's resolver), and
        optionally ``id`` (the output folder name; default the row number, ``0001`` …),
        ``size`` and ``size_y`` (arcsec), ``filters`` and ``instruments`` (comma-separated).
        Column names are case-insensitive; empty cells take the defaults.
    size, size_y : float, optional
        Box width and height (arcsec) for rows without their own (``size_y`` defaults to
        ``size``).
    instruments, filters : sequence of str, optional
        Defaults for rows without their own.

    Returns
    -------
    list of `Target`

    Raises
    ------
    InvalidTargetsError
        If the table cannot be read, has neither ``ra``/``dec`` nor ``name`` columns, or repeats
        an ``id``.
    """
    table = _read_table(targets)
    columns = {name.lower(): name for name in table.colnames}
    if not ({"ra", "dec"} <= columns.keys() or "name" in columns):
        raise InvalidTargetsError(
            f"The target table needs columns 'ra' and 'dec', or 'name'; it has {', '.join(table.colnames)}."
        )
    width = max(4, len(str(len(table))))
    out, seen = [], {}
    for row in range(len(table)):
        cell = {key: _cell(table, columns.get(key), row) for key in _TARGET_KEYS}
        target_id = str(cell["id"]) if cell["id"] is not None else f"{row + 1:0{width}d}"
        if target_id in seen:
            raise InvalidTargetsError(f"The id {target_id!r} is used by rows {seen[target_id]} and {row}.")
        seen[target_id] = row
        ra, dec, name = cell["ra"], cell["dec"], cell["name"]
        text = f"{ra} {dec}" if ra is not None and dec is not None else (name or "")
        target = Target(
            row=row,
            id=target_id,
            text=text,
            size=None,
            name=name,
            instruments=_names(cell["instruments"]) or (tuple(instruments) if instruments else None),
            filters=_names(cell["filters"]) or (tuple(filters) if filters else None),
        )
        try:
            safe_filename(target_id)
            checked_selection(target.instruments, target.filters)  # a row's own, before any work
            width_arcsec = cell["size"] if cell["size"] is not None else size
            height_arcsec = cell["size_y"] if cell["size_y"] is not None else size_y
            if width_arcsec is None:
                raise InvalidTargetsError("no box size: give a 'size' column or a default size.")
            if height_arcsec is None:
                height_arcsec = width_arcsec
            ny, nx = parse_size((float(height_arcsec), float(width_arcsec))).value
            target.size = (float(ny), float(nx))
            if ra is not None and dec is not None:
                coord = parse_coord(ra, dec)
                target.ra, target.dec, target.name = coord.ra.deg, coord.dec.deg, None
            elif name is None:
                raise InvalidTargetsError("neither a position (ra, dec) nor a name.")
        except (MVMCutError, ValueError) as exc:
            target.error = str(exc)
        out.append(target)
    return out
