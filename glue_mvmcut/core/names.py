"""The MVM file-name grammar: one parser and formatter for every name glue-mvmcut reads or writes.

=========  ===========================================================================================
layer      ``hst_skycell-p0081x14y14_wfc3_ir_f160w_coarse-all[-ipppssoo]_drz.fits``
cutout     ``hst_cutout_skycell-p0081x14y14-ra84d9208-decs69d1467_wfc3_ir_f160w[_coarse][-ipppssoo].fits``
combined   ``hst_combined_skycells-ra84d9208-decs69d1467_wfc3_ir_f160w[_coarse][_ipppssoo].fits``
query      ``mvm_query-ra84d9208-decs69d1467_15_cutout.ecsv`` (15 = search radius in arcsec)
=========  ===========================================================================================

Coordinates in names are truncated (not rounded) to 4 decimals of a degree, as the seed
(drizzlepac's ``hapcut_utils``) intended, but computed with decimal arithmetic from the number
itself, so integral values, RA near 360 and Dec just below 0 come out right.
"""

import math
import re
from collections import defaultdict
from dataclasses import dataclass, fields
from decimal import ROUND_DOWN, Decimal

from .errors import InvalidCoordinateError, InvalidNameError, UnsafeNameError
from .skycells import SCALES, SkyCell

__all__ = [
    "Band",
    "LayerName",
    "CutoutName",
    "CombinedName",
    "QueryName",
    "mosaic_files",
    "coord_token",
    "parse_coord_token",
    "parse_product_name",
    "safe_filename",
    "checked_product",
    "MVM_FILTERS",
    "checked_selection",
]

_WORD = r"[a-z0-9]+"
# An exposure is an ipppssoo whose i names the instrument (i: WFC3, j: ACS). A filter is one word,
# or two joined by a dash where ACS used both wheels (drizzlepac's determine_filter_name:
# "f606w-pol60v", the polarizer last, "clear" wheels left out); the second is an ACS filter
# (f435w, f850lp, fr656n), polarizer (pol120uv), grism or prism name, none of which starts with
# i or j, so "<filter>-<ipppssoo>" stays unambiguous.
_EXPOSURE = r"[ij][a-z0-9]{7,8}"
_FILTER = r"[a-z0-9]+(?:-(?:fr?\d{3,4}[a-z]{1,2}|pol\d{1,3}u?v|g\d{3}l|pr\d{3}[lm]))?"
_SKYCELL = r"p\d{4}x\d{2}y\d{2}"
# Written with 4 decimals; the seed wrote as many as str(value) had, up to 4 ("decn26d0" for 26.0).
_COORD = r"ra\d{1,3}d\d{1,4}-dec[ns]\d{1,2}d\d{1,4}"
_COORD_PARTS = re.compile(r"^ra(\d{1,3})d(\d{1,4})-dec([ns])(\d{1,2})d(\d{1,4})$")
_STEP = Decimal("0.0001")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


def _truncate(value: float) -> tuple[int, int]:
    """Whole degrees and 1e-4 degree units of a non-negative value, truncated."""
    truncated = Decimal(repr(float(value))).quantize(_STEP, rounding=ROUND_DOWN)
    whole, frac = divmod(int(truncated / _STEP), 10000)
    return whole, frac


def coord_token(ra: float, dec: float) -> str:
    """Format a position as ``ra<deg>d<ffff>-dec<n|s><deg>d<ffff>``.

    Parameters
    ----------
    ra, dec : float
        Degrees. RA is wrapped into [0, 360).

    Raises
    ------
    InvalidCoordinateError
        If either value is not finite or ``|dec| > 90``.
    """
    ra, dec = float(ra), float(dec)
    if not (abs(ra) < float("inf") and abs(dec) <= 90.0):
        raise InvalidCoordinateError(f"Cannot name a position at RA={ra!r}, Dec={dec!r}.")
    ra %= 360.0
    if ra >= 360.0:  # a tiny negative RA wraps to exactly 360.0 in floating point
        ra = 0.0
    ra_whole, ra_frac = _truncate(ra)
    dec_whole, dec_frac = _truncate(abs(dec))
    # The sign bit decides, so that "decs0d0000" (parsed as -0.0) formats back to itself.
    hemisphere = "s" if math.copysign(1.0, dec) < 0 else "n"
    return f"ra{ra_whole}d{ra_frac:04d}-dec{hemisphere}{dec_whole}d{dec_frac:04d}"


