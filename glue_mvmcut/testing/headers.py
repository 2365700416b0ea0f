"""Headers and side extensions for the synthetic archive, as long and as shaped as real MVM layers'.

A real layer's primary header holds drizzle keywords for every input exposure (~870 cards), its
SCI header ~106 cards and its WHT header ~56 (the predecessor's docs show a real cutout with
872 / 106 / 56); after WHT come CTX (the context image: bit k set where input k contributed) and
HDRTAB (a row of header keywords per input). How long the headers are decides how many round
trips a ranged cutout takes and what parsing them costs, so the synthetic ones are as long; the
keywords are modelled on real ones, the values made up.
"""

import zlib

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

__all__ = ["input_names", "primary_header", "image_header", "context", "hdrtab"]

# Cards of a real MVM primary header besides the per-input ones (values made up).
_PRIMARY = (
    ("DATE", "2021-10-13", "date this file was written (yyyy-mm-dd)"),
    ("FILETYPE", "SCI", "type of data found in data file"),
    ("TELESCOP", "HST", "telescope used to acquire data"),
    ("EQUINOX", 2000.0, "equinox of celestial coord. system"),
    ("PRIMESI", "{INSTRUME}", "instrument designated as prime"),
    ("TARGNAME", "ANY", "proposer's target name"),
    ("PROPOSID", 16000, "PEP proposal identifier"),
    ("PR_INV_L", "Doe", "last name of principal investigator"),
    ("PR_INV_F", "Jane", "first name of principal investigator"),
    ("SUNANGLE", 95.2, "angle between sun and V1 axis"),
    ("MOONANGL", 70.1, "angle between moon and V1 axis"),
    ("FGSLOCK", "FINE", "commanded FGS lock (FINE,COARSE,GYROS,UNKNOWN)"),
    ("GYROMODE", "T", "number of gyros scheduled, T=3+OBAD"),
    ("REFFRAME", "ICRS", "guide star catalog version"),
    ("MTFLAG", " ", "moving target flag; T if it is a moving target"),
    ("DATE-OBS", "2010-01-01", "UT date of start of first exposure"),
    ("TIME-OBS", "00:00:00", "UT start time of first exposure"),
    ("EXPSTART", 55197.0, "exposure start time (Modified Julian Date)"),
    ("EXPEND", 59197.0, "exposure end time (Modified Julian Date)"),
    ("EXPTIME", 0.0, "exposure duration (seconds)--calculated"),
    ("TEXPTIME", 15000.0, "total exposure time (seconds) of all inputs"),
    ("EXPFLAG", "NORMAL", "Exposure interruption indicator"),
    ("QUALCOM1", " ", ""),
    ("QUALCOM2", " ", ""),
    ("QUALCOM3", " ", ""),
    ("QUALITY", " ", "quality of the data"),
    ("OBSTYPE", "IMAGING", "observation type - imaging or spectroscopic"),
    ("OBSMODE", "ACCUM", "operating mode"),
    ("SUBARRAY", False, "data from a subarray (T) or full frame (F)"),
    ("APERTURE", "MULTIPLE", "aperture name"),
    ("PROPAPER", " ", "proposed aperture name"),
    ("DIRIMAGE", "NONE", "direct image for grism or prism exposure"),
    ("CAL_VER", "3.6.2", "CALACS code version"),
    ("PROCTIME", 59500.1234, "pipeline processing time (MJD)"),
    ("DRIZCORR", "COMPLETE", "drizzle processing"),
    ("DITHCORR", "COMPLETE", "dither processing"),
    ("HAPLEVEL", 4, "classification level of this product"),
    ("IMGMODE", "MVM", "image mode of this product"),
    ("ASN_ID", "NONE", "unique identifier assigned to association"),
    ("ASN_TAB", "NONE", "name of the association table"),
    ("NDRIZIM", "{INPUTS}", "Drizzle, No. images drizzled onto output"),
    ("DRIZWCS", "{WCSNAME}", "WCS of the drizzled product"),
    ("DISTNAME", "{WCSNAME}", "name of the distortion model"),
    ("SIPNAME", "NONE", "name of the SIP model"),
    ("GAIAVER", "GAIAeDR3", "catalogue the inputs were aligned to"),
    ("NMATCHES", 1234, "sources matched to the catalogue"),
    ("RMS_RA", 2.1, "RMS of the fit in RA (mas)"),
    ("RMS_DEC", 2.4, "RMS of the fit in Dec (mas)"),
    ("FITGEOM", "rscale", "fit geometry used for the alignment"),
    ("MEANEXPT", "{WEIGHT}", "mean exposure time per pixel (s)"),
    ("MEDEXPT", "{WEIGHT}", "median exposure time per pixel (s)"),
    ("MEANNEXP", 2, "mean number of exposures per pixel"),
    ("MEDNEXP", 2, "median number of exposures per pixel"),
    ("MEANWHT", "{WEIGHT}", "mean weight per pixel"),
    ("MEDWHT", "{WEIGHT}", "median weight per pixel"),
    ("SYNTHETC", True, "glue_mvmcut.testing.synth archive"),
)
# Drizzle keywords written for every input k (D001DATA ... D0kkISCL), as drizzlepac's
# outputimage.py names them.
_PER_INPUT = (
    ("VER", "WCSLIB Drizzle 1.3", "Drizzle, task version"),
    ("GEOM", "Header WCS", "Drizzle, source of geometric information"),
    ("DATA", "{root}_flc.fits[sci,1]", "Drizzle, input data image"),
    ("DEXP", 500.0, "Drizzle, input image exposure time (s)"),
    ("OUDA", "{layer}", ""),  # drizzle output data image (no room for a comment)
    ("OUWE", "{layer}", ""),  # drizzle output weighting image
    ("OUCO", "{layer}", ""),  # drizzle output context image
    ("MASK", "{root}_sci1_single_mask.fits", "Drizzle, input weighting image"),
    ("WTSC", 1.0, "Drizzle, weighting factor for input image"),
    ("KERN", "square", "Drizzle, form of weight distribution kernel"),
    ("PIXF", 1.0, "Drizzle, linear size of drop"),
    ("COEF", "SIP", "Drizzle, source of coefficients"),
    ("XGIM", "N/A", "Drizzle, X distortion image name"),
    ("YGIM", "N/A", "Drizzle, Y distortion image name"),
    ("LAM", 8045.5, "Drizzle, wavelength applied (nm)"),
    ("EXKY", "EXPTIME", "Drizzle, exposure keyword name in input image"),
    ("INUN", "counts", "Drizzle, units of input image - counts or cps"),
    ("OUUN", "cps", "Drizzle, units of output image - counts or cps"),
    ("FVAL", "INDEF", "Drizzle, fill value for zero weight output pix"),
    ("WKEY", " ", "Input image WCS Version used"),
    ("SCAL", "{SCALE}", "Drizzle, pixel size (arcsec) of output image"),
    ("ISCL", 0.05, "Drizzle, default IDCTAB pixel size(arcsec)"),
)
_ALIGNMENT_HISTORY = (
    "{root}_flc.fits aligned to GAIAeDR3 with 1234 matches",
    "{root}_flc.fits fit rscale: RMS 2.1 mas in RA, 2.4 mas in Dec",
    "{root}_flc.fits cosmic rays flagged by astrodrizzle (driz_cr)",
    "{root}_flc.fits sky 12.3 e-/s subtracted (skymethod localmin)",
)
# SCI and WHT: photometry, image statistics and the WCSs the layer had before (as alternates).
_PHOTOMETRY = (
    ("PHOTMODE", "ACS WFC1 F814W MJD#59000", "observation configuration"),
    ("PHOTFLAM", 7.07e-20, "inverse sensitivity, ergs/cm2/A/e-"),
    ("PHOTFNU", 1.52e-07, "inverse sensitivity, Jy*sec/e-"),
    ("PHOTZPT", -21.1, "ST magnitude zero point"),
    ("PHOTPLAM", 8045.5, "pivot wavelength (Angstroms)"),
    ("PHOTBW", 654.0, "RMS bandwidth of filter plus detector"),
    ("MDRIZSKY", 12.3, "sky value computed by AstroDrizzle"),
)
_STATISTICS = (
    ("NGOODPIX", 1000000, "number of good pixels"),
    ("SDQFLAGS", 31743, "serious data quality flags"),
    ("GOODMIN", -2.5, "minimum value of good pixels"),
    ("GOODMAX", 5000.0, "maximum value of good pixels"),
    ("GOODMEAN", 0.3, "mean value of good pixels"),
    ("SNRMIN", -1.0, "minimum signal to noise of good pixels"),
    ("SNRMAX", 300.0, "maximum signal to noise of good pixels"),
    ("SNRMEAN", 2.0, "mean value of signal to noise of good pixels"),
    ("SOFTERRS", 0, "soft error count (DMA)"),
    ("MEANDARK", 6.5, "average of the dark values subtracted"),
    ("MEANBLEV", 2300.0, "average of all bias levels subtracted"),
    ("MEANFLSH", 0.0, "Mean number of counts in post flash exposure"),
    ("CRMASK", True, "cosmic rays were flagged"),
    ("CRSPLIT", 1, "number of cosmic ray split exposures"),
    ("CRRADIUS", 2.1, "radius of cosmic ray glow (pixels)"),
    ("CRTHRESH", 3.5, "cosmic ray rejection threshold"),
    ("CRSIGMAS", "3.5,3.0", "statistical rejection criteria"),
    ("CRMAXSKY", 50.0, "maximum sky level for cosmic ray rejection"),
    ("SKYSUB", "localmin", "sky subtraction method"),
    ("SKYWIDTH", 0.1, "sky histogram bin width"),
    ("SKYSTAT", "median", "sky statistic"),
    ("SKYLOWER", -100.0, "lower limit of usable data for sky"),
    ("SKYUPPER", 10000.0, "upper limit of usable data for sky"),
    ("FINALPIX", 1.0, "drizzle linear size of drop"),
    ("FINALKER", "square", "drizzle kernel"),
    ("FINALWHT", "EXP", "drizzle weighting"),
    ("FINALROT", 0.0, "rotation of the output grid (deg)"),
    ("FINALSCL", "{SCALE}", "pixel scale of the output grid (arcsec)"),
    ("PIXVALUE", 0.0, "value of pixels with no data"),
)
_WCSNAME = "IDC_47u1234qj-FIT_SVM_GAIAeDR3"
_WCS_KEYWORDS = ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2")
#: How a layer's WCS may write its linear part: a CD matrix (real MVM layers), PC + CDELT (what
#: astropy's ``to_header()`` and astrocut write), CDELT alone, or CDELT + CROTA2 (AIPS).
WCS_FORMS = ("cd", "pc", "cdelt", "crota")
_EARLIER_WCS = {"SCI": "ABO", "WHT": "AO", "CTX": ""}


