"""SCI + WHT cutouts of one MVM layer: exact pixel slices, never resampled.

Cutting uses astropy's `~astropy.nddata.Cutout2D` on memory-mapped arrays, so only the rows and
columns of the box are read. A box partly off the layer keeps its full size, padded with 0 (no
data, as MVM layers mark it). The output keeps the layer's primary header (plus RA_OBJ, DEC_OBJ,
ORIG_FLE, FILENAME) and its extension headers with CRPIX shifted, so the cutout's WCS is the
layer's own.
"""

import logging
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.nddata import Cutout2D, NoOverlapError
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS, FITSFixedWarning

from .coords import parse_coord, parse_size
from .errors import InvalidNameError, NotMVMFileError, OutsideFootprintError
from .products import CutoutName, LayerName

__all__ = ["cut_layer", "open_layer", "layer_name"]

log = logging.getLogger(__name__)

_EXTENSIONS = ("SCI", "WHT")


def layer_name(hdul: fits.HDUList, path: Path | None = None) -> LayerName:
    """The MVM layer a file holds, from its file name or, failing that, its FILENAME keyword."""
    candidates = [path.name] if path is not None else []
    candidates.append(str(hdul[0].header.get("FILENAME", "")))
    for candidate in candidates:
        try:
            return LayerName.parse(candidate)
        except InvalidNameError:
            continue
    shown = path.name if path is not None else candidates[-1] or "this file"
    raise NotMVMFileError(
        f"{shown} is not an MVM layer: neither its name nor its FILENAME keyword is an MVM layer "
        "name such as hst_skycell-p0081x14y14_acs_wfc_f814w_all_drc.fits."
    )


def open_layer(source) -> tuple[fits.HDUList, LayerName]:
    """Open an MVM layer file memory-mapped, after checking that it is one and is whole.

    Raises
    ------
    NotMVMFileError
        If the file is not FITS, is truncated, has no SCI/WHT images of one 2-D shape or no
        celestial WCS, or its name is not an MVM layer name.
    """
    path = Path(source)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", AstropyWarning)
            hdul = fits.open(path, memmap=True)
    except FileNotFoundError:
        raise NotMVMFileError(f"{path} does not exist.") from None
    except (OSError, ValueError, TypeError) as exc:
        raise NotMVMFileError(f"{path.name} is not a readable FITS file ({exc}).") from exc
    try:
        with warnings.catch_warnings(record=True) as more:
            warnings.simplefilter("always", AstropyWarning)
            hdul.readall()
        for warning in caught + more:  # astropy only warns when a file is cut short
            if "truncated" in str(warning.message):
                raise NotMVMFileError(f"{path.name} is truncated ({warning.message}).")
        name = layer_name(hdul, path)
        size = path.stat().st_size
        shapes = set()
        for extname in _EXTENSIONS:
            if extname not in hdul:
                raise NotMVMFileError(f"{path.name} is not an MVM layer: it has no {extname} extension.")
            index = hdul.index_of(extname)
            info = hdul.fileinfo(index)
            if info["datLoc"] + info["datSpan"] > size:
                raise NotMVMFileError(f"{path.name} is truncated: its {extname} data ends past the file.")
            header = hdul[index].header
            if header.get("NAXIS") != 2:
                raise NotMVMFileError(f"{path.name}: the {extname} extension is not a 2-D image.")
            shapes.add((header["NAXIS2"], header["NAXIS1"]))
        if len(shapes) != 1:
            raise NotMVMFileError(f"{path.name}: SCI and WHT have different shapes {sorted(shapes)}.")
        if not _wcs(hdul["SCI"].header).has_celestial:
            raise NotMVMFileError(f"{path.name}: the SCI extension has no celestial WCS.")
    except (OSError, ValueError, TypeError) as exc:
        hdul.close()
        if isinstance(exc, NotMVMFileError):
            raise
        raise NotMVMFileError(f"{path.name} is not a readable FITS file ({exc}).") from exc
    except BaseException:
        hdul.close()
        raise
    return hdul, name


