"""The skycell tessellation against the check values of drizzlepac's MVM tessellation (p1889x07y19,
p0081x14y14 fine and coarse, the LMC point in four skycells) and a brute-force oracle."""

from functools import lru_cache

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from hypothesis import given, settings
from hypothesis import strategies as st

from glue_mvmcut import InvalidCoordinateError, InvalidNameError, InvalidSizeError
from glue_mvmcut.core.skycells import (
    SKYCELL_SIDE,
    SKYCELL_STEP,
    ProjectionCell,
    SkyCell,
    rings,
    skycells_covering,
)

LMC = (84.9208, -69.1467)
LMC_SKYCELLS = ["p0081x14y14", "p0081x14y15", "p0081x15y14", "p0081x15y15"]


def test_rings_are_the_46_of_the_tessellation():
    all_rings = rings()
    assert len(all_rings) == 46
    assert (all_rings[5].first_cell, all_rings[5].nband, all_rings[5].dec) == (73, 33, -70.0)
    assert all_rings[-1].first_cell + all_rings[-1].nband == 2644
    # Rings are contiguous in cell numbers.
    for below, above in zip(all_rings[:-1], all_rings[1:], strict=True):
        assert above.first_cell == below.first_cell + below.nband


@pytest.mark.parametrize(
    "name, scale, crval, crpix, naxis",
    [
        ("p1889x07y19", "fine", (180.0, 26.0), (96492.0, -160812.0), 21954),
        ("p0081x14y14", "fine", (87.2727272727, -70.0), (-53602.0, -53602.0), 21954),
        ("p0081x14y14", "coarse", (87.2727272727, -70.0), (-53602 / 3, -53602 / 3), 7318),
    ],
)
def test_skycell_wcs_matches_the_check_values(name, scale, crval, crpix, naxis):
    wcs = SkyCell.from_name(name).wcs(scale)
    np.testing.assert_allclose(wcs.wcs.crval, crval, atol=1e-9)
    np.testing.assert_allclose(wcs.wcs.crpix, crpix, atol=1e-9)
    assert wcs.pixel_shape == (naxis, naxis)
    step = {"fine": 0.04, "coarse": 0.12}[scale] / 3600
    np.testing.assert_allclose(wcs.wcs.cd, [[-step, 0], [0, step]], rtol=1e-12)
    assert list(wcs.wcs.ctype) == ["RA---TAN", "DEC--TAN"]


def test_coarse_neighbours_are_offset_by_a_third_of_a_pixel():
    left = SkyCell.from_name("p0081x14y14").wcs("coarse").wcs.crpix[0]
    right = SkyCell.from_name("p0081x15y14").wcs("coarse").wcs.crpix[0]
    assert left - right == pytest.approx(SKYCELL_STEP / 3)
    assert (left - right) % 1 == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "text", ["p0081x14y14", "skycell-p0081x14y14", "hst_skycell-p0081x14y14_acs_wfc_f814w_all_drc.fits"]
)
def test_from_name_accepts_every_spelling(text):
    cell = SkyCell.from_name(text)
    assert (cell.projection_cell, cell.x, cell.y, cell.name) == (81, 14, 14, "p0081x14y14")
    assert cell.parent == ProjectionCell(81)
    assert cell.parent.crval == pytest.approx((87.27272727272727, -70.0))


@pytest.mark.parametrize(
    "text, message",
    [
        ("p0081x22y01", "x=22 is outside 1..21"),
        ("p0081x00y01", "x=0 is outside 1..21"),
        ("p2644x01y01", "No projection cell 2644"),
        ("x14y14", "'x14y14' is not a skycell name"),
        ("hst_p0081x14y14", "'hst_p0081x14y14' is not a skycell name"),
    ],
)
def test_bad_skycell_names_are_refused(text, message):
    with pytest.raises(InvalidNameError, match=message):
        SkyCell.from_name(text)


def test_the_lmc_point_lies_in_exactly_four_skycells():
    assert [c.name for c in skycells_covering(LMC, 1)] == LMC_SKYCELLS
    assert ProjectionCell.containing(LMC) == [ProjectionCell(81)]


def test_size_forms_are_equivalent():
    one = skycells_covering(LMC, 30)
    assert skycells_covering(LMC, (30, 30)) == one
    assert skycells_covering(SkyCoord(*LMC, unit="deg"), 0.5 * u.arcmin) == one
    assert skycells_covering(LMC, [30, 30] * u.arcsec) == one


@pytest.mark.parametrize("dec", [-90.0, 90.0])
def test_poles_are_covered_by_the_polar_cap(dec):
    cells = skycells_covering((123.0, dec), 60)
    cap = 0 if dec < 0 else 2643
    assert [c.name for c in cells] == [f"p{cap:04d}x11y11"]