def parse_coord_token(token: str) -> tuple[float, float]:
    """Inverse of `coord_token`: ``(ra, dec)`` in degrees, to the decimals the token holds (4 in
    the names glue-mvmcut writes; 1 to 4 in the seed's, e.g. ``ra84d92-decn26d0`` = 84.92, 26.0)."""
    match = _COORD_PARTS.match(token)
    if match is None:
        raise InvalidNameError(f"{token!r} is not a coordinate token like 'ra84d9208-decs69d1467'.")
    ra_whole, ra_frac, hemisphere, dec_whole, dec_frac = match.groups()
    ra = float(Decimal(f"{ra_whole}.{ra_frac}"))
    dec = float(Decimal(f"{dec_whole}.{dec_frac}"))
    if ra >= 360.0 or dec > 90.0:
        raise InvalidNameError(f"{token!r} names a position off the sky.")
    return ra, (-dec if hemisphere == "s" else dec)


@dataclass(frozen=True, kw_only=True)
class Band:
    """What one mosaic is made of: instrument, detector, filter, pixel scale and, for
    exposure-level products, the exposure (``ipppssoo``).

    Fine and coarse layers, and different exposures, never share a band.
    """

    instrument: str
    detector: str
    filter: str
    scale: str = "fine"
    exposure: str | None = None

    def __post_init__(self):
        for name, pattern in (("instrument", _WORD), ("detector", _WORD), ("filter", _FILTER)):
            value = getattr(self, name)
            if not isinstance(value, str) or not re.fullmatch(pattern, value):
                raise InvalidNameError(f"Invalid {name} {value!r} in an MVM name.")
        if self.scale not in SCALES:
            raise InvalidNameError(f"Invalid scale {self.scale!r}: use 'fine' or 'coarse'.")
        if self.exposure is not None and not re.fullmatch(_EXPOSURE, self.exposure):
            raise InvalidNameError(f"Invalid exposure {self.exposure!r}: expected an ipppssoo.")

    @property
    def band(self) -> "Band":
        """This name's band alone (the grouping key for mosaics)."""
        return Band(**_fields_of(self))

    def label(self) -> str:
        """Human label, e.g. ``ACS/WFC F814W`` or ``WFC3/IR F160W coarse``."""
        text = f"{self.instrument.upper()}/{self.detector.upper()} {self.filter.upper()}"
        if self.scale == "coarse":
            text += " coarse"
        if self.exposure:
            text += f" {self.exposure}"
        return text

    def _band_suffix(self, exposure_separator: str) -> str:
        text = f"{self.instrument}_{self.detector}_{self.filter}"
        if self.scale == "coarse":
            text += "_coarse"
        if self.exposure:
            text += exposure_separator + self.exposure
        return text


def _band_fields(match: re.Match) -> dict:
    groups = match.groupdict()
    return {
        "instrument": groups["instrument"],
        "detector": groups["detector"],
        "filter": groups["filter"],
        "scale": "coarse" if groups["coarse"] else "fine",
        "exposure": groups["exposure"],
    }


def _band_pattern(exposure_separator: str) -> str:
    return (
        rf"(?P<instrument>{_WORD})_(?P<detector>{_WORD})_(?P<filter>{_FILTER})"
        rf"(?P<coarse>_coarse)?(?:{exposure_separator}(?P<exposure>{_EXPOSURE}))?"
    )


def _match(pattern: re.Pattern, name: str, kind: str, example: str) -> re.Match:
    match = pattern.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise InvalidNameError(f"{name!r} is not an MVM {kind} name (expected e.g. {example!r}).")
    return match


_LAYER_RE = re.compile(
    rf"hst_skycell-(?P<skycell>{_SKYCELL})_(?P<instrument>{_WORD})_(?P<detector>{_WORD})"
    rf"_(?P<filter>{_FILTER})_(?P<coarse>coarse-)?all(?:-(?P<exposure>{_EXPOSURE}))?"
    r"_(?P<kind>dr[cz])\.fits"
)
_CUTOUT_RE = re.compile(
    rf"hst_cutout_skycell-(?P<skycell>{_SKYCELL})-(?P<coord>{_COORD})_{_band_pattern('-')}\.fits"
)
_COMBINED_RE = re.compile(rf"hst_combined_skycells-(?P<coord>{_COORD})_{_band_pattern('_')}\.fits")
_QUERY_RE = re.compile(rf"mvm_query-(?P<coord>{_COORD})_(?P<radius>\d+)_cutout\.ecsv")


