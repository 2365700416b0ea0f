"""Reading positions and sizes the way users type them."""

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import FK5, SkyCoord

from glue_mvmcut import InvalidCoordinateError, InvalidSizeError
from glue_mvmcut.core.coords import parse_coord, parse_size


@pytest.mark.parametrize(
    "given",
    [
        "84.9208 -69.1467",
        "84.9208, -69.1467",
        (84.9208, -69.1467),
        ("84.9208", "-69.1467"),
        ("05:39:40.992", "-69:08:48.12"),
        "5h39m40.992s -69d08m48.12s",
        "05 39 40.992 -69 08 48.12",  # as SIMBAD prints it
        "84.9208d -69.1467d",
        SkyCoord(84.9208, -69.1467, unit="deg"),
    ],
)
def test_positions_in_every_usual_form(given):
    coord = parse_coord(given)
    assert coord.ra.deg == pytest.approx(84.9208, abs=1e-6)
    assert coord.dec.deg == pytest.approx(-69.1467, abs=1e-6)


def test_other_frames_become_icrs():
    coord = parse_coord(SkyCoord(84.9208, -69.1467, unit="deg", frame=FK5(equinox="J1950")))
    assert coord.frame.name == "icrs"
    assert abs(coord.ra.deg - 84.9208) > 0.05  # precession since 1950


def test_galactic_positions_are_l_b_in_degrees():
    coord = parse_coord("279.50714 -31.58031", frame="galactic")  # the LMC field
    assert coord.frame.name == "icrs"
    assert coord.separation(SkyCoord(84.9208, -69.1467, unit="deg")).arcsec < 1
    with pytest.raises(InvalidCoordinateError, match="l '400' is outside 0 to 360 degrees"):
        parse_coord("400 10", frame="galactic")
    with pytest.raises(InvalidCoordinateError, match="Unknown frame 'fk4': one of icrs, fk5, galactic"):
        parse_coord("10 10", frame="fk4")


def test_separate_dec_argument():
    assert parse_coord("05:39:40.992", "-69:08:48.12").ra.deg == pytest.approx(84.9208, abs=1e-6)


@pytest.mark.parametrize(
    "given, message",
    [
        ((1.0, -95.0), r"Not a valid sky position: \(1.0, -95.0\)"),
        ((400, 20), r"RA 400 is outside 0 to 360 degrees"),  # never wrapped to 40
        ("-0.5 20", r"RA '-0.5' is outside 0 to 360 degrees"),
        ("84.9 -69.1 3", r"Cannot read a sky position from '84.9 -69.1 3'"),
        (("abc", "def"), r"Not a valid sky position: \('abc', 'def'\)"),
        (SkyCoord([1, 2], [3, 4], unit="deg"), "Expected one sky position, got 2"),
    ],
)
def test_bad_positions(given, message):
    with pytest.raises(InvalidCoordinateError, match=message):
        parse_coord(given)


def test_sizes():
    np.testing.assert_array_equal(parse_size(20).to_value(u.arcsec), [20, 20])
    np.testing.assert_array_equal(parse_size((10, 30)).to_value(u.arcsec), [10, 30])
    np.testing.assert_allclose(parse_size(0.5 * u.arcmin).to_value(u.arcsec), [30, 30])
    assert parse_size([100, 250] * u.pix, allow_pixels=True).unit == u.pix
    with pytest.raises(InvalidSizeError, match="must be an angle"):
        parse_size(100 * u.pix)
