"""Turning what users type into checked sky positions and box sizes."""

import math
from typing import TYPE_CHECKING

import astropy.units as u
import numpy as np

from .errors import InvalidCoordinateError, InvalidSizeError

if TYPE_CHECKING:
    from astropy.coordinates import SkyCoord

__all__ = ["FRAMES", "parse_coord", "parse_size", "box_radius", "MAX_BOX_SIZE", "MAX_BOX_PIXELS"]

#: Largest box side accepted: a 1 degree cutout at 0.04"/px is already 90000 x 90000 px (32 GB).
MAX_BOX_SIZE = 1 * u.deg
#: Largest box side accepted when the size is given in pixels.
MAX_BOX_PIXELS = 90000


_POSITION_HINT = (
    "Give RA and Dec in degrees (84.9208 -69.1467, 84.9208d -69.1467d) or sexagesimal "
    "(05:39:41.0 -69:08:48, 05h39m41.0s -69d08m48s, 05 39 41.0 -69 08 48)."
)
#: Frames a position may be given in (converted to ICRS).
FRAMES = ("icrs", "fk5", "galactic")
_SIZE_HINT = "Give the box side in arcsec (e.g. 20), or (height, width), or an angle such as 0.5 * u.arcmin."


def _ra_in_hours(text: str) -> bool:
    # "05:39:41.2" and "5h39m41.2s" are hours of RA; "84.92", "84d55m15s" are degrees.
    return ":" in text or "h" in text.lower()


def parse_coord(coord, dec=None, *, frame: str = "icrs") -> "SkyCoord":
    """Return an ICRS `~astropy.coordinates.SkyCoord` for a position given in any usual form.

    Parameters
    ----------
    coord : `~astropy.coordinates.SkyCoord`, str, float or (ra, dec) pair
        A SkyCoord; a string in degrees (``"84.9208 -69.1467"``, ``"84.9208d -69.1467d"``) or
        sexagesimal, RA in hours (``"05:39:41 -69:08:48"``, ``"05h39m41s -69d08m48s"``, or six
        numbers as SIMBAD prints them, ``"05 39 41.0 -69 08 48"``); a pair of numbers in degrees
        or of strings; or the RA alone when ``dec`` is given.
    dec : float or str, optional
        Declination, when ``coord`` is the RA alone.
    frame : {'icrs', 'fk5', 'galactic'}, optional
        The frame of a position that is not a SkyCoord: with ``"galactic"``, ``l b`` in degrees.

    Returns
    -------
    `~astropy.coordinates.SkyCoord`
        A scalar position in ICRS.

    Raises
    ------
    InvalidCoordinateError
        If the position cannot be parsed, is not finite or lies off the sky (RA outside
        [0, 360) degrees, which is never wrapped, or ``|dec| > 90``).
    """
    from astropy.coordinates import Angle, SkyCoord  # imported on first use (a third of a second)

    given = coord if dec is None else (coord, dec)
    try:
        if isinstance(coord, SkyCoord):
            if not coord.isscalar:
                raise InvalidCoordinateError(f"Expected one sky position, got {len(coord)}.")
            result = coord.icrs
        else:
            if dec is not None:
                ra_part, dec_part = coord, dec
            elif isinstance(coord, str):
                parts = coord.replace(",", " ").split()
                if len(parts) == 6:  # h m s d m s, space-separated as SIMBAD prints them
                    parts = [":".join(parts[:3]), ":".join(parts[3:])]
                if len(parts) != 2:
                    raise InvalidCoordinateError(
                        f"Cannot read a sky position from {coord!r}: expected 'RA Dec'. {_POSITION_HINT}"
                    )
                ra_part, dec_part = parts
            else:
                ra_part, dec_part = coord
            if frame not in FRAMES:
                raise InvalidCoordinateError(f"Unknown frame {frame!r}: one of {', '.join(FRAMES)}.")
            if isinstance(ra_part, str) and _ra_in_hours(ra_part) and frame != "galactic":
                unit = (u.hourangle, u.deg)
            else:
                unit = (u.deg, u.deg)
            # SkyCoord would wrap RA 400 to 40 without a word: a typo would cut the wrong sky.
            ra = Angle(ra_part, unit=unit[0]).deg
            if not 0 <= ra < 360:
                what = "l" if frame == "galactic" else "RA"
                raise InvalidCoordinateError(
                    f"Not a valid sky position: {what} {ra_part!r} is outside 0 to 360 degrees (0h to 24h). "
                    + _POSITION_HINT
                )
            result = SkyCoord(ra_part, dec_part, unit=unit, frame=frame).icrs
    except InvalidCoordinateError:
        raise
    except (ValueError, TypeError, u.UnitsError) as exc:
        raise InvalidCoordinateError(
            f"Not a valid sky position: {given!r} ({exc}). {_POSITION_HINT}"
        ) from exc
    if not (np.isfinite(result.ra.deg) and np.isfinite(result.dec.deg)):
        raise InvalidCoordinateError(f"Not a valid sky position: {given!r} is not finite. {_POSITION_HINT}")
    return result


def parse_size(size, *, allow_pixels: bool = False) -> u.Quantity:
    """Return a box size as a ``(ny, nx)`` Quantity.

    Parameters
    ----------
    size : float, (ny, nx) pair, or `~astropy.units.Quantity`
        Plain numbers are arcseconds. A scalar gives a square box. Quantities may be angular,
        or in pixels (``u.pix``) when ``allow_pixels`` is true.
    allow_pixels : bool, optional
        Accept sizes in pixels.

    Returns
    -------
    `~astropy.units.Quantity`
        Two elements, ``(ny, nx)``, in arcsec (or in pixels when given in pixels).

    Raises
    ------
    InvalidSizeError
        If the size is not a number, has a wrong unit, is not positive and finite, has more than
        two elements or exceeds 1 degree (90000 pixels).
    """
    try:
        quantity = size if isinstance(size, u.Quantity) else u.Quantity(size, u.arcsec)
    except (TypeError, ValueError) as exc:
        raise InvalidSizeError(f"Not a valid cutout size: {size!r}. {_SIZE_HINT}") from exc
    quantity = np.atleast_1d(quantity)
    if quantity.ndim != 1 or quantity.size not in (1, 2):
        raise InvalidSizeError(f"A cutout size has one or two values (ny, nx), got {size!r}. {_SIZE_HINT}")
    if quantity.size == 1:
        quantity = np.repeat(quantity, 2)
    if quantity.unit.physical_type == "angle":
        quantity = quantity.to(u.arcsec)
        limit = MAX_BOX_SIZE.to(u.arcsec)
    elif allow_pixels and quantity.unit == u.pix:
        limit = MAX_BOX_PIXELS * u.pix
    else:
        wanted = "an angle or pixels" if allow_pixels else "an angle"
        raise InvalidSizeError(f"A cutout size must be {wanted}, got {size!r}. {_SIZE_HINT}")
    values = quantity.value
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InvalidSizeError(f"A cutout size must be positive and finite, got {size!r}. {_SIZE_HINT}")
    if np.any(quantity > limit):
        raise InvalidSizeError(
            f"A cutout size of {size!r} exceeds the largest box, {limit}: cover a larger area with "
            "several boxes (mvmcut batch)."
        )
    return quantity


def box_radius(size: u.Quantity) -> u.Quantity:
    """Half the diagonal of a ``(ny, nx)`` angular box: the radius of the circle around it."""
    ny, nx = size.to_value(u.arcsec)
    return math.hypot(ny, nx) / 2 * u.arcsec