def input_names(filename: str, exposure: str | None = None) -> list[str]:
    """The input exposures of a synthetic layer: its own for an exposure-level layer, else 27
    to 32 made-up ones (one plane of context bits), as many as its name picks."""
    if exposure:
        return [exposure]
    return [f"ib0081{k:02d}q" for k in range(1, 28 + zlib.crc32(filename.encode()) % 6)]


def _filled(cards, **values):
    """``cards`` with their text values formatted with ``values``; a text value that is
    exactly one placeholder takes that value as it is (a number stays a number)."""
    for key, value, comment in cards:
        if isinstance(value, str) and value.startswith("{") and value.endswith("}") and value[1:-1] in values:
            value = values[value[1:-1]]
        elif isinstance(value, str):
            value = value.format(**values)
        yield key, value, comment


def primary_header(
    *,
    filename: str,
    instrument: str,
    detector: str,
    filter_: str,
    skycell: str,
    obs_id: str,
    scale: float,
    weight: float,
    inputs: list[str],
) -> fits.Header:
    """A layer's primary header: who, what and how, and the drizzle keywords of every input."""
    header = fits.Header()
    header["FILENAME"] = filename  # names too long for a comment
    header["ROOTNAME"] = obs_id
    header["INSTRUME"] = (instrument.upper(), "identifier for instrument used to acquire data")
    header["DETECTOR"] = (detector.upper(), "detector in use")
    header["FILTER"] = (filter_.upper(), "element selected from filter wheel")
    header["SCELLID"] = (skycell, "skycell name")
    header["NPIXFRAC"] = (0.0, "fraction of pixels with data")  # set once the pixels are written
    values = {"INSTRUME": instrument.upper(), "INPUTS": len(inputs), "WCSNAME": _WCSNAME, "WEIGHT": weight}
    header.extend(_filled(_PRIMARY, **values))
    for k, root in enumerate(inputs, 1):
        cards = _filled(_PER_INPUT, root=root, layer=filename, SCALE=scale)
        header.extend((f"D{k:03d}{key}", value, comment) for key, value, comment in cards)
    for root in inputs:
        for line in _ALIGNMENT_HISTORY:
            header.add_history(line.format(root=root))
    return header


