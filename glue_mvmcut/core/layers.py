"""What an MVM layer holds and where a box falls in it: its name, its SCI and WHT checked, the
box's window computed as astropy's `~astropy.nddata.Cutout2D` does, the cutout's headers, and
physical values of scaled layers. Shared by local and remote cuts (`~glue_mvmcut.core.cutout`)."""

import copy
from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.nddata import NoOverlapError
from astropy.nddata.utils import overlap_slices
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales, skycoord_to_pixel

from .errors import CompressedLayerError, InvalidNameError, NotMVMFileError, OutsideFootprintError
from .files import checked_fits
from .fitsfile import SCALING
from .fitsheaders import HDUInfo, celestial_wcs, edited_header, header_text
from .names import LayerName

__all__ = [
    "EXTENSIONS",
    "Window",
    "layer_name",
    "open_layer",
    "check_extensions",
    "check_shapes",
    "refuse_compressed",
    "box_shape",
    "wcs_scales",
    "find_window",
    "plan_window",
    "cut_header",
    "physical_pixels",
]

#: The extensions a cutout holds.
EXTENSIONS = ("SCI", "WHT")


def layer_name(primary: fits.Header | HDUInfo, filename: str | None = None) -> LayerName:
    """The MVM layer a file holds, from its file name or, failing that, its FILENAME keyword."""
    if filename:
        try:
            return LayerName.parse(filename)
        except InvalidNameError:
            pass
    keyword = str(primary.get("FILENAME", ""))
    try:
        return LayerName.parse(keyword)
    except InvalidNameError:
        pass
    shown = filename or keyword or "this file"
    raise NotMVMFileError(
        f"{shown} is not an MVM layer: neither its name nor its FILENAME keyword is an MVM layer "
        "name such as hst_skycell-p0081x14y14_acs_wfc_f814w_all_drc.fits."
    )


def check_extensions(
    name: str, headers: dict[str, fits.Header | HDUInfo | None]
) -> tuple[tuple[int, int], WCS]:
    """Check SCI and WHT are 2-D images of one shape with a celestial WCS; return (ny, nx) and
    SCI's celestial WCS."""
    shape = check_shapes(name, headers)
    sci = headers["SCI"]
    wcs = celestial_wcs(header_text(sci))
    if wcs is None:
        raise NotMVMFileError(f"{name}: the SCI extension has no celestial WCS.")
    return shape, copy.deepcopy(wcs)


def check_shapes(name: str, headers: dict[str, fits.Header | HDUInfo | None]) -> tuple[int, int]:
    """Check SCI and WHT are 2-D images of one shape; return (ny, nx)."""
    shapes = set()
    for extname, header in headers.items():
        if header is None:
            raise NotMVMFileError(f"{name} is not an MVM layer: it has no {extname} extension.")
        refuse_compressed(name, extname, header)
        if header.get("NAXIS") != 2:
            raise NotMVMFileError(f"{name}: the {extname} extension is not a 2-D image.")
        shapes.add((header["NAXIS2"], header["NAXIS1"]))
    if len(shapes) != 1:
        raise NotMVMFileError(f"{name}: SCI and WHT have different shapes {sorted(shapes)}.")
    return shapes.pop()


def refuse_compressed(name: str, extname: str, header: fits.Header | HDUInfo) -> None:
    """Refuse a tile-compressed extension read over ranges: its header is that of the binary
    table the image is stored in (astropy shows a local file's as the image's), and its rows
    are not the image's."""
    if header.get("ZIMAGE"):
        raise CompressedLayerError(
            f"{name}: its {extname} is tile-compressed, so its rows cannot be read with ranges; "
            "fetch the layer whole (--fetch download, or auto)."
        )


def open_layer(source) -> tuple[fits.HDUList, LayerName]:
    """Open a local MVM layer file memory-mapped, after checking that it is one and is whole.

    Raises
    ------
    NotMVMFileError
        If the file is not FITS, is truncated, has no SCI/WHT images of one 2-D shape or no
        celestial WCS, or its name is not an MVM layer name.
    """
    path = checked_fits(source)
    hdul = fits.open(path)  # memory-mapped; not ``memmap=True``, which refuses scaled integers
    try:
        name = layer_name(hdul[0].header, path.name)
        check_extensions(path.name, {ext: hdul[ext].header if ext in hdul else None for ext in EXTENSIONS})
    except BaseException:
        hdul.close()
        raise
    return hdul, name


