"""Mosaics: one image per band from the cutouts of several skycells.

At every output pixel, SCI is by default the WHT-weighted mean of the inputs that have data
there (WHT > 0) and WHT is the sum of their weights; other combiners (median, min, max, ...,
or one's own) are in `~glue_mvmcut.core.combiners`. Pixels nobody covers are 0 in both. Zeros
that mean "no data" never take part.

Inputs on the output's own pixel grid (same CTYPE, CRVAL and pixel scale matrix, CRPIX differing
by whole pixels: fine layers of one projection cell) are pasted exactly. Others (coarse
neighbours, offset by 1/3 pixel; skycells of another projection cell) are resampled onto that
grid with reproject. The decision is made from the WCSs, never from names.
"""

import functools
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs.utils import pixel_to_pixel

from .bands import UNKNOWN_BAND, Input, images_by_band, inputs
from .combiners import Combiner, combiner_name, describe, stack_combiner
from .files import atomic_target
from .fitsfile import (
    LaidOutFITS,
    block_bytes,
    file_of,
    open_mapped,
    placeholder,
    read_rows,
    row_blocks,
    stored_rows,
    write_fits,
)
from .fitsheaders import celestial_wcs, hdu_with_header, header_text, read_wcs
from .names import Band, CombinedName, safe_filename
from .threadsafe import per_process

__all__ = ["combine_band", "combine_cutouts", "spilled_mosaics"]

log = logging.getLogger(__name__)

#: Resamplers for inputs off the mosaic's grid: reproject's ``reproject_<name>``.
RESAMPLERS = ("exact", "interp")
_BLOCK_ROWS = 256
_CACHED_PIXELS = 1 << 16
_PRIMARY_KEYS = ("TELESCOP", "INSTRUME", "DETECTOR", "FILTER", "D001SCAL", "RA_OBJ", "DEC_OBJ")


def _celestial(header: fits.Header):
    """The celestial WCS of a header: by wcslib alone where it can (`celestial_wcs`: ~0.3 ms,
    where ``WCS(header)`` takes ~3 ms), a copy of its own."""
    wcs = celestial_wcs(header_text(header))
    return wcs.deepcopy() if wcs is not None else read_wcs(header).celestial


def _integer_offset(wcs_in, wcs_out) -> tuple[int, int] | None:
    """(dx, dy) such that input pixel (x, y) is output pixel (x + dx, y + dy), if the two grids
    coincide up to a whole-pixel shift; else None. The linear part is compared as the pixel scale
    matrix, whichever form the headers wrote it in (CD, or PC and CDELT)."""
    a, b = wcs_in.wcs, wcs_out.wcs
    if list(a.ctype) != list(b.ctype):
        return None
    same_matrix = np.allclose(wcs_in.pixel_scale_matrix, wcs_out.pixel_scale_matrix, rtol=1e-12, atol=0)
    if not (np.allclose(a.crval, b.crval, rtol=0, atol=1e-10) and same_matrix):
        return None
    shift = np.asarray(b.crpix) - np.asarray(a.crpix)
    whole = np.round(shift)
    if not np.allclose(shift, whole, rtol=0, atol=1e-6):
        return None
    return int(whole[0]), int(whole[1])


