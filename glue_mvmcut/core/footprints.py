"""Footprints on the sky (MAST's ``s_region``) against cones.

MAST decides which observations a cone query returns by whether the cone touches each
observation's footprint. `Footprint.hits_cone` (of a `parse_region`) makes the same decision
locally, so one query over a wider cone can serve several nearby boxes (see
`~glue_mvmcut.core.mast.query_layers_near`); the stand-in MAST answers cone queries with it too.

A footprint is written in STC-S as MAST writes it: one or more shapes, ``POLYGON`` or
``CIRCLE``, each with a frame (``ICRS``, ``J2000``, ``FK5``, ``GSC1``, ...), e.g.
``POLYGON J2000 23.14 60.64 23.14 60.65 ...`` or ``CIRCLE ICRS 210.91 54.58 0.625``. drizzlepac
writes one ``POLYGON ICRS`` per data region of a drizzled product, and HAP footprints may be
non-convex and come in several islands: the footprint is the union of its shapes, and each
polygon may have any shape (its edges are great circles).

Hand-written: spherical_geometry 1.4 (`SingleSphericalPolygon.from_radec`) guesses a polygon's
inside from its most convex corner and took the notch of an L-shaped footprint for its inside
(checked), and astropy-regions tests containment only through a pixel projection and has no
distance to a polygon's edge.
"""

import math
import re
from dataclasses import dataclass

import numpy as np

__all__ = ["Footprint", "parse_region", "separation_deg"]

# Frames whose axes agree with ICRS to well under an arcsecond: footprints are compared as they are.
_ICRS_LIKE = {"ICRS", "FK5", "J2000", "GSC1", "GSC2", "UNKNOWNFRAME"}
# Frames astropy converts (STC-S name -> astropy frame).
_CONVERTED = {"FK4": "fk4", "B1950": "fk4", "GALACTIC": "galactic"}
# STC-S words that may follow a frame and say nothing about positions on the sky.
_QUALIFIERS = {
    "BARYCENTER", "GEOCENTER", "HELIOCENTER", "TOPOCENTER", "LSR", "LSRK", "LSRD",
    "GALACTIC_CENTER", "LOCAL_GROUP_CENTER", "UNKNOWNREFPOS", "SPHERICAL2", "UNITSPHERE",
}  # fmt: skip
_SHAPES = {"POLYGON": None, "CIRCLE": 3}  # values: how many numbers the shape takes (None: pairs)
_TOKENS = re.compile(r"[()]|[^\s()]+")


@dataclass(frozen=True)
class Footprint:
    """The union of polygons (vertices as (RA, Dec) arrays, degrees, great-circle edges) and
    circles (RA, Dec, radius, degrees), ICRS."""

    polygons: tuple[np.ndarray, ...] = ()
    circles: tuple[tuple[float, float, float], ...] = ()

    def hits_cone(self, ra: float, dec: float, radius: float) -> bool:
        """Does the cone (centre and radius in degrees) touch any of the footprint's shapes?"""
        return any(
            separation_deg(ra, dec, c_ra, c_dec) <= radius + c_radius
            for c_ra, c_dec, c_radius in self.circles
        ) or any(_polygon_hits_cone(polygon, ra, dec, radius) for polygon in self.polygons)