def _linear_cards(cd: np.ndarray, form: str) -> list[tuple[str, float]]:
    """The cards of the linear part ``cd`` of a WCS, written in ``form`` (one of `WCS_FORMS`)."""
    if form == "cd":
        return [(f"CD{i + 1}_{j + 1}", float(value)) for (i, j), value in np.ndenumerate(cd)]
    if form == "pc":
        scale = float(np.sqrt(abs(np.linalg.det(cd))))
        cdelt = np.array([-scale, scale])
        pc = cd / cdelt[:, None]
        return [("CDELT1", -scale), ("CDELT2", scale)] + [
            (f"PC{i + 1}_{j + 1}", float(value)) for (i, j), value in np.ndenumerate(pc)
        ]
    if form not in WCS_FORMS:
        raise ValueError(f"Unknown WCS form {form!r}: one of {WCS_FORMS}")
    if cd[0, 1] or cd[1, 0]:
        raise ValueError(f"A rotated CD matrix has no {form!r} form here.")
    cards = [("CDELT1", float(cd[0, 0])), ("CDELT2", float(cd[1, 1]))]
    return cards + [("CROTA2", 0.0)] if form == "crota" else cards


def image_header(
    wcs: WCS, extname: str, shape: tuple[int, int], scale: float, wcs_form: str = "cd"
) -> fits.Header:
    """The header of a layer's SCI, WHT or CTX extension of ``shape`` (ny, nx) on ``wcs``, its
    linear part written in ``wcs_form`` (one of `WCS_FORMS`)."""
    data = np.zeros((1, 1), np.int32 if extname == "CTX" else np.float32)
    header = fits.ImageHDU(data=data).header
    header["NAXIS1"], header["NAXIS2"] = shape[1], shape[0]
    header["EXTNAME"] = (extname, "extension name")
    header["EXTVER"] = (1, "extension version number")
    header["INHERIT"] = (True, "inherit the primary header")
    if extname == "SCI":
        header["BUNIT"] = ("ELECTRONS/S", "brightness units")
    header["WCSAXES"] = (2, "number of World Coordinate System axes")
    header["CTYPE1"], header["CTYPE2"] = wcs.wcs.ctype
    header["CRVAL1"], header["CRVAL2"] = wcs.wcs.crval
    header["CRPIX1"], header["CRPIX2"] = wcs.wcs.crpix
    linear = _linear_cards(wcs.wcs.cd, wcs_form)
    for key, value in linear:
        header[key] = value
    header["RADESYS"] = "ICRS"
    header["LTV1"], header["LTV2"] = 0.0, 0.0
    header["LTM1_1"], header["LTM2_2"] = 1.0, 1.0
    header["ORIENTAT"] = (0.0, "position angle of image y axis (deg. e of n)")
    header["PA_APER"] = (0.0, "position angle of reference aperture (deg)")
    header["WCSNAME"] = (_WCSNAME, "name of the world coordinate system")
    header["WCSTYPE"] = ("a posteriori solution relative to Gaia eDR3", "")
    for letter in _EARLIER_WCS[extname]:  # the layer's WCS before each alignment, as alternates
        header[f"WCSNAME{letter}"] = f"IDC_47u1234qj-{letter}"
        header[f"WCSAXES{letter}"] = 2
        for key in (*_WCS_KEYWORDS, *(key for key, _ in linear if key != "CROTA2")):  # no CROTAa
            header[f"{key}{letter}"] = header[key]
        header[f"RADESYS{letter}"] = "ICRS"
    if extname == "SCI":
        header.extend(_PHOTOMETRY)
        header.extend(_filled(_STATISTICS, SCALE=scale))
    return header