@dataclass(frozen=True)
class _Piece:
    """An input's pixels on the output grid: ``sci``/``wht`` cover output rows ``y0:y1``,
    columns ``x0:x1``."""

    sci: np.ndarray
    wht: np.ndarray
    y0: int
    x0: int

    @property
    def y1(self) -> int:
        return self.y0 + self.wht.shape[0]

    @property
    def x1(self) -> int:
        return self.x0 + self.wht.shape[1]

    def window(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """SCI and WHT at output rows ``rows`` and columns ``cols`` (inside the piece)."""
        box = (
            slice(rows.start - self.y0, rows.stop - self.y0),
            slice(cols.start - self.x0, cols.stop - self.x0),
        )
        return self.sci[box], self.wht[box]


def _piece(sci: np.ndarray, wht: np.ndarray, offset: tuple[int, int], shape) -> _Piece | None:
    """The part of an input that lands on the output (at whole-pixel ``offset``) and has data.

    None if there is no such part. The box bounds the pixels whose WHT bits are not all zero
    (a superset of WHT > 0 in any byte order: rows and columns of padding are skipped unread).
    NaN SCI pixels get no weight.
    """
    dx, dy = offset
    y0, x0 = max(0, dy), max(0, dx)
    y1, x1 = min(shape[0], dy + wht.shape[0]), min(shape[1], dx + wht.shape[1])
    if y1 <= y0 or x1 <= x0:
        return None
    src = (slice(y0 - dy, y1 - dy), slice(x0 - dx, x1 - dx))
    sci, wht = sci[src], wht[src]
    # Maxima over the raw bits as unsigned integers: no byte swapping, no boolean temporary.
    bits = wht.view(f"u{wht.dtype.itemsize}")
    rows = np.flatnonzero(bits.max(axis=1))
    if not rows.size:
        return None
    bits = bits[rows[0] : rows[-1] + 1]
    cols = np.flatnonzero(bits.max(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    sci, wht = sci[box], wht[box]
    blank = np.isnan(sci)
    if blank.any():  # a scaled layer's BLANK pixels: no data, whatever their weight
        wht = np.where(blank, 0, wht).astype(wht.dtype)
    return _Piece(sci, wht, y0 + int(rows[0]), x0 + int(cols[0]))


def _tasks(pieces: Sequence[_Piece], shape) -> list[tuple[slice, slice, list[_Piece]]]:
    """Split the output into rectangles covered by the same pieces, in blocks of rows.

    The rectangles come from cutting the output along every piece's edges; those no piece
    covers are left out (they stay 0).
    """
    ys = sorted({0, shape[0], *(p.y0 for p in pieces), *(p.y1 for p in pieces)})
    xs = sorted({0, shape[1], *(p.x0 for p in pieces), *(p.x1 for p in pieces)})
    tasks = []
    for ya, yb in pairwise(ys):
        for xa, xb in pairwise(xs):
            cover = [p for p in pieces if p.y0 <= ya and yb <= p.y1 and p.x0 <= xa and xb <= p.x1]
            if cover:
                tasks += [
                    (slice(y, min(yb, y + _BLOCK_ROWS)), slice(xa, xb), cover)
                    for y in range(ya, yb, _BLOCK_ROWS)
                ]
    return tasks


def _fill(sci_out: np.ndarray, wht_out: np.ndarray, rows: slice, cols: slice, cover: list[_Piece]) -> None:
    """Write the weighted mean and summed weight of ``cover`` into one output rectangle.

    Negative and NaN weights count as none. With a single input the mean is its own SCI where
    its WHT > 0: the same bits ``(w * s) / w`` gives (the float64 product of two float32 is exact),
    without the arithmetic.
    """
    sci, wht = sci_out[rows, cols], wht_out[rows, cols]
    if len(cover) == 1:
        _copy(sci, wht, *cover[0].window(rows, cols))
        return
    (first_sci, first_wht), *others = (piece.window(rows, cols) for piece in cover)
    # The float64 sums a few rows at a time, 0.5 MB per array: the three stay in a core's L2 cache
    # (2 MB here; at 1 MB per array they did not, and pixels covered twice took 1.6x as long).
    step = max(1, _CACHED_PIXELS // sci.shape[1])
    buffers = [np.empty((step, sci.shape[1])) for _ in range(3)]
    for y in range(0, sci.shape[0], step):
        part = slice(y, y + step)
        weights, total, w = (buffer[: len(sci[part])] for buffer in buffers)
        # The first input's weight and product go straight into the sums.
        np.fmax(first_wht[part], 0.0, out=weights)
        total.fill(0.0)
        # Only where the weight is > 0: SCI under no weight may be anything, NaN included.
        np.multiply(weights, first_sci[part], out=total, where=weights > 0)
        for s, piece_wht in others:
            np.fmax(piece_wht[part], 0.0, out=w)
            weights += w
            np.multiply(w, s[part], out=w, where=w > 0)  # w stays 0 where it is 0
            total += w
        # sci stays 0 where no input has weight; elsewhere the float64 quotient, rounded once.
        np.divide(total, weights, out=sci[part], where=weights > 0, casting="same_kind")
        np.copyto(wht[part], weights, casting="same_kind")


def _copy(sci: np.ndarray, wht: np.ndarray, s: np.ndarray, w: np.ndarray) -> None:
    """One input's pixels and (non-negative) weights where it has data; 0 elsewhere."""
    np.copyto(wht, w, casting="same_kind")
    np.fmax(wht, 0.0, out=wht)
    np.copyto(sci, s, casting="same_kind", where=wht > 0)  # the output is 0 elsewhere


def _fill_stacked(
    combine: Callable, named: bool, sci_out, wht_out, rows: slice, cols: slice, cover: list[_Piece]
) -> None:
    """Write what ``combine`` (a `~glue_mvmcut.core.combiners.stack_combiner`) makes of the
    aligned stack of ``cover`` into one output rectangle; a ``named`` combiner of one input is
    that input, copied."""
    sci, wht = sci_out[rows, cols], wht_out[rows, cols]
    if named and len(cover) == 1:
        _copy(sci, wht, *cover[0].window(rows, cols))
        return
    windows = [piece.window(rows, cols) for piece in cover]
    stack_sci = np.stack([s for s, _ in windows]).astype(np.float32)
    stack_wht = np.fmax(np.stack([w for _, w in windows]).astype(np.float32), 0)  # NaN: none
    stack_sci[stack_wht <= 0] = np.nan
    out_sci, out_wht = combine(stack_sci, stack_wht)
    observed = (stack_wht > 0).any(axis=0)  # nothing else may show, whatever the combiner
    np.copyto(sci, np.where(observed, out_sci, 0), casting="same_kind")
    np.copyto(wht, np.where(observed, out_wht, 0), casting="same_kind")


def combine_band(
    cutouts: Sequence[fits.HDUList], *, resample: str = "exact", combine: Combiner = "wmean", out_dir=None
) -> fits.HDUList:
    """Combine the cutouts of one band into a mosaic on the grid of the first cutout.

    Parameters
    ----------
    cutouts : sequence of `~astropy.io.fits.HDUList`
        Cutouts (PRIMARY, SCI, WHT) of one band, as `~glue_mvmcut.core.cutout.cut_layer` makes.
    resample : {'exact', 'interp'}, optional
        Resampler for inputs off the output grid: flux-conserving pixel overlap
        (`reproject.reproject_exact`, the default) or bilinear (`reproject.reproject_interp`,
        about 6x faster).
    combine : str or callable, optional
        How overlapping inputs make a pixel: ``"wmean"`` (default), ``"median"``, ``"mean"``,
        ``"min"``, ``"max"``, ``"first"``, ``"last"`` or ``f(sci, wht) -> (sci, wht)``; see
        `~glue_mvmcut.core.combiners` for each one's SCI and WHT.
    out_dir : path-like, optional
        Write the mosaic into this folder under its FILENAME (atomically). One larger than
        ``conf.block_mb`` per array is made and written a block of rows at a time (its inputs
        read as far as each block needs), never whole in memory, and returned opened from its
        file.

    Returns
    -------
    `~astropy.io.fits.HDUList`
        PRIMARY, SCI, WHT (float32), with the provenance of every input in the SCI and WHT headers.
    """
    if not cutouts:
        raise ValueError("combine_band needs at least one cutout.")
    groups = images_by_band(inputs(cutouts))
    if len(groups) != 1:
        raise ValueError(f"combine_band got cutouts of several bands: {sorted(b.label() for b in groups)}")
    ((band, images),) = groups.items()
    return _written(_combine(band, images, resample, combine, out_dir), out_dir)


def _written(mosaic: fits.HDUList, out_dir) -> fits.HDUList:
    """``mosaic``, written into ``out_dir`` (if given) unless it is a file there already."""
    if out_dir is not None and file_of(mosaic) is None:
        write_fits(mosaic, out_dir)
    return mosaic


def _combine(band: Band, images: list[Input], resample: str, combine: Combiner, spill=None) -> fits.HDUList:
    combiner_name(combine)  # an unknown name fails before any work
    if resample not in RESAMPLERS:
        raise ValueError(f"resample must be one of {', '.join(RESAMPLERS)}, not {resample!r}.")
    wcs_out = _celestial(images[0].sci.header)
    shape = images[0].sci.shape
    # (image, its WCS, its whole-pixel offset on the output grid or None, the rows its file
    # stores: beyond them it has no data, and they are never read)
    placed = []
    for image in images:
        wcs_in = _celestial(image.sci.header)
        placed.append((image, wcs_in, _integer_offset(wcs_in, wcs_out), stored_rows(image.wht)))
    off_grid = sum(offset is None for _, _, offset, _ in placed)
    method = (
        "exact paste"
        if not off_grid
        else f"paste + reproject_{resample}"
        if off_grid < len(images)
        else f"reproject_{resample}"
    )
    if combine == "wmean":
        fill = _fill
    else:
        stacked = stack_combiner(combine)
        fill = functools.partial(_fill_stacked, stacked, not callable(combine))
    grid = _Grid(wcs_out, shape, resample, together=combine == "wmean")
    if spill is None or shape[0] * shape[1] * 4 <= block_bytes():
        sci, wht = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        for rows in row_blocks(0, shape[0], shape[1]):
            _fill_rows(_row_pieces(grid, placed, rows), sci[rows], wht[rows], fill)
        return _mosaic_hdul(band, images, wcs_out, sci, wht, method, combine)
    # Larger than a block: made and written into ``spill`` a block of rows at a time.
    hdul = _mosaic_hdul(band, images, wcs_out, placeholder(shape), placeholder(shape), method, combine)
    target = Path(spill) / safe_filename(hdul[0].header["FILENAME"])
    with atomic_target(target) as part:
        file = LaidOutFITS.create(part, hdul)
        for rows in row_blocks(0, shape[0], shape[1]):
            pieces = _row_pieces(grid, placed, rows)
            if not pieces:  # rows no input covers: holes
                continue
            filled = slice(min(p.x0 for p in pieces), max(p.x1 for p in pieces))
            with file.rows(1, rows, filled) as sci, file.rows(2, rows, filled) as wht:
                _fill_rows(pieces, sci, wht, fill)
    return open_mapped(target)


@dataclass(frozen=True)
class _Grid:
    """The mosaic's grid, and how inputs off it reach it: ``resample`` (reproject's
    ``reproject_<resample>``), ``together`` (all at once, weighted as they are combined: for the
    weighted mean) or each on its own."""

    wcs: object
    shape: tuple[int, int]
    resample: str
    together: bool


def _row_pieces(grid: _Grid, placed: list, rows: slice) -> list[_Piece]:
    """The inputs' pieces in the mosaic's rows ``rows`` (offsets within them): each input's rows
    that land there read, pasted or resampled."""
    width = grid.shape[1]
    block = (rows.stop - rows.start, width)
    off_grid = [(image, wcs_in) for image, wcs_in, offset, _ in placed if offset is None]
    # (sci, wht, offset in the block) of each input, in the inputs' order; the off-grid inputs
    # resampled together come last, as one.
    entries = [
        _on_grid_rows(image, offset, rows, width, stored)
        if offset is not None
        else _resampled([(image, wcs_in)], grid, rows)
        for image, wcs_in, offset, stored in placed
        if offset is not None or not grid.together
    ]
    if grid.together and off_grid:
        entries.append(_resampled(off_grid, grid, rows))
    return [
        p for p in _pool().map(lambda entry: _piece(*entry, block), filter(None, entries)) if p is not None
    ]


def _fill_rows(pieces: list[_Piece], sci: np.ndarray, wht: np.ndarray, fill) -> None:
    """Combine ``pieces`` into a block of the mosaic's rows, whose pixels are ``sci`` and ``wht``
    (0 until then)."""
    # Rectangles of at most _BLOCK_ROWS rows, on all cores (numpy releases the GIL): the float64
    # sums stay small, so peak memory is about the float32 outputs.
    for _ in _pool().map(lambda task: fill(sci, wht, *task), _tasks(pieces, sci.shape)):
        pass


def _on_grid_rows(image: Input, offset: tuple[int, int], rows: slice, width: int, stored: slice):
    """(sci, wht, offset) of the pixels of ``image``, at whole-pixel ``offset`` on the mosaic's
    grid, that land in its rows ``rows`` (``width`` wide), of its ``stored`` rows (beyond which
    its WHT is 0); offset within those rows. None if none do."""
    dx, dy = offset
    ny, nx = image.sci.shape
    y0, y1 = max(0, rows.start - dy, stored.start), min(ny, rows.stop - dy, stored.stop)
    x0, x1 = max(0, -dx), min(nx, width - dx)
    if y1 <= y0 or x1 <= x0:
        return None
    window = (slice(y0, y1), slice(x0, x1))
    return read_rows(image.sci, *window), read_rows(image.wht, *window), (dx + x0, dy + y0 - rows.start)


@per_process()
def _pool() -> ThreadPoolExecutor:
    """One thread per core, shared by every combine in the process (batches run many at once)."""
    return ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="mvmcut-combine")


def _resampled(off_grid, grid: _Grid, rows: slice):
    """(sci, wht, (0, 0)): the WHT-weighted mean and summed weight (0 where none) of the off-grid
    inputs on the mosaic's rows ``rows``, each input read only where it reaches them; None if
    none does."""
    # reproject_and_coadd multiplies the *interpolated* SCI by interpolated weights, so an
    # output pixel next to a no-data (0) input pixel gets a value pulled toward 0 (a 5.0 edge
    # pixel comes out 3.35 at a 1/3 px shift). Marking no-data as NaN makes reproject drop
    # such pixels from that input instead.
    # reproject (with dask and scipy) only when something is off the grid: most boxes need none,
    # and importing it took a quarter of a small cut's CPU.
    import reproject
    from reproject.mosaicking import reproject_and_coadd

    # Rows beyond the block's are resampled too, then dropped: reproject_exact gave a few pixels
    # of a grid's first row no weight from an input that a larger grid's same pixels had (seen
    # across two projection cells), and with _HALO rows more the block's pixels are the larger
    # grid's, bit for bit.
    start, stop = max(0, rows.start - _HALO), min(grid.shape[0], rows.stop + _HALO)
    wcs_rows = grid.wcs.deepcopy()
    wcs_rows.wcs.crpix[1] -= start
    shape = (stop - start, grid.shape[1])
    inputs, weights = [], []
    for image, wcs_in in off_grid:
        reach = _reach(wcs_in, image.sci.shape, wcs_rows, shape)
        if reach is None:
            continue
        sci, wht = read_rows(image.sci, *reach), read_rows(image.wht, *reach)
        wcs_part = wcs_in.deepcopy()
        wcs_part.wcs.crpix -= (reach[1].start, reach[0].start)
        inputs.append((np.where(wht > 0, sci, np.nan), wcs_part))
        weights.append(np.clip(wht, 0, None))
    if not inputs:
        return None
    sci, wht = reproject_and_coadd(
        inputs,
        wcs_rows,
        shape_out=shape,
        input_weights=weights,
        combine_function="mean",
        reproject_function=getattr(reproject, f"reproject_{grid.resample}"),
        blank_pixel_value=0.0,
    )
    inside = slice(rows.start - start, rows.stop - start)
    return sci[inside], wht[inside], (0, 0)


#: Rows resampled beyond a block's on either side, see `_resampled`.
_HALO = 2
#: Input pixels beyond those whose centres fall in a block of output rows that resampling it may
#: use (bilinear interpolation: one; overlap: the pixels a border output pixel touches).
_MARGIN = 2
#: Points per output edge whose input pixels bound the input pixels a block of rows needs.
_EDGE_STEP = 64


def _reach(wcs_in, in_shape, wcs_out, out_shape) -> tuple[slice, slice] | None:
    """The rows and columns of an input (``wcs_in``, ``in_shape``) that resampling onto the
    grid ``wcs_out`` of ``out_shape`` may use: the input pixels of the output's border,
    with a margin; None if they miss the input."""
    ny, nx = out_shape
    xs = np.unique(np.r_[np.arange(-0.5, nx, _EDGE_STEP), nx - 0.5])
    ys = np.unique(np.r_[np.arange(-0.5, ny, _EDGE_STEP), ny - 0.5])
    x = np.r_[xs, xs, np.full(len(ys), -0.5), np.full(len(ys), nx - 0.5)]
    y = np.r_[np.full(len(xs), -0.5), np.full(len(xs), ny - 0.5), ys, ys]
    ix, iy = pixel_to_pixel(wcs_out, wcs_in, x, y)
    if not (np.all(np.isfinite(ix)) and np.all(np.isfinite(iy))):
        return (slice(0, in_shape[0]), slice(0, in_shape[1]))  # the whole input: no telling
    x0, x1 = max(0, int(np.floor(ix.min())) - _MARGIN), min(in_shape[1], int(np.ceil(ix.max())) + _MARGIN + 1)
    y0, y1 = max(0, int(np.floor(iy.min())) - _MARGIN), min(in_shape[0], int(np.ceil(iy.max())) + _MARGIN + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return slice(y0, y1), slice(x0, x1)


def _mosaic_hdul(
    band: Band, images: list[Input], wcs_out, sci, wht, method: str, combine: Combiner
) -> fits.HDUList:
    first = images[0]
    head = first.primary
    if "RA_OBJ" in head and "DEC_OBJ" in head:
        ra, dec = head["RA_OBJ"], head["DEC_OBJ"]
    else:  # a cutout made by other tools: named by the centre of its grid
        centre = wcs_out.pixel_to_world((sci.shape[1] - 1) / 2, (sci.shape[0] - 1) / 2).icrs
        ra, dec = centre.ra.deg, centre.dec.deg
    name = CombinedName.for_band(band, ra, dec).filename
    primary = fits.Header()
    for key in _PRIMARY_KEYS:
        if key in head:
            primary[key] = (head[key], head.comments[key])
    if band != UNKNOWN_BAND:
        for key, known in (
            ("INSTRUME", band.instrument),
            ("DETECTOR", band.detector),
            ("FILTER", band.filter),
        ):
            primary.setdefault(key, known.upper())
    primary["FILENAME"] = name
    primary["NCOMBINE"] = (len(images), "number of cutouts combined")
    primary["COMBMETH"] = (method, "how inputs reached the output grid")
    primary["COMBINE"] = (combiner_name(combine)[:68], "how overlapping inputs were combined")
    hdul = fits.HDUList([fits.PrimaryHDU(header=primary)])
    for extname, data in (("SCI", sci), ("WHT", wht)):
        header = getattr(first, extname.lower()).header.copy()
        for key in ("ORIG_FLE", "O_EXT_NM", "ORIG_EXT", "LTV1", "LTV2"):
            header.remove(key, ignore_missing=True)
        header["EXTNAME"] = extname
        header["NCOMBINE"] = (len(images), "number of inputs")
        # Provenance of input i: IFILEi (cutout file), ILAYRi (its layer), IEXTi (extension used).
        for i, image in enumerate(images, start=1):
            header[f"IFILE{i:03d}"] = image.primary.get("FILENAME", image.name)
            header[f"ILAYR{i:03d}"] = image.get("ORIG_FLE", "")
            header[f"IEXT{i:03d}"] = f"{extname},1"
        header.add_history(f"glue_mvmcut: {describe(combine)} of {len(images)} cutouts ({method}).")
        hdul.append(hdu_with_header(fits.ImageHDU, header, data))
    return hdul


def combine_cutouts(
    cutouts: Sequence[fits.HDUList], *, resample: str = "exact", combine: Combiner = "wmean", out_dir=None
) -> dict[Band, fits.HDUList]:
    """One mosaic per band: `group_by_band` then `combine_band` on each group (``resample``,
    ``combine`` and ``out_dir`` as there).

    A band with a single cutout still yields a mosaic (a copy on its own grid). Cutouts need SCI
    and WHT extensions (by EXTNAME, or astrocut's O_EXT_NM) and a celestial WCS; their band
    comes from `band_of`.
    """
    mosaics = spilled_mosaics(cutouts, resample=resample, combine=combine, spill=out_dir)
    return {band: _written(mosaic, out_dir) for band, mosaic in mosaics.items()}


def spilled_mosaics(
    cutouts: Sequence[fits.HDUList], *, resample: str = "exact", combine: Combiner = "wmean", spill=None
) -> dict[Band, fits.HDUList]:
    """`combine_cutouts`, but only mosaics larger than ``conf.block_mb`` per array are written
    (into ``spill``, a block of rows at a time, and returned opened from their files); the
    others are returned in memory, not written."""
    groups = images_by_band(inputs(cutouts))
    return {band: _combine(band, images, resample, combine, spill) for band, images in groups.items()}