@dataclass(frozen=True, kw_only=True)
class LayerName(Band):
    """An MVM layer file: ``hst_skycell-<skycell>_<instr>_<det>_<filter>_<label>_<kind>.fits``.

    ``label`` is ``all`` (fine) or ``coarse-all`` (coarse), followed by ``-<ipppssoo>`` for
    exposure-level layers; ``kind`` is ``drc`` (CTE-corrected) or ``drz``.
    """

    skycell: SkyCell
    kind: str = "drc"

    def __post_init__(self):
        super().__post_init__()
        if self.kind not in ("drc", "drz"):
            raise InvalidNameError(f"Invalid layer kind {self.kind!r}: use 'drc' or 'drz'.")

    @property
    def obs_id(self) -> str:
        """The MAST ``obs_id`` of the layer: its file name without ``_drc.fits``/``_drz.fits``."""
        label = ("coarse-" if self.scale == "coarse" else "") + "all"
        if self.exposure:
            label += f"-{self.exposure}"
        return f"hst_skycell-{self.skycell.name}_{self.instrument}_{self.detector}_{self.filter}_{label}"

    @property
    def filename(self) -> str:
        """The layer's file name."""
        return f"{self.obs_id}_{self.kind}.fits"

    @classmethod
    def parse(cls, name: str) -> "LayerName":
        """Parse a layer file name; raise `InvalidNameError` for anything else."""
        match = _match(_LAYER_RE, name, "layer", "hst_skycell-p0081x14y14_acs_wfc_f814w_all_drc.fits")
        return cls(skycell=SkyCell.from_name(match["skycell"]), kind=match["kind"], **_band_fields(match))


@dataclass(frozen=True, kw_only=True)
class CutoutName(Band):
    """A cutout of one layer around a position (``make_the_cut``'s output names)."""

    skycell: SkyCell
    ra: float
    dec: float

    @property
    def filename(self) -> str:
        """The cutout's file name."""
        return (
            f"hst_cutout_skycell-{self.skycell.name}-{coord_token(self.ra, self.dec)}_"
            f"{self._band_suffix('-')}.fits"
        )

    @classmethod
    def for_layer(cls, layer: LayerName, ra: float, dec: float) -> "CutoutName":
        """The name of the cutout of ``layer`` at (``ra``, ``dec``)."""
        return cls(skycell=layer.skycell, ra=ra, dec=dec, **_fields_of(layer))

    @classmethod
    def parse(cls, name: str) -> "CutoutName":
        """Parse a cutout file name; raise `InvalidNameError` for anything else."""
        example = "hst_cutout_skycell-p0081x14y14-ra84d9208-decs69d1467_acs_wfc_f814w.fits"
        match = _match(_CUTOUT_RE, name, "cutout", example)
        ra, dec = parse_coord_token(match["coord"])
        return cls(skycell=SkyCell.from_name(match["skycell"]), ra=ra, dec=dec, **_band_fields(match))


@dataclass(frozen=True, kw_only=True)
class CombinedName(Band):
    """A mosaic of the cutouts of one band (``mvm_combine``'s output names)."""

    ra: float
    dec: float

    @property
    def filename(self) -> str:
        """The mosaic's file name."""
        return f"hst_combined_skycells-{coord_token(self.ra, self.dec)}_{self._band_suffix('_')}.fits"

    @classmethod
    def for_band(cls, band: Band, ra: float, dec: float) -> "CombinedName":
        """The name of the mosaic of ``band`` at (``ra``, ``dec``)."""
        return cls(ra=ra, dec=dec, **_fields_of(band))

    @classmethod
    def parse(cls, name: str) -> "CombinedName":
        """Parse a combined-mosaic file name; raise `InvalidNameError` for anything else."""
        match = _match(
            _COMBINED_RE, name, "combined", "hst_combined_skycells-ra84d9208-decs69d1467_acs_wfc_f814w.fits"
        )
        ra, dec = parse_coord_token(match["coord"])
        return cls(ra=ra, dec=dec, **_band_fields(match))


def mosaic_files(names) -> list[str]:
    """Among the file names of a folder ``mvmcut cut`` wrote, the one that stands for each
    band's mosaic, in the order given: the band's combined file, or for a band without one but
    with a single cutout (not written twice: see ``products``), that cutout.

    Parameters
    ----------
    names : iterable of str
        File names; any that are neither cutouts nor mosaics are left out.
    """
    names = list(names)
    combined, cutouts = {}, defaultdict(list)
    for name in names:
        if (band := _band_of_name(CombinedName, name)) is not None:
            combined[band] = name
        elif (band := _band_of_name(CutoutName, name)) is not None:
            cutouts[band].append(name)
    chosen = set(combined.values())
    chosen |= {members[0] for band, members in cutouts.items() if band not in combined and len(members) == 1}
    return [name for name in names if name in chosen]


def _band_of_name(kind, name: str) -> Band | None:
    try:
        return kind.parse(name).band
    except InvalidNameError:
        return None


@dataclass(frozen=True)
class QueryName:
    """The query table written by ``mvm_id_filenames``; ``radius`` is in whole arcseconds."""

    ra: float
    dec: float
    radius: int

    @property
    def filename(self) -> str:
        """The query table's file name."""
        if not (isinstance(self.radius, int) and self.radius >= 0):
            raise InvalidNameError(f"A query radius is whole arcseconds, got {self.radius!r}.")
        return f"mvm_query-{coord_token(self.ra, self.dec)}_{self.radius}_cutout.ecsv"

    @classmethod
    def parse(cls, name: str) -> "QueryName":
        """Parse a query-table file name; raise `InvalidNameError` for anything else."""
        match = _match(_QUERY_RE, name, "query table", "mvm_query-ra84d9208-decs69d1467_15_cutout.ecsv")
        ra, dec = parse_coord_token(match["coord"])
        return cls(ra=ra, dec=dec, radius=int(match["radius"]))