def _wcs(header: fits.Header) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)  # e.g. "RADECSYS -> RADESYS" notes
        return WCS(header)


def _cut_header(header: fits.Header, cutout: Cutout2D, layer_file: str) -> fits.Header:
    """The layer's extension header for the cutout: new NAXIS, CRPIX shifted, provenance."""
    out = header.copy()
    ny, nx = cutout.shape
    out["NAXIS1"], out["NAXIS2"] = nx, ny
    # The cutout's pixel (0, 0) sits at this 0-based pixel of the layer.
    dx, dy = (
        cutout.origin_original[0] - cutout.origin_cutout[0],
        cutout.origin_original[1] - cutout.origin_cutout[1],
    )
    out["CRPIX1"] = header["CRPIX1"] - dx
    out["CRPIX2"] = header["CRPIX2"] - dy
    out["LTV1"] = (-float(dx), "offset of the layer's pixel grid in this cutout")
    out["LTV2"] = (-float(dy), "offset of the layer's pixel grid in this cutout")
    out["ORIG_FLE"] = layer_file  # the layer this cutout was cut from (too long for a comment)
    out["O_EXT_NM"] = (header.get("EXTNAME", ""), "extension of the layer")
    return out


def cut_layer(source, coord, size) -> fits.HDUList:
    """Cut SCI and WHT out of one MVM layer.

    Parameters
    ----------
    source : path-like
        A local MVM layer file.
    coord : `~astropy.coordinates.SkyCoord` or anything `~glue_mvmcut.core.coords.parse_coord` reads
        Centre of the box.
    size : float, (ny, nx) pair, or `~astropy.units.Quantity`
        Plain numbers are arcsec; Quantities may be angular or in pixels (``u.pix``). Never
        transposed: the output shape is ``(ny, nx)``.

    Returns
    -------
    `~astropy.io.fits.HDUList`
        PRIMARY (the layer's primary header + RA_OBJ, DEC_OBJ, ORIG_FLE, FILENAME), SCI and WHT
        (float32, the layer's pixels, 0 where the box leaves the layer).

    Raises
    ------
    OutsideFootprintError
        If the box lies wholly outside the layer.
    NotMVMFileError
        If ``source`` is not a readable, complete MVM layer.
    """
    coord = parse_coord(coord)
    size = parse_size(size, allow_pixels=True)
    hdul, layer = open_layer(source)
    with hdul:
        wcs = _wcs(hdul["SCI"].header).celestial
        if size.unit == u.pix:
            shape = tuple(int(round(v)) for v in size.value)
        else:
            shape = size
        try:
            cuts = {
                ext: Cutout2D(
                    hdul[ext].data, coord, shape, wcs=wcs, mode="partial", fill_value=0.0, copy=True
                )
                for ext in _EXTENSIONS
            }
        except NoOverlapError:
            raise OutsideFootprintError(
                f"The {size[1]:g} x {size[0]:g} box at {coord.to_string('decimal', precision=6)} "
                f"lies wholly outside {layer.filename}."
            ) from None
        primary = hdul[0].header.copy()
        name = CutoutName.for_layer(layer, coord.ra.deg, coord.dec.deg).filename
        primary["RA_OBJ"] = (coord.ra.deg, "[deg] right ascension of the cutout centre")
        primary["DEC_OBJ"] = (coord.dec.deg, "[deg] declination of the cutout centre")
        primary["ORIG_FLE"] = layer.filename
        primary["FILENAME"] = name
        out = fits.HDUList([fits.PrimaryHDU(header=primary)])
        for ext, cut in cuts.items():
            data = np.asarray(cut.data, dtype=np.float32)
            out.append(fits.ImageHDU(data=data, header=_cut_header(hdul[ext].header, cut, layer.filename)))
    log.debug("Cut %s: %s px", name, cuts["SCI"].shape)
    return out