def test_box_across_ra_zero_finds_cells_on_both_sides():
    # Projection cell 1322 (Dec +2) is centred on RA 0; a box on RA = 0 near the equator also
    # reaches the ring at Dec -2 (projection cells overlap in Dec by ~1 degree).
    cells = skycells_covering((0.0, 0.3), 40)
    assert {c.projection_cell for c in cells} == {1232, 1322}
    east = skycells_covering((0.01, 0.3), 2)
    west = skycells_covering((359.99, 0.3), 2)
    assert set(east) | set(west) <= set(cells)


@lru_cache(maxsize=4096)
def _skycell_wcs(cell: SkyCell):
    return cell.wcs("fine")


def _holding(point: SkyCoord) -> set[SkyCell]:
    """Oracle: the skycells whose own WCS puts ``point`` inside their 21954 x 21954 pixels.

    Candidates are every skycell within two steps of the point's position in each projection
    cell that contains it; each is then confirmed with its own WCS.
    """
    held = set()
    for parent in ProjectionCell.containing(point):
        px, py = parent.wcs("fine").world_to_pixel(point)
        cx, cy = int(px // SKYCELL_STEP) + 1, int(py // SKYCELL_STEP) + 1
        for x in range(max(1, cx - 2), min(21, cx + 2) + 1):
            for y in range(max(1, cy - 2), min(21, cy + 2) + 1):
                cell = SkyCell(parent.index, x, y)
                sx, sy = _skycell_wcs(cell).world_to_pixel(point)
                if -0.5 <= sx <= SKYCELL_SIDE - 0.5 and -0.5 <= sy <= SKYCELL_SIDE - 0.5:
                    held.add(cell)
    return held


def _box_points(ra, dec, size_arcsec, n=3):
    centre = SkyCoord(ra, dec, unit="deg")
    offsets = np.linspace(-size_arcsec / 2, size_arcsec / 2, n) * u.arcsec
    east, north = np.meshgrid(offsets, offsets)
    return centre.spherical_offsets_by(east.ravel(), north.ravel())


@settings(max_examples=30, deadline=None)
@given(
    ra=st.floats(0, 360, exclude_max=True),
    dec=st.floats(-89.9, 89.9),
    size=st.floats(0.5, 600),
)
def test_every_skycell_holding_part_of_the_box_is_found(ra, dec, size):
    found = set(skycells_covering((ra, dec), size))
    for point in _box_points(ra, dec, size * 0.999):
        holding = _holding(point)
        assert holding, f"no skycell holds {point}"
        assert holding <= found


@pytest.mark.parametrize("dec", [-2.55, -0.5, 0.5, 2.55, 42.0, 88.47, -86.5])
def test_ring_boundaries_and_high_declinations(dec):
    for ra in (0.0, 1.9, 359.3):
        found = set(skycells_covering((ra, dec), 120))
        for point in _box_points(ra, dec, 119.9):
            assert _holding(point) <= found


def test_a_box_beside_a_skycell_does_not_select_it():
    # A 10" box whose east edge sits 2" west of skycell x15's west edge, well inside x14 only.
    cell = SkyCell.from_name("p0081x15y14")
    wcs = cell.wcs("fine")
    y_mid = SKYCELL_SIDE / 2
    edge = wcs.pixel_to_world(-0.5 - 2 / 0.04 - 5 / 0.04, y_mid)
    names = {c.name for c in skycells_covering(edge, 10)}
    assert "p0081x15y14" not in names
    assert "p0081x14y14" in names


@pytest.mark.parametrize(
    "coord, message",
    [
        ((10.0, 95.0), "Latitude angle"),
        ((10.0, float("nan")), "not finite"),
        ("not a position", "Cannot read a sky position"),
    ],
)
def test_positions_off_the_sky_are_refused(coord, message):
    with pytest.raises(InvalidCoordinateError, match=message):
        skycells_covering(coord, 10)


@pytest.mark.parametrize(
    "size, message",
    [
        (-5, r"positive and finite, got -5"),
        (0, r"positive and finite, got 0"),
        (float("inf"), r"positive and finite"),
        (7200, r"exceeds the largest box"),
        ((1, 2, 3), r"one or two values"),
        (5 * u.kg, r"must be an angle"),
        ("big", r"Not a valid cutout size: 'big'"),
    ],
)
def test_bad_sizes_are_refused(size, message):
    with pytest.raises(InvalidSizeError, match=message):
        skycells_covering(LMC, size)
