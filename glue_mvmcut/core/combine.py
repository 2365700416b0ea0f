"""Mosaics: one WHT-weighted image per band from the cutouts of several skycells.

At every output pixel, SCI is the WHT-weighted mean of the inputs that have data there
(WHT > 0) and WHT is the sum of their weights; pixels nobody covers are 0 in both. Zeros that
mean "no data" are never averaged in.

Inputs on the output's own pixel grid (same CTYPE, CRVAL and CD, CRPIX differing by whole pixels:
fine layers of one projection cell) are pasted exactly. Others (coarse neighbours, offset by 1/3
pixel; skycells of another projection cell) are resampled onto that grid with reproject. The
decision is made from the WCSs, never from names.
"""

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
from astropy.io import fits
from reproject import reproject_exact, reproject_interp
from reproject.mosaicking import reproject_and_coadd

from .cutout import _wcs
from .errors import InvalidNameError, NotMVMFileError
from .products import Band, CombinedName, parse_product_name

__all__ = ["band_of", "group_by_band", "combine_band", "combine_cutouts"]

log = logging.getLogger(__name__)

_RESAMPLERS: dict[str, Callable] = {"interp": reproject_interp, "exact": reproject_exact}
_BLOCK_ROWS = 256
_PRIMARY_KEYS = ("TELESCOP", "INSTRUME", "DETECTOR", "FILTER", "D001SCAL", "RA_OBJ", "DEC_OBJ")


def band_of(hdul: fits.HDUList) -> Band:
    """The band of a layer, cutout or mosaic, from its FILENAME keyword or else ORIG_FLE."""
    header = hdul[0].header
    for key in ("FILENAME", "ORIG_FLE"):
        try:
            return parse_product_name(str(header.get(key, ""))).band
        except InvalidNameError:
            continue
    raise NotMVMFileError(
        f"Cannot tell the band of {header.get('FILENAME', '?')!r}: neither FILENAME nor ORIG_FLE "
        "is an MVM name."
    )


def group_by_band(cutouts: Sequence[fits.HDUList]) -> dict[Band, list[fits.HDUList]]:
    """Group cutouts by band (instrument, detector, filter, scale, exposure), in input order."""
    groups: dict[Band, list[fits.HDUList]] = defaultdict(list)
    for cutout in cutouts:
        groups[band_of(cutout)].append(cutout)
    return dict(groups)


def _integer_offset(wcs_in, wcs_out) -> tuple[int, int] | None:
    """(dx, dy) such that input pixel (x, y) is output pixel (x + dx, y + dy), if the two grids
    coincide up to a whole-pixel shift; else None."""
    a, b = wcs_in.wcs, wcs_out.wcs
    if list(a.ctype) != list(b.ctype):
        return None
    if not (
        np.allclose(a.crval, b.crval, rtol=0, atol=1e-10) and np.allclose(a.cd, b.cd, rtol=1e-12, atol=0)
    ):
        return None
    shift = np.asarray(b.crpix) - np.asarray(a.crpix)
    whole = np.round(shift)
    if not np.allclose(shift, whole, rtol=0, atol=1e-6):
        return None
    return int(whole[0]), int(whole[1])