def _fields_of(band: Band) -> dict:
    return {f.name: getattr(band, f.name) for f in fields(Band)}


def parse_product_name(name: str) -> LayerName | CutoutName | CombinedName:
    """Parse any MVM image file name this package reads: a layer, a cutout or a mosaic.

    Raises
    ------
    InvalidNameError
        If ``name`` (a bare file name, not a path) follows none of the three grammars.
    """
    for parser in (LayerName.parse, CutoutName.parse, CombinedName.parse):
        try:
            return parser(name)
        except InvalidNameError:
            continue
    raise InvalidNameError(f"{name!r} is not an MVM layer, cutout or combined-mosaic file name.")


def safe_filename(name: str) -> str:
    """Return ``name`` if it is a bare, harmless file name; raise `UnsafeNameError` otherwise.

    Refused: path separators, ``.``/``..``, absolute paths, drive letters, control characters,
    empty names.
    """
    text = str(name)
    if not text or text in (".", "..") or _UNSAFE.search(text) or ":" in text or text.startswith("~"):
        raise UnsafeNameError(
            f"Refusing the product name {text!r} from the archive: it is not a plain file name."
        )
    return text


def checked_product(filename: str, data_uri: str) -> str:
    """The product's file name, once it is a plain file name and its ``dataURI`` names the same
    file; `UnsafeNameError` otherwise."""
    name = safe_filename(filename)
    if str(data_uri).rsplit("/", 1)[-1] != name:
        raise UnsafeNameError(f"The product {name!r} has a dataURI for another file: {data_uri!r}.")
    return name


#: The filters of the detectors MVM layers are drizzled from (drizzlepac's MVM processing takes
#: ACS/WFC, WFC3/UVIS and WFC3/IR imaging), from the instruments' handbooks.
MVM_FILTERS = {
    "ACS/WFC": (
        "f435w f475w f502n f550m f555w f606w f625w f658n f660n f775w f814w f850lp f892n "
        "fr388n fr423n fr462n fr505n fr551n fr601n fr647m fr656n fr716n fr782n fr853n fr914m "
        "fr931n fr1016n"
    ).split(),
    "WFC3/UVIS": (
        "f200lp f218w f225w f275w f280n f300x f336w f343n f350lp f373n f390m f390w f395n f410m "
        "f438w f467m f469n f475w f475x f487n f502n f547m f555w f600lp f606w f621m f625w f631n "
        "f645n f656n f657n f658n f665n f673n f680n f689m f763m f775w f814w f845m f850lp f953n "
        "fq232n fq243n fq378n fq387n fq422m fq436n fq437n fq492n fq508n fq575n fq619n fq634n "
        "fq672n fq674n fq727n fq750n fq889n fq906n fq924n fq937n"
    ).split(),
    "WFC3/IR": (
        "f098m f105w f110w f125w f126n f127m f128n f130n f132n f139m f140w f153m f160w f164n f167n"
    ).split(),
}
_MVM_INSTRUMENTS = sorted({detector.split("/")[0].lower() for detector in MVM_FILTERS})


def checked_selection(instruments=None, filters=None) -> tuple[list[str] | None, set[str] | None]:
    """``instruments`` and ``filters`` (sequences of names, any case) as a query takes them:
    instruments upper case, filters a set in lower case (a two-wheel ACS filter such as
    ``f606w-pol60v`` checked by its first wheel's).

    Raises
    ------
    InvalidNameError
        For an instrument or filter MVM layers are never made of, with the list of those they are.
    """
    if instruments:
        unknown = [name for name in instruments if name.lower() not in _MVM_INSTRUMENTS]
        if unknown:
            raise InvalidNameError(
                f"Unknown instrument {unknown[0]!r}: MVM layers are made of "
                f"{' and '.join(i.upper() for i in _MVM_INSTRUMENTS)} images."
            )
    wanted = {name.strip().lower() for name in filters} if filters else None
    if wanted:
        known = {f for names in MVM_FILTERS.values() for f in names}
        unknown = sorted(f for f in wanted if f.split("-")[0] not in known or not re.fullmatch(_FILTER, f))
        if unknown:
            listed = "; ".join(
                f"{detector}: {' '.join(f.upper() for f in names)}" for detector, names in MVM_FILTERS.items()
            )
            raise InvalidNameError(f"Unknown filter {unknown[0]!r}: MVM layers are made in {listed}.")
    return ([name.upper() for name in instruments] if instruments else None), wanted
