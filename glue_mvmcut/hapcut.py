"""The four functions of drizzlepac's deprecated ``hapcut_utils``, on top of glue-mvmcut's core.

Same names, arguments and output file names, without the predecessor's defects:

- ``mvm_id_filenames`` keeps every layer whose skycell overlaps the box (decided geometrically,
  not by a raw-degree window on the layer centre) and names its table from the coordinate
  digits correctly (``mvm_query-ra84d9208-decs69d1467_15_cutout.ecsv``).
- ``mvm_retrieve_files`` downloads with verification into a cache, and works when every file is
  already present.
- ``make_the_cut`` cuts SCI and WHT pixel-exactly with the right shape order, from paths or
  strings, and names cutouts ``hst_cutout_skycell-<skycell>-ra…-dec…_<instr>_<det>_<filter>…``.
- ``mvm_combine`` makes WHT-weighted float32 mosaics with a correct WCS (coarse and
  cross-projection-cell inputs resampled), keeps fine and coarse apart, keeps ``_coarse`` in the
  name, and returns the files it wrote.

Nothing here configures logging handlers or writes log files; ``log_level`` sets the level of
the ``glue_mvmcut`` logger.
"""

import logging
import shutil
from contextlib import ExitStack
from pathlib import Path

from astropy.io import fits
from astropy.table import Table

from .core.combine import combine_cutouts
from .core.coords import parse_coord, parse_size
from .core.cutout import cut_layer
from .core.download import download_layer
from .core.files import writable_folder
from .core.mast import query_layers
from .core.names import safe_filename
from .core.pipeline import write_query_table

__all__ = ["mvm_id_filenames", "mvm_retrieve_files", "make_the_cut", "mvm_combine"]

log = logging.getLogger(__name__)


def _set_level(log_level) -> None:
    logging.getLogger("glue_mvmcut").setLevel(log_level)


def mvm_id_filenames(sky_coord, cutout_size, log_level=logging.INFO, *, output_dir=".") -> Table:
    """Table of the MVM layers (filter- and exposure-level) overlapping a box.

    Parameters
    ----------
    sky_coord : str or `~astropy.coordinates.SkyCoord`
        Centre of the box (``"ra dec"`` in degrees, or a SkyCoord).
    cutout_size : float, (ny, nx) pair or angular `~astropy.units.Quantity`
        Box size; plain numbers are arcseconds.
    log_level : int, optional
        Level of the ``glue_mvmcut`` logger.
    output_dir : path-like, optional
        Where the query table ``mvm_query-…_cutout.ecsv`` is written (default: current folder).

    Returns
    -------
    `~astropy.table.Table`
        One row per layer file (see `~glue_mvmcut.core.mast.query_layers`), with MAST's product
        columns as the seed returned them.
    """
    _set_level(log_level)
    coord, size = parse_coord(sky_coord), parse_size(cutout_size)
    out = writable_folder(output_dir)
    table = query_layers(coord, size)
    path = write_query_table(table, coord, size, out)
    log.info("Wrote the query table to %s.", path)
    return table


def mvm_retrieve_files(
    products, archive=False, clobber=False, log_level=logging.INFO, *, output_dir="."
) -> list[str]:
    """Fetch the layer files of ``products`` into ``output_dir`` unless already there.

    Parameters
    ----------
    products : `~astropy.table.Table`
        Rows of `mvm_id_filenames` (needs ``productFilename`` and ``dataURI``).
    archive : bool, optional
        Keep a copy in the download cache as well (default: move it out).
    clobber : bool, optional
        Download again even if a complete file exists.
    log_level : int, optional
        Level of the ``glue_mvmcut`` logger.
    output_dir : path-like, optional
        Destination folder (default: current folder).

    Returns
    -------
    list of str
        The paths of the files in ``output_dir``, in the order of ``products`` (the seed, which
        downloaded into the current folder, returned bare names).
    """
    _set_level(log_level)
    out = writable_folder(output_dir)
    paths = []
    for row in products:
        name = safe_filename(str(row["productFilename"]))
        target = out / name
        if target.exists() and not clobber and int(row["size"]) == target.stat().st_size:
            log.info("%s is already here; download skipped.", name)
        else:
            cached = download_layer(name, str(row["dataURI"]), overwrite=clobber)
            (shutil.copy2 if archive else shutil.move)(cached, target)
        paths.append(str(target))
    return paths


def make_the_cut(
    input_files, sky_coord, cutout_size, output_dir=".", log_level=logging.INFO, verbose=False
) -> list[str]:
    """Cut SCI and WHT out of each MVM layer file and write one cutout file per layer.

    Parameters
    ----------
    input_files : str, path-like or list of them
        MVM layer files.
    sky_coord : str or `~astropy.coordinates.SkyCoord`
        Centre of the box.
    cutout_size : float, (ny, nx) pair or `~astropy.units.Quantity`
        Box size; plain numbers are arcseconds; ``(ny, nx)`` order, never transposed.
    output_dir : path-like, optional
        Where the cutouts go (default: current folder).
    log_level : int, optional
        Level of the ``glue_mvmcut`` logger.
    verbose : bool, optional
        Log each cutout at INFO level (else DEBUG).

    Returns
    -------
    list of str
        The cutout file names written.
    """
    _set_level(log_level)
    if isinstance(input_files, (str, Path)):
        input_files = [input_files]
    coord, size = parse_coord(sky_coord), parse_size(cutout_size, allow_pixels=True)
    out = writable_folder(output_dir)
    written = []
    for source in input_files:
        path = out / safe_filename(cut_layer(source, coord, size, out_dir=out)[0].header["FILENAME"])
        log.log(logging.INFO if verbose else logging.DEBUG, "Cutout FITS file: %s", path)
        written.append(path.name)
    return written


def mvm_combine(cutout_files, output_dir=".", log_level=logging.INFO, *, combine="wmean") -> list[str]:
    """Combine cutouts of the same instrument/detector/filter (and scale, and exposure for
    exposure-level products) into one mosaic each, WHT-weighted unless ``combine`` says otherwise.

    Unlike the seed, a band with a single cutout also gets a (trivial) mosaic, and the list of
    files written is returned.

    Parameters
    ----------
    cutout_files : list of path-like
        Files written by `make_the_cut`.
    output_dir : path-like, optional
        Where the mosaics go (default: current folder).
    log_level : int, optional
        Level of the ``glue_mvmcut`` logger.
    combine : str or callable, optional
        The combiner (not in the seed): ``"wmean"`` (default), ``"median"``, ``"mean"``,
        ``"min"``, ``"max"``, ``"first"``, ``"last"`` or ``f(sci, wht) -> (sci, wht)``; see
        `~glue_mvmcut.core.combiners`.

    Returns
    -------
    list of str
        Paths of the mosaics written, ``hst_combined_skycells-ra…-dec…_<instr>_<det>_<filter>…``.
    """
    _set_level(log_level)
    if isinstance(cutout_files, (str, Path)):
        cutout_files = [cutout_files]
    out = writable_folder(output_dir)
    with ExitStack() as files:  # read a block of rows at a time as the mosaics need them
        cutouts = [files.enter_context(fits.open(path)) for path in sorted(str(p) for p in cutout_files)]
        mosaics = combine_cutouts(cutouts, combine=combine, out_dir=out).values()
        return [str(out / safe_filename(mosaic[0].header["FILENAME"])) for mosaic in mosaics]
