"""The MVM sky tessellation: projection cells, skycells and their WCS.

The sky is cut into 46 declination rings of projection cells (tangent-plane images of
450287 x 450287 pixels at 0.04"/px); each projection cell holds 21 x 21 overlapping skycells.
The ring figures ship with the package (``data/skycell_rings.csv``). Everything here is pure
geometry: no I/O besides reading that table once.
"""

import csv
import math
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord, angular_separation
from astropy.wcs import WCS

from .coords import parse_coord, parse_size
from .errors import InvalidNameError

__all__ = [
    "SCALES",
    "SKYCELL_STEP",
    "SKYCELL_OVERLAP",
    "SKYCELLS_PER_SIDE",
    "Ring",
    "ProjectionCell",
    "SkyCell",
    "skycells_covering",
]

#: Pixel scale of each MVM layer scale, in arcsec per pixel.
SCALES = {"fine": 0.04, "coarse": 0.12}
#: Skycells per side of a projection cell.
SKYCELLS_PER_SIDE = 21
#: Distance between neighbouring skycell origins, in fine pixels: int(450287 / 21 + 0.5).
SKYCELL_STEP = 21442
#: Overlap added on every side of a skycell, in fine pixels.
SKYCELL_OVERLAP = 256
#: Side of a full skycell in fine pixels (21954).
SKYCELL_SIDE = SKYCELL_STEP + 2 * SKYCELL_OVERLAP

_FINE_DEG = SCALES["fine"] / 3600.0
_SKYCELL_NAME = re.compile(r"(?:^|skycell-)p(\d{4})x(\d{2})y(\d{2})(?![0-9])")


@dataclass(frozen=True)
class Ring:
    """One declination ring of projection cells (one row of ``skycell_rings.csv``)."""

    zone: int
    first_cell: int
    nband: int
    dec: float
    dec_min: float
    dec_max: float
    xcell: int
    ycell: int


@cache
def rings() -> tuple[Ring, ...]:
    """The 46 rings of the tessellation, south to north."""
    text = resources.files(__package__).joinpath("data/skycell_rings.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    return tuple(
        Ring(
            zone=int(r["zone"]),
            first_cell=int(r["projcell"]),
            nband=int(r["nband"]),
            dec=float(r["dec"]),
            dec_min=float(r["dec_min"]),
            dec_max=float(r["dec_max"]),
            xcell=int(r["xcell"]),
            ycell=int(r["ycell"]),
        )
        for r in rows
    )


def _scale_ratio(scale: str) -> float:
    try:
        return SCALES["fine"] / SCALES[scale]
    except KeyError:
        raise InvalidNameError(f"Unknown pixel scale {scale!r}: use 'fine' or 'coarse'.") from None


def _tan_wcs(crval, crpix, scale_deg, shape) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = crval
    wcs.wcs.crpix = crpix
    wcs.wcs.cd = [[-scale_deg, 0.0], [0.0, scale_deg]]
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.set()
    wcs.pixel_shape = shape
    return wcs


@dataclass(frozen=True, order=True)
class ProjectionCell:
    """A projection cell: one tangent plane of the tessellation.

    Parameters
    ----------
    index : int
        The projection cell number, 0 (south pole) to 2643 (north pole).
    """

    index: int

    def __post_init__(self):
        last = rings()[-1]
        if not (0 <= self.index < last.first_cell + last.nband):
            raise InvalidNameError(
                f"No projection cell {self.index}: numbers run from 0 to {last.first_cell + last.nband - 1}."
            )

    @property
    def name(self) -> str:
        """``p0081`` style name."""
        return f"p{self.index:04d}"

    @property
    def ring(self) -> Ring:
        """The declination ring this cell belongs to."""
        return next(r for r in reversed(rings()) if r.first_cell <= self.index)

    @property
    def crval(self) -> tuple[float, float]:
        """Tangent point (RA, Dec) in degrees."""
        ring = self.ring
        return ((self.index - ring.first_cell) * 360.0 / ring.nband, ring.dec)

    @property
    def crpix(self) -> tuple[float, float]:
        """Reference pixel of the full projection cell at the fine scale."""
        ring = self.ring
        return (ring.xcell / 2 + 0.5, ring.ycell / 2 + 0.5)

    def wcs(self, scale: str = "fine") -> WCS:
        """The WCS of the whole projection cell at ``scale`` ('fine' or 'coarse')."""
        return _projection_cell_wcs(self, scale).deepcopy()

    @staticmethod
    def containing(coord) -> list["ProjectionCell"]:
        """Every projection cell whose pixel area contains ``coord`` (neighbours overlap).

        Parameters
        ----------
        coord : `~astropy.coordinates.SkyCoord` or anything `~glue_mvmcut.core.coords.parse_coord` reads

        Returns
        -------
        list of `ProjectionCell`
            Sorted by index.
        """
        coord = parse_coord(coord)
        found = []
        for cell in _cells_near(coord, 0.0):
            wcs = _projection_cell_wcs(cell, "fine")
            x, y = wcs.world_to_pixel_values(coord.ra.deg, coord.dec.deg)
            # world_to_pixel is 0-based: the cell spans -0.5 .. xcell - 0.5.
            if -0.5 <= x <= cell.ring.xcell - 0.5 and -0.5 <= y <= cell.ring.ycell - 0.5:
                found.append(cell)
        return found


