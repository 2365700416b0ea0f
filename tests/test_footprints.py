"""Footprints (``s_region``) as MAST writes them: frames, several shapes, non-convex polygons,
circles; against MAST's own recorded replies and, through the stand-in, in whole queries."""

import json
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astroquery.mast import tests as astroquery_mast_tests

from glue_mvmcut import ArchiveError
from glue_mvmcut.core.endpoints import using_server
from glue_mvmcut.core.footprints import parse_region
from glue_mvmcut.core.mast import query_layers, query_layers_near
from glue_mvmcut.testing.server import MastServer

RECORDED = Path(astroquery_mast_tests.__file__).parent / "data"
LMC = SkyCoord(84.9208, -69.1467, unit="deg")
LAYER = "hst_skycell-p0081x14y15_acs_wfc_f814w_all_drc.fits"


def _recorded_rows():
    rows = []
    for name in ("caom.json", "advSearch.json", "advSearchPos.json"):
        rows += [row for row in json.loads((RECORDED / name).read_text())["data"] if row.get("s_region")]
    return rows


def test_every_recorded_mast_footprint_is_read_with_its_frame_words_left_out():
    rows = _recorded_rows()
    assert len(rows) == 34
    frames = {row["s_region"].split()[1] for row in rows}
    assert frames == {"GSC1", "J2000", "ICRS"}
    for row in rows:
        footprint = parse_region(row["s_region"])
        # The observation's centre lies within a degree of every corner: no "2000" or "1" taken
        # for a coordinate.
        corners = [*footprint.polygons, *[np.array([c[:2]]) for c in footprint.circles]]
        for corner in np.concatenate(corners):
            assert (
                SkyCoord(*corner, unit="deg").separation(SkyCoord(row["s_ra"], row["s_dec"], unit="deg"))
                < 1 * u.deg
            )
    first = parse_region(rows[0]["s_region"])  # POLYGON GSC1, closed as MAST closes it
    assert first.polygons[0].shape == (4, 2)
    assert tuple(first.polygons[0][0]) == (23.17474785, 60.66012593)
    assert parse_region("CIRCLE ICRS 210.90789448  54.57587474 0.625").circles == (
        (210.90789448, 54.57587474, 0.625),
    )


def _offsets(points) -> str:
    """RA/Dec of (east, north) arcsec offsets from the LMC point, as 'ra dec ra dec ...'."""
    east, north = np.array(points, float).T * u.arcsec
    corners = LMC.spherical_offsets_by(east, north)
    return " ".join(f"{ra:.8f} {dec:.8f}" for ra, dec in zip(corners.ra.deg, corners.dec.deg, strict=True))


# An L: the LMC point in its corner square, 100" from every edge; (200, 200) in its notch.
L_SHAPE = _offsets([(-100, -100), (300, -100), (300, 100), (100, 100), (100, 300), (-100, 300)])
FAR_ISLAND = _offsets([(1000, 1000), (1200, 1000), (1200, 1200), (1000, 1200)])
NEAR_ISLAND = _offsets([(-60, -60), (60, -60), (60, 60), (-60, 60)])


def _hits(region: str, east: float, north: float, radius: float) -> bool:
    at = LMC.spherical_offsets_by(east * u.arcsec, north * u.arcsec)
    return parse_region(region).hits_cone(at.ra.deg, at.dec.deg, radius / 3600)


def test_non_convex_footprints_hold_their_corner_and_not_their_notch():
    region = f"POLYGON J2000 {L_SHAPE}"
    assert _hits(region, 0, 0, 15)  # inside, 100" from every edge
    assert _hits(region, 200, 0, 1) and _hits(region, 0, 200, 1)  # in each arm
    assert not _hits(region, 200, 200, 15)  # in the notch, 100" from the nearest edge
    assert _hits(region, 200, 200, 101)  # a cone that reaches the notch's edges


def test_footprints_of_several_islands_are_their_union():
    region = f"POLYGON GSC1 {FAR_ISLAND} POLYGON GSC1 {NEAR_ISLAND}"
    assert len(parse_region(region).polygons) == 2
    assert _hits(region, 0, 0, 15) and _hits(region, 1100, 1100, 15)
    assert not _hits(region, 500, 500, 15)  # between the islands
    assert _hits(f"UNION ICRS (POLYGON {FAR_ISLAND} POLYGON {NEAR_ISLAND})", 0, 0, 15)