def _data_box(wht: np.ndarray) -> tuple[slice, slice] | None:
    """Row and column slices bounding the pixels with WHT > 0 (None if there are none)."""
    # Maxima along each axis: no image-sized boolean temporary.
    rows, cols = np.flatnonzero(wht.max(axis=1) > 0), np.flatnonzero(wht.max(axis=0) > 0)
    if not rows.size:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _paste(total: np.ndarray, weights: np.ndarray, sci, wht, offset, scratch: np.ndarray) -> None:
    """Add ``wht * sci`` and ``wht`` into the output sums at an integer offset (clipped).

    In place, through ``scratch`` (float64, at least the block's shape): no temporaries of the
    block's size are allocated.
    """
    dx, dy = offset
    ny, nx = total.shape
    y0, x0 = max(0, dy), max(0, dx)
    y1, x1 = min(ny, dy + sci.shape[0]), min(nx, dx + sci.shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    src = (slice(y0 - dy, y1 - dy), slice(x0 - dx, x1 - dx))
    w = scratch[: y1 - y0, : x1 - x0]
    np.maximum(wht[src], 0.0, out=w)  # negative weights count as none
    weights[y0:y1, x0:x1] += w
    w *= sci[src]
    total[y0:y1, x0:x1] += w


def combine_band(cutouts: Sequence[fits.HDUList], *, resample: str = "exact") -> fits.HDUList:
    """Combine the cutouts of one band into a mosaic on the grid of the first cutout.

    Parameters
    ----------
    cutouts : sequence of `~astropy.io.fits.HDUList`
        Cutouts (PRIMARY, SCI, WHT) of one band, as `~glue_mvmcut.core.cutout.cut_layer` makes.
    resample : {'exact', 'interp'}, optional
        Resampler for inputs off the output grid: flux-conserving pixel overlap
        (`reproject.reproject_exact`, the default) or bilinear (`reproject.reproject_interp`,
        about 6x faster).

    Returns
    -------
    `~astropy.io.fits.HDUList`
        PRIMARY, SCI, WHT (float32), with the provenance of every input in the SCI and WHT headers.
    """
    if not cutouts:
        raise ValueError("combine_band needs at least one cutout.")
    bands = {band_of(c) for c in cutouts}
    if len(bands) != 1:
        raise ValueError(f"combine_band got cutouts of several bands: {sorted(b.label() for b in bands)}")
    first = cutouts[0]
    wcs_out = _wcs(first["SCI"].header).celestial
    shape = first["SCI"].data.shape
    pasted, off_grid = [], []
    for cutout in cutouts:
        wcs_in = _wcs(cutout["SCI"].header).celestial
        offset = _integer_offset(wcs_in, wcs_out)
        if offset is None:
            off_grid.append((cutout, wcs_in))
        elif (box := _data_box(cutout["WHT"].data)) is not None:
            rows, cols = box  # paste only where this input has data: cutouts are mostly padding
            pasted.append(
                (
                    cutout["SCI"].data[rows, cols],
                    cutout["WHT"].data[rows, cols],
                    (offset[0] + cols.start, offset[1] + rows.start),
                )
            )
    resampled = _resample(off_grid, wcs_out, shape, resample) if off_grid else None
    sci = np.zeros(shape, np.float32)
    wht = np.zeros(shape, np.float32)
    # Row blocks keep the float64 sums small: peak memory is about the float32 outputs.
    block = (min(_BLOCK_ROWS, shape[0]), shape[1])
    total, weights, scratch = np.empty(block), np.empty(block), np.empty(block)
    for y0 in range(0, shape[0], _BLOCK_ROWS):
        rows = slice(y0, min(shape[0], y0 + _BLOCK_ROWS))
        n = rows.stop - y0
        total[:n] = 0.0
        weights[:n] = 0.0
        for sci_data, wht_data, (dx, dy) in pasted:
            _paste(total[:n], weights[:n], sci_data, wht_data, (dx, dy - y0), scratch)
        if resampled is not None:
            mean, coverage = resampled[0][rows], resampled[1][rows]
            covered = coverage > 0
            total[:n][covered] += mean[covered] * coverage[covered]
            weights[:n][covered] += coverage[covered]
        # sci stays 0 where no input has weight; elsewhere the float64 quotient, rounded once.
        np.divide(total[:n], weights[:n], out=sci[rows], where=weights[:n] > 0, casting="same_kind")
        wht[rows] = weights[:n]
    method = (
        "exact paste"
        if not off_grid
        else f"paste + reproject_{resample}"
        if len(off_grid) < len(cutouts)
        else f"reproject_{resample}"
    )
    return _mosaic_hdul(cutouts, sci, wht, method)


def _resample(off_grid, wcs_out, shape, resample: str) -> tuple[np.ndarray, np.ndarray]:
    """WHT-weighted mean and summed weight of the off-grid inputs on the output grid."""
    # reproject_and_coadd multiplies the *interpolated* SCI by interpolated weights, so an
    # output pixel next to a no-data (0) input pixel gets a value pulled toward 0 (a 5.0 edge
    # pixel comes out 3.35 at a 1/3 px shift). Marking no-data as NaN makes reproject drop
    # such pixels from that input instead.
    inputs = [(np.where(c["WHT"].data > 0, c["SCI"].data, np.nan), w) for c, w in off_grid]
    return reproject_and_coadd(
        inputs,
        wcs_out,
        shape_out=shape,
        input_weights=[np.clip(c["WHT"].data, 0, None) for c, _ in off_grid],
        combine_function="mean",
        reproject_function=_RESAMPLERS[resample],
        blank_pixel_value=0.0,
    )


def _mosaic_hdul(cutouts, sci, wht, method: str) -> fits.HDUList:
    first = cutouts[0]
    band = band_of(first)
    head = first[0].header
    name = CombinedName.for_band(band, head["RA_OBJ"], head["DEC_OBJ"]).filename
    primary = fits.Header()
    for key in _PRIMARY_KEYS:
        if key in head:
            primary[key] = (head[key], head.comments[key])
    primary["FILENAME"] = name
    primary["NCOMBINE"] = (len(cutouts), "number of cutouts combined")
    primary["COMBMETH"] = (method, "how inputs reached the output grid")
    hdul = fits.HDUList([fits.PrimaryHDU(header=primary)])
    for extname, data in (("SCI", sci), ("WHT", wht)):
        header = first[extname].header.copy()
        for key in ("ORIG_FLE", "O_EXT_NM", "LTV1", "LTV2"):
            header.remove(key, ignore_missing=True)
        header["EXTNAME"] = extname
        header["NCOMBINE"] = (len(cutouts), "number of inputs")
        # Provenance of input i: IFILEi (cutout file), ILAYRi (its layer), IEXTi (extension used).
        for i, cutout in enumerate(cutouts, start=1):
            header[f"IFILE{i:03d}"] = cutout[0].header.get("FILENAME", "")
            header[f"ILAYR{i:03d}"] = cutout[0].header.get("ORIG_FLE", "")
            header[f"IEXT{i:03d}"] = f"{extname},1"
        header.add_history(f"glue_mvmcut: WHT-weighted mean of {len(cutouts)} cutouts ({method}).")
        hdul.append(fits.ImageHDU(data=data, header=header))
    return hdul


def combine_cutouts(cutouts: Sequence[fits.HDUList], *, resample: str = "exact") -> dict[Band, fits.HDUList]:
    """One mosaic per band: `group_by_band` then `combine_band` on each group.

    A band with a single cutout still yields a mosaic (a copy on its own grid).
    """
    return {band: combine_band(group, resample=resample) for band, group in group_by_band(cutouts).items()}