def context(inputs: list[str], observed: np.ndarray) -> np.ndarray:
    """CTX of ``observed`` pixels: every input's bit where there are data (int32, bit 31 the
    sign, as drizzle writes it), 0 elsewhere."""
    bits = np.uint32((1 << len(inputs)) - 1).view(np.int32)
    return np.where(observed, bits, np.int32(0))


def hdrtab(inputs: list[str], filter_: str, weight: float) -> fits.BinTableHDU:
    """HDRTAB: one row of header keywords per input exposure."""
    n = len(inputs)
    table = Table(
        {
            "ROOTNAME": inputs,
            "EXPTIME": [weight / n] * n,
            "FILTER": [filter_.upper()] * n,
            "EXPSTART": 55197.0 + np.arange(n),
            "EXPEND": 55197.01 + np.arange(n),
            "PROPOSID": [16000] * n,
            "PA_V3": np.linspace(0.0, 359.0, n),
            "MDRIZSKY": [12.3] * n,
            "NMATCHES": [1234] * n,
            "RMS_RA": [2.1] * n,
            "RMS_DEC": [2.4] * n,
            "WCSNAME": [_WCSNAME] * n,
        }
    )
    hdu = fits.table_to_hdu(table)
    hdu.name = "HDRTAB"
    return hdu