def parse_region(region: str) -> Footprint:
    """The `Footprint` an STC-S region string describes (see the module's description).

    ``UNION`` (and its parentheses) joins shapes as listing them does. Raises ValueError naming
    the problem for anything else: another shape or operator, an unknown frame, a polygon with an
    odd count of numbers or fewer than three corners, a circle without exactly three numbers,
    numbers off the sky.
    """
    tokens = [t.upper() for t in _TOKENS.findall(region) if t not in "()"]
    polygons, circles = [], []
    at, union_frame = 0, "ICRS"

    def frame_words(default: str, what: str) -> str:
        nonlocal at
        frame = default
        while at < len(tokens) and not _is_number(tokens[at]) and tokens[at] not in _SHAPES:
            word = tokens[at]
            if word in _ICRS_LIKE or word in _CONVERTED:
                frame = word
            elif word not in _QUALIFIERS:
                raise ValueError(f"unknown frame {word!r} in a {what}")
            at += 1
        return frame

    while at < len(tokens):
        shape = tokens[at]
        at += 1
        if shape == "UNION":  # its frame is its shapes' (STC-S: "Union ICRS (Polygon ... Polygon ...)")
            union_frame = frame_words(union_frame, shape)
            continue
        if shape not in _SHAPES:
            raise ValueError(f"{shape!r} is not a shape this reader knows (POLYGON, CIRCLE, UNION)")
        frame = frame_words(union_frame, shape)
        start = at
        while at < len(tokens) and _is_number(tokens[at]):
            at += 1
        numbers = np.array([float(t) for t in tokens[start:at]])
        if not np.all(np.isfinite(numbers)) or np.any(np.abs(numbers[1::2][: len(numbers) // 2]) > 90):
            raise ValueError(f"a {shape} off the sky")
        if shape == "CIRCLE":
            if len(numbers) != 3:
                raise ValueError(f"a CIRCLE takes 3 numbers (RA, Dec, radius), not {len(numbers)}")
            (c_ra,), (c_dec,) = _to_icrs(numbers[:1], numbers[1:2], frame)
            circles.append((float(c_ra), float(c_dec), float(numbers[2])))
        else:
            if len(numbers) % 2 or len(numbers) < 6:
                raise ValueError(
                    f"a POLYGON takes pairs of numbers for 3 or more corners, not {len(numbers)}"
                )
            vertices = numbers.reshape(-1, 2)
            if np.array_equal(vertices[0], vertices[-1]):
                vertices = vertices[:-1]  # MAST closes its polygons
            if len(vertices) < 3:
                raise ValueError(f"a POLYGON with {len(vertices)} distinct corners")
            polygons.append(np.column_stack(_to_icrs(vertices[:, 0], vertices[:, 1], frame)))
    if not polygons and not circles:
        raise ValueError("no shape")
    return Footprint(tuple(polygons), tuple(circles))


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _to_icrs(ra: np.ndarray, dec: np.ndarray, frame: str) -> tuple[np.ndarray, np.ndarray]:
    """ICRS (RA, Dec) of positions given in an STC-S ``frame``."""
    if frame in _ICRS_LIKE:
        return ra, dec
    from astropy.coordinates import SkyCoord  # only for the rare footprint in another frame

    frame_name = _CONVERTED[frame]
    if frame_name == "galactic":
        given = SkyCoord(l=ra, b=dec, unit="deg", frame="galactic")
    else:
        given = SkyCoord(ra, dec, unit="deg", frame=frame_name)
    icrs = given.icrs
    return icrs.ra.deg, icrs.dec.deg


def _unit_vectors(ra, dec) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def separation_deg(ra1, dec1, ra2, dec2) -> float:
    """Angle between two positions, degrees."""
    dot = float(np.clip(_unit_vectors(ra1, dec1) @ _unit_vectors(ra2, dec2), -1, 1))
    return math.degrees(math.acos(dot))


def _polygon_hits_cone(polygon: np.ndarray, ra: float, dec: float, radius: float) -> bool:
    """Does the cone touch the spherical polygon (great-circle edges, any shape)?

    Works in the gnomonic plane at the cone centre, where great circles are straight lines and
    the distance from the origin is tan(angle): the cone touches the polygon if the origin is
    inside it (even-odd rule: a ray from it crosses the edges an odd number of times) or an edge
    comes within tan(radius).
    """
    centre = _unit_vectors(ra, dec)
    east = np.array([-math.sin(math.radians(ra)), math.cos(math.radians(ra)), 0.0])
    north = np.cross(centre, east)
    vectors = _unit_vectors(polygon[:, 0], polygon[:, 1])
    depth = vectors @ centre
    if np.any(depth <= 0.0):  # a vertex in the far hemisphere: not near this cone
        return False
    plane = np.column_stack([vectors @ east, vectors @ north]) / depth[:, None]
    x, y = plane[:, 0], plane[:, 1]
    x_next, y_next = np.roll(x, -1), np.roll(y, -1)
    # Edges that straddle the ray's line (y = 0) and cross it at x > 0.
    straddle = (y > 0) != (y_next > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross_x = x + (0 - y) * (x_next - x) / (y_next - y)
    if np.count_nonzero(straddle & (cross_x > 0)) % 2:
        return True
    limit = math.tan(math.radians(radius))
    edges = np.column_stack([x_next - x, y_next - y])
    for start, edge in zip(plane, edges, strict=True):
        length = edge @ edge
        t = np.clip(-(start @ edge) / length, 0.0, 1.0) if length else 0.0
        if np.hypot(*(start + t * edge)) <= limit:
            return True
    return False