@lru_cache(maxsize=256)
def _projection_cell_wcs(cell: ProjectionCell, scale: str) -> WCS:
    ratio = _scale_ratio(scale)
    ring = cell.ring
    crpix = (cell.crpix[0] * ratio, cell.crpix[1] * ratio)
    shape = (round(ring.xcell * ratio), round(ring.ycell * ratio))
    return _tan_wcs(cell.crval, crpix, _FINE_DEG / ratio, shape)


@cache
def _cell_centres() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RA and Dec (radians) of every projection cell's centre, and its index."""
    ra, dec, index = [], [], []
    for ring in rings():
        for k in range(ring.nband):
            ra.append(k * 360.0 / ring.nband)
            dec.append(ring.dec)
            index.append(ring.first_cell + k)
    return np.radians(ra), np.radians(dec), np.array(index)


def _cells_near(coord: SkyCoord, margin_deg: float) -> list[ProjectionCell]:
    """Projection cells whose footprint may reach within ``margin_deg`` of ``coord``."""
    ra, dec, index = _cell_centres()
    # The farthest any skycell pixel lies from its tangent point: the corner of skycell (21, 21),
    # which pokes (21 * SKYCELL_STEP + 2 * OVERLAP - xcell) / 2 px past the cell's corner.
    half_side = (SKYCELLS_PER_SIDE - 1) * SKYCELL_STEP + SKYCELL_SIDE - rings()[0].xcell / 2
    reach = math.degrees(math.atan(math.sqrt(2) * half_side * math.radians(_FINE_DEG)))
    # (As SkyCoord.separation computes it, without a SkyCoord of 2643 centres: ~0.3 ms a box.)
    separation = angular_separation(coord.ra.rad, coord.dec.rad, ra, dec)
    near = np.degrees(separation) <= reach + margin_deg
    return [ProjectionCell(int(i)) for i in index[near]]


@dataclass(frozen=True, order=True)
class SkyCell:
    """One skycell: column ``x``, row ``y`` (1-based) of projection cell ``projection_cell``.

    Parameters
    ----------
    projection_cell : int
        Number of the projection cell.
    x, y : int
        Column and row of the skycell in its projection cell, 1 to 21.
    """

    projection_cell: int
    x: int
    y: int

    def __post_init__(self):
        ProjectionCell(self.projection_cell)
        for axis, value in (("x", self.x), ("y", self.y)):
            if not 1 <= value <= SKYCELLS_PER_SIDE:
                raise InvalidNameError(
                    f"Skycell {axis}={value} is outside 1..{SKYCELLS_PER_SIDE} "
                    f"(projection cell {self.projection_cell})."
                )

    @classmethod
    def from_name(cls, name: str) -> "SkyCell":
        """Parse ``p0081x14y14``, ``skycell-p0081x14y14`` or a full MVM product name.

        Raises
        ------
        InvalidNameError
            If ``name`` holds no skycell name, or one outside the tessellation.
        """
        match = _SKYCELL_NAME.search(str(name).lower()) if isinstance(name, str) else None
        if match is None:
            raise InvalidNameError(
                f"{name!r} is not a skycell name: expected e.g. 'p0081x14y14', "
                "'skycell-p0081x14y14' or an MVM file name."
            )
        return cls(*(int(group) for group in match.groups()))

    @property
    def name(self) -> str:
        """``p0081x14y14`` style name."""
        return f"p{self.projection_cell:04d}x{self.x:02d}y{self.y:02d}"

    def __str__(self) -> str:
        return self.name

    @property
    def parent(self) -> ProjectionCell:
        """The projection cell this skycell belongs to."""
        return ProjectionCell(self.projection_cell)

    def wcs(self, scale: str = "fine") -> WCS:
        """The WCS of the full (untrimmed) skycell at ``scale`` ('fine' or 'coarse').

        ``CRPIX = ((PC_CRPIX1 - (x-1)*n) * r, (PC_CRPIX2 - (y-1)*n) * r)``,
        ``NAXIS = (n + 512) * r``, with the projection cell's CRVAL and ``CD / r``, where
        ``n = 21442`` and ``r = 0.04 / scale``.
        """
        ratio = _scale_ratio(scale)
        parent = self.parent
        pc_crpix = parent.crpix
        crpix = (
            (pc_crpix[0] - (self.x - 1) * SKYCELL_STEP) * ratio,
            (pc_crpix[1] - (self.y - 1) * SKYCELL_STEP) * ratio,
        )
        side = round(SKYCELL_SIDE * ratio)
        return _tan_wcs(parent.crval, crpix, _FINE_DEG / ratio, (side, side))

    def cone(self) -> tuple[SkyCoord, float]:
        """The smallest cone centred on the skycell's centre that holds all of it: (centre,
        radius in degrees)."""
        wcs = self.wcs("fine")
        low, high = -0.5, SKYCELL_SIDE - 0.5
        centre = wcs.pixel_to_world((SKYCELL_SIDE - 1) / 2, (SKYCELL_SIDE - 1) / 2)
        corners = wcs.pixel_to_world([low, high, high, low], [low, low, high, high])
        return centre, float(centre.separation(corners).deg.max())