def test_circles_touch_cones_within_both_radii():
    assert _hits(f"CIRCLE ICRS {LMC.ra.deg} {LMC.dec.deg} 0.01", 50, 0, 15)  # 36" + 15" > 50"
    assert not _hits(f"CIRCLE ICRS {LMC.ra.deg} {LMC.dec.deg} 0.01", 60, 0, 15)


def test_galactic_footprints_are_compared_in_icrs():
    galactic = LMC.galactic
    region = f"CIRCLE GALACTIC {galactic.l.deg} {galactic.b.deg} 0.001"
    ((ra, dec, radius),) = parse_region(region).circles
    assert SkyCoord(ra, dec, unit="deg").separation(LMC) < 1e-6 * u.arcsec and radius == 0.001


@pytest.mark.parametrize(
    ("region", "message"),
    [
        ("POLYGON ICRS 1 2 3 4 5 6 7", "a POLYGON takes pairs of numbers for 3 or more corners, not 7"),
        ("POLYGON ICRS 1 2 3 4", "a POLYGON takes pairs of numbers for 3 or more corners, not 4"),
        ("CIRCLE ICRS 1 2", r"a CIRCLE takes 3 numbers \(RA, Dec, radius\), not 2"),
        ("BOX ICRS 1 2 3 4", "'BOX' is not a shape this reader knows"),
        ("POLYGON MARS 1 2 3 4 5 6", "unknown frame 'MARS' in a POLYGON"),
        ("POLYGON ICRS 1 95 3 4 5 6", "a POLYGON off the sky"),
        ("CIRCLE GALACTIC 1 nan 3", "a CIRCLE off the sky"),
        ("POLYGON ICRS 1 2 3 4 1 2", "a POLYGON with 2 distinct corners"),
        ("", "no shape"),
    ],
)
def test_footprints_that_cannot_be_read_are_named(region, message):
    with pytest.raises(ValueError, match=message):
        parse_region(region)


@pytest.fixture
def reshaped(lmc_archive, tmp_path):
    """A stand-in serving the LMC archive with the footprint of LAYER replaced (``reshape(region)``)."""

    def reshape(region: str) -> MastServer:
        folder = tmp_path / "archive"
        folder.mkdir()
        for path in lmc_archive.directory.iterdir():
            if path.suffix == ".fits":
                (folder / path.name).symlink_to(path)
        manifest = json.loads((lmc_archive.directory / "manifest.json").read_text())
        for layer in manifest["layers"]:
            if layer["filename"] == LAYER:
                layer["s_region"] = region
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return MastServer(folder)

    return reshape


@pytest.mark.parametrize(
    "region",
    [f"POLYGON J2000 {L_SHAPE}", f"POLYGON GSC1 {FAR_ISLAND} POLYGON GSC1 {NEAR_ISLAND}"],
    ids=["L-shaped", "two islands"],
)
def test_layers_with_real_footprints_are_kept_by_every_query(reshaped, region):
    # A 20" box 40" or more inside the footprint; alone, and sharing a query with a box 3' away.
    with reshaped(region) as server, using_server(server.url):
        alone = query_layers(LMC, 20)
        shared = query_layers_near([(LMC, 20), (LMC.directional_offset_by(0 * u.deg, 180 * u.arcsec), 20)])[0]
    assert LAYER in alone["productFilename"] and len(alone) == 20
    assert list(shared["productFilename"]) == list(alone["productFilename"])


def test_an_unreadable_footprint_is_named_with_its_observation(reshaped):
    with reshaped("POLYGON ICRS 84.9 -69.1 85.0") as server, using_server(server.url):
        # One box: MAST chose; several boxes: each footprint is read, and this one cannot be.
        with pytest.raises(
            ArchiveError,
            match=r"MVM query: MAST at .* sent an unreadable reply \(the footprint of "
            r"hst_skycell-p0081x14y15_acs_wfc_f814w_all: a POLYGON takes pairs of numbers",
        ):
            query_layers_near([(LMC, 20), (LMC.directional_offset_by(0 * u.deg, 180 * u.arcsec), 20)])
