"""Layer footprints (MAST's ``s_region`` polygons) against cones on the sky.

MAST decides which observations a cone query returns by whether the cone touches each
observation's footprint. `region_hits_cone` makes the same decision locally, so one query over a
wider cone can serve several nearby boxes (see `~glue_mvmcut.core.mast.query_layers_near`);
the stand-in MAST server answers cone queries with it too.
"""

import math
import re

import numpy as np

__all__ = ["region_polygon", "separation_deg", "region_hits_cone"]

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")


def region_polygon(region: str) -> np.ndarray:
    """The (RA, Dec) vertices, degrees, of an STC-S ``POLYGON`` string such as MAST's ``s_region``."""
    numbers = [float(v) for v in _NUMBER.findall(region)]
    return np.array(numbers).reshape(-1, 2)


def _unit_vectors(ra, dec) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def separation_deg(ra1, dec1, ra2, dec2) -> float:
    """Angle between two positions, degrees."""
    dot = float(np.clip(_unit_vectors(ra1, dec1) @ _unit_vectors(ra2, dec2), -1, 1))
    return math.degrees(math.acos(dot))


def region_hits_cone(polygon: np.ndarray, ra: float, dec: float, radius: float) -> bool:
    """Does the cone (centre and radius in degrees) touch the spherical polygon (great-circle edges)?

    Works in the gnomonic plane at the cone centre, where great circles are straight lines and
    the distance from the origin is tan(angle): the cone touches the polygon if the origin is
    inside it or an edge comes within tan(radius).
    """
    centre = _unit_vectors(ra, dec)
    east = np.array([-math.sin(math.radians(ra)), math.cos(math.radians(ra)), 0.0])
    north = np.cross(centre, east)
    vectors = _unit_vectors(polygon[:, 0], polygon[:, 1])
    depth = vectors @ centre
    if np.any(depth <= 0.0):  # a vertex in the far hemisphere: not near this cone
        return False
    plane = np.column_stack([vectors @ east, vectors @ north]) / depth[:, None]
    # Inside test: the origin is on the same side of every edge.
    edges = np.roll(plane, -1, axis=0) - plane
    cross = edges[:, 0] * -plane[:, 1] - edges[:, 1] * -plane[:, 0]
    if np.all(cross >= 0) or np.all(cross <= 0):
        return True
    limit = math.tan(math.radians(radius))
    for start, edge in zip(plane, edges, strict=True):
        t = np.clip(-(start @ edge) / (edge @ edge), 0.0, 1.0)
        if np.hypot(*(start + t * edge)) <= limit:
            return True
    return False