def _box_corners(coord: SkyCoord, size: u.Quantity) -> tuple[np.ndarray, np.ndarray]:
    """RA and Dec (degrees) of the corners of a box centred on ``coord``, edges along local
    north and east (great circles)."""
    ny, nx = size.to_value(u.arcsec)
    # 1"/px grid with the target at 0-based pixel (0, 0), i.e. FITS CRPIX (1, 1).
    local = _tan_wcs((coord.ra.deg, coord.dec.deg), (1.0, 1.0), 1 / 3600.0, None)
    xs = np.array([-nx, nx, nx, -nx]) / 2
    ys = np.array([-ny, -ny, ny, ny]) / 2
    return local.pixel_to_world_values(xs, ys)


def _convex_polygons_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test for two convex polygons given as (n, 2) vertex arrays.

    Touching edges do not count as overlap: the shared area must be positive.
    """
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        normals = np.column_stack([-edges[:, 1], edges[:, 0]])
        for normal in normals:
            pa, pb = a @ normal, b @ normal
            if pa.max() <= pb.min() or pb.max() <= pa.min():
                return False
    return True


def skycells_covering(coord, size) -> list[SkyCell]:
    """Every skycell whose footprint overlaps a box on the sky.

    The box is centred on ``coord`` with sides along local north and east, as a cutout's would
    be. Skycells of every projection cell that reaches the box are returned, overlap margins
    included, so a position in the overlap of two skycells (or two projection cells) yields all
    of them.

    Parameters
    ----------
    coord : `~astropy.coordinates.SkyCoord` or anything `~glue_mvmcut.core.coords.parse_coord` reads
        Centre of the box.
    size : float, (ny, nx) pair, or angular `~astropy.units.Quantity`
        Box size; plain numbers are arcseconds.

    Returns
    -------
    list of `SkyCell`
        Sorted by projection cell, x, y.

    Raises
    ------
    InvalidCoordinateError, InvalidSizeError
        For a position off the sky or a size that is not positive, finite and below 1 degree.
    """
    coord = parse_coord(coord)
    size = parse_size(size)
    corners = _box_corners(coord, size)
    margin = float(np.hypot(*size.to_value(u.deg))) / 2
    found = []
    for cell in _cells_near(coord, margin):
        wcs = _projection_cell_wcs(cell, "fine")
        # Gnomonic projections map great circles to straight lines, so the box is exactly the
        # quadrilateral of its projected corners in every projection cell (all within 10 deg).
        px, py = wcs.world_to_pixel_values(*corners)  # (in degrees: SkyCoords cost ~1 ms a box)
        quad = np.column_stack([px, py])
        # Skycell x spans 0-based projection-cell pixels (x-1)*n - 0.5 .. (x-1)*n + 21954 - 0.5.
        lo = np.ceil((quad.min(axis=0) + 0.5 - SKYCELL_SIDE) / SKYCELL_STEP).astype(int) + 1
        hi = np.floor((quad.max(axis=0) + 0.5) / SKYCELL_STEP).astype(int) + 1
        lo = np.maximum(lo, 1)
        hi = np.minimum(hi, SKYCELLS_PER_SIDE)
        for x in range(lo[0], hi[0] + 1):
            for y in range(lo[1], hi[1] + 1):
                x0 = (x - 1) * SKYCELL_STEP - 0.5
                y0 = (y - 1) * SKYCELL_STEP - 0.5
                rect = np.array(
                    [
                        [x0, y0],
                        [x0 + SKYCELL_SIDE, y0],
                        [x0 + SKYCELL_SIDE, y0 + SKYCELL_SIDE],
                        [x0, y0 + SKYCELL_SIDE],
                    ]
                )
                if _convex_polygons_overlap(quad, rect):
                    found.append(SkyCell(cell.index, x, y))
    return sorted(found)
