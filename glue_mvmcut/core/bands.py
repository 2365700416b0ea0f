"""Which band a cutout or mosaic is of: instrument, detector, filter, pixel scale and exposure,
from its names or, failing them, its keywords; cutouts grouped by band for their mosaics."""

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs.utils import proj_plane_pixel_scales

from .errors import InvalidNameError, NotMVMFileError
from .fitsheaders import read_wcs
from .names import Band, parse_product_name
from .skycells import SCALES

__all__ = ["UNKNOWN_BAND", "Input", "band_of", "group_by_band", "inputs", "images_by_band", "filter_name"]

#: The band of cutouts that neither their names nor their headers tell (one mosaic per call).
UNKNOWN_BAND = Band(instrument="unknown", detector="unknown", filter="unknown")


@dataclass
class Input:
    """One cutout as combine reads it: its SCI and WHT HDUs, primary header, band (None when
    nothing tells it) and how messages name it."""

    hdul: fits.HDUList
    sci: fits.ImageHDU
    wht: fits.ImageHDU
    band: Band | None
    name: str

    @classmethod
    def of(cls, hdul: fits.HDUList, index: int = 0) -> "Input":
        primary = hdul[0].header
        named = hdul.filename() or primary.get("FILENAME") or primary.get("ORIG_FLE")
        name = Path(str(named)).name if named else f"cutout {index + 1} (in memory)"
        extensions = {}
        for hdu in hdul[1:]:
            # astrocut names both CUTOUT and keeps the layer's names in O_EXT_NM
            for key in ("EXTNAME", "O_EXT_NM"):
                extname = str(hdu.header.get(key, "")).strip().upper()
                if extname in ("SCI", "WHT"):
                    extensions.setdefault(extname, hdu)
                    break
        for extname in ("SCI", "WHT"):
            if extname not in extensions:
                raise NotMVMFileError(f"{name} is not a cutout: it has no {extname} extension.")
        sci, wht = extensions["SCI"], extensions["WHT"]
        return cls(hdul, sci, wht, _band(hdul, sci), name)

    @property
    def primary(self) -> fits.Header:
        return self.hdul[0].header

    def get(self, keyword: str, default=None):
        """A keyword of the primary header, else of SCI's."""
        return self.primary.get(keyword, self.sci.header.get(keyword, default))


def _band(hdul: fits.HDUList, sci: fits.ImageHDU) -> Band | None:
    """The band an image's names say (FILENAME, ORIG_FLE, its file's name), else its keywords."""
    names = (hdul[0].header.get("FILENAME"), hdul[0].header.get("ORIG_FLE"), sci.header.get("ORIG_FLE"))
    for name in (*names, Path(hdul.filename() or "").name):
        try:
            return parse_product_name(str(name or "")).band
        except InvalidNameError:
            continue
    return _band_from_keywords(hdul[0].header, sci)


def _band_from_keywords(primary: fits.Header, sci: fits.ImageHDU) -> Band | None:
    """The band INSTRUME, DETECTOR and FILTER (or ACS's FILTER1 and FILTER2) give, with the scale
    nearest the SCI WCS's pixel scale; None where they are missing or malformed."""

    def value(keyword: str) -> str:
        return str(primary.get(keyword, sci.header.get(keyword, ""))).strip()

    filters = value("FILTER") or ";".join(v for v in (value("FILTER1"), value("FILTER2")) if v)
    if not (value("INSTRUME") and value("DETECTOR") and filters):
        return None
    wcs = read_wcs(sci.header).celestial
    if not wcs.has_celestial:
        return None
    arcsec = float(np.mean(proj_plane_pixel_scales(wcs))) * 3600
    try:
        return Band(
            instrument=value("INSTRUME").lower(),
            detector=value("DETECTOR").lower(),
            filter=filter_name(filters),
            scale=min(SCALES, key=lambda scale: abs(SCALES[scale] - arcsec)),
        )
    except InvalidNameError:
        return None


def filter_name(raw: str) -> str:
    """An MVM name's filter from a FILTER keyword, as drizzlepac's ``determine_filter_name`` makes
    it: the first two of the ';'-separated wheels, clear (and SBC's n/a) ones left out, a
    polarizer last, joined by '-'; ``clear`` when both are clear."""
    wheels = [f for f in raw.lower().split(";")[:2] if "clear" not in f and "n/a" not in f]
    if wheels and wheels[0].startswith("pol"):
        wheels.reverse()
    return "-".join(wheels) or "clear"


def band_of(hdul: fits.HDUList) -> Band:
    """The band of a layer, cutout or mosaic: from its FILENAME or ORIG_FLE keyword or its file's
    name, else from its INSTRUME, DETECTOR and FILTER keywords and pixel scale.

    Raises
    ------
    NotMVMFileError
        Naming the file, if it has no SCI and WHT extensions or nothing tells its band.
    """
    image = Input.of(hdul)
    if image.band is None:
        raise NotMVMFileError(_no_band(image))
    return image.band


def _no_band(image: Input) -> str:
    return (
        f"Cannot tell the band of {image.name}: neither its name, FILENAME or ORIG_FLE, nor its "
        "INSTRUME, DETECTOR and FILTER keywords give it."
    )


def group_by_band(cutouts: Sequence[fits.HDUList]) -> dict[Band, list[fits.HDUList]]:
    """Group cutouts by band (instrument, detector, filter, scale, exposure), in input order.

    Cutouts whose band nothing tells (`band_of`) form one group, `UNKNOWN_BAND`, when none of
    the others tells one either: one mosaic per call.

    Raises
    ------
    NotMVMFileError
        Naming the first cutout whose band cannot be told, when others' can.
    """
    return {band: [image.hdul for image in group] for band, group in images_by_band(inputs(cutouts)).items()}


def inputs(cutouts: Sequence[fits.HDUList]) -> list[Input]:
    return [Input.of(cutout, index) for index, cutout in enumerate(cutouts)]


def images_by_band(images: list[Input]) -> dict[Band, list[Input]]:
    unknown = [image for image in images if image.band is None]
    if unknown and len(unknown) < len(images):
        raise NotMVMFileError(_no_band(unknown[0]) + " Combine it in a call of its own.")
    groups: dict[Band, list[Input]] = defaultdict(list)
    for image in images:
        groups[image.band or UNKNOWN_BAND].append(image)
    return dict(groups)