@dataclass
class Window:
    """Where the box falls: its shape and the matching slices of the layer and of the cutout."""

    shape: tuple[int, int]
    large: tuple[slice, slice]
    small: tuple[slice, slice]

    @property
    def offset(self) -> tuple[int, int]:
        """(dx, dy): the layer pixel at the cutout's pixel (0, 0)."""
        return (self.large[1].start - self.small[1].start, self.large[0].start - self.small[0].start)


def box_shape(size: u.Quantity, scales: u.Quantity) -> tuple[int, int]:
    """The (ny, nx) pixels of a box of ``size`` at pixel ``scales`` (angle per pixel along x
    and y, as `~astropy.wcs.utils.proj_plane_pixel_scales` gives them), rounded as
    `~astropy.nddata.Cutout2D` does."""
    if size.unit == u.pix:
        return tuple(int(np.round(v)) for v in size.value)
    return tuple(int(np.round((side / scale).decompose())) for side, scale in zip(size, scales, strict=True))


def wcs_scales(wcs: WCS) -> u.Quantity:
    """The pixel scales of a celestial ``wcs``, as `box_shape` takes them."""
    return proj_plane_pixel_scales(wcs) * u.Unit(wcs.wcs.cunit[0])


def find_window(wcs: WCS, layer_shape, coord, size: u.Quantity, what: str) -> Window:
    """The box's window in the layer, computed exactly as `~astropy.nddata.Cutout2D` does."""
    shape = box_shape(size, wcs_scales(wcs))
    x, y = skycoord_to_pixel(coord, wcs, mode="all")
    try:
        large, small = overlap_slices(layer_shape, shape, (float(y), float(x)), mode="partial")
    except NoOverlapError:
        raise OutsideFootprintError(
            f"The {size[1]:g} x {size[0]:g} box at {coord.to_string('decimal', precision=6)} "
            f"lies wholly outside {what}."
        ) from None
    return Window(shape, large, small)


def cut_header(header: fits.Header | HDUInfo, window: Window, layer_file: str) -> fits.Header:
    """The layer's extension header for the cutout: new NAXIS, CRPIX shifted, provenance."""
    ny, nx = window.shape
    dx, dy = window.offset
    return edited_header(
        header,
        [
            ("NAXIS1", nx),
            ("NAXIS2", ny),
            ("CRPIX1", header["CRPIX1"] - dx),
            ("CRPIX2", header["CRPIX2"] - dy),
            ("LTV1", -float(dx), "offset of the layer's pixel grid in this cutout"),
            ("LTV2", -float(dy), "offset of the layer's pixel grid in this cutout"),
            ("ORIG_FLE", layer_file),  # the layer this cutout was cut from (too long for a comment)
            ("O_EXT_NM", header.get("EXTNAME", ""), "extension of the layer"),
        ],
        drop=SCALING,  # the cutout holds physical values
    )


def physical_pixels(stored: np.ndarray, header: fits.Header | HDUInfo) -> np.ndarray:
    """The physical values of pixels ``stored`` as read from the bytes of the HDU whose header
    is ``header``: BSCALE and BZERO applied, BLANK pixels NaN — the values astropy's own read
    of the file gives (as float32, the cutout's type).

    Written by hand because astropy scales only data it reads from a file itself (this follows
    ``_ImageBaseHDU._scale_data``, pseudo-unsigned integers and the falsy ``BLANK = 0`` included),
    and a ranged read fetches the stored bytes.
    """
    bitpix = header["BITPIX"]
    bscale, bzero = header.get("BSCALE", 1), header.get("BZERO", 0)
    blank = header.get("BLANK") if bitpix > 0 else None
    if bscale == 1 and bzero == 0 and blank is None:
        return stored
    unsigned = bscale == 1 and (
        bitpix == 8 and bzero == -128 or bitpix in (16, 32, 64) and bzero == 1 << (bitpix - 1)
    )
    data = np.array(stored, dtype=np.float64 if bitpix > 16 or bitpix == -64 else np.float32)
    if bscale != 1:
        data *= bscale
    if bzero != 0:
        data += bzero
    if blank and not unsigned:
        data[stored == blank] = np.nan
    return data.astype(np.float32, copy=False)


def plan_window(layer: LayerName, headers: dict[str, fits.Header | HDUInfo], coord, size) -> Window:
    """Check the layer's SCI and WHT headers and find the box's window in it."""
    shape, wcs = check_extensions(layer.filename, headers)
    return find_window(wcs, shape, coord, size, layer.filename)
