"""Combiners with known answers: median, mean, min, max, first, last, and one's own."""

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits

from glue_mvmcut.core.combine import combine_band, combine_cutouts
from glue_mvmcut.core.combiners import COMBINERS
from glue_mvmcut.core.cutout import cut_layer

LMC = SkyCoord(84.9208, -69.1467, unit="deg")
LAYER = "hst_skycell-p0081x14y15_acs_wfc_f814w_all_drc.fits"


@pytest.fixture(scope="module")
def base(lmc_archive):
    """A 40 x 40 px cutout, wholly observed (its own SCI, WHT 1000)."""
    cutout = cut_layer(lmc_archive.directory / LAYER, LMC, 40 * 0.04)
    assert cutout["SCI"].data.shape == (40, 40) and np.all(cutout["WHT"].data > 0)
    return cutout


def _copy(base, sci, wht, name) -> fits.HDUList:
    """``base`` with other pixels, as the cutout of another skycell on the same grid."""
    hdul = fits.HDUList([hdu.copy() for hdu in base])
    hdul["SCI"].data = np.broadcast_to(np.asarray(sci, np.float32), (40, 40)).astype(">f4")
    hdul["WHT"].data = np.broadcast_to(np.asarray(wht, np.float32), (40, 40)).astype(">f4")
    hdul[0].header["ORIG_FLE"] = name
    return hdul


@pytest.fixture(scope="module")
def three(base):
    """SCI 1, 2, 3 with weights 10, 20, 30 — but the first has no data in rows 0-9 (WHT 0, SCI
    -999 there, which must never show) and the third none in columns 30-39."""
    first_wht = np.full((40, 40), 10.0)
    first_wht[:10] = 0
    first_sci = np.where(first_wht > 0, 1.0, -999.0)
    third_wht = np.full((40, 40), 30.0)
    third_wht[:, 30:] = 0
    return [
        _copy(base, first_sci, first_wht, "a"),
        _copy(base, 2.0, 20.0, "b"),
        _copy(base, 3.0, third_wht, "c"),
    ]


def _regions(mosaic):
    """(SCI, WHT) where all three have data, where the first has none, where the third has none."""
    sci, wht = mosaic["SCI"].data, mosaic["WHT"].data
    return {
        "all": (sci[20, 10], wht[20, 10]),
        "no first": (sci[5, 10], wht[5, 10]),
        "no third": (sci[20, 35], wht[20, 35]),
        "neither": (sci[5, 35], wht[5, 35]),
    }


@pytest.mark.parametrize(
    ("combine", "expected"),
    [
        (
            "wmean",
            {
                "all": ((10 + 40 + 90) / 60, 60),
                "no first": ((40 + 90) / 50, 50),
                "no third": (50 / 30, 30),
                "neither": (2, 20),
            },
        ),
        ("mean", {"all": (2, 60), "no first": (2.5, 50), "no third": (1.5, 30), "neither": (2, 20)}),
        ("median", {"all": (2, 60), "no first": (2.5, 50), "no third": (1.5, 30), "neither": (2, 20)}),
        ("min", {"all": (1, 10), "no first": (2, 20), "no third": (1, 10), "neither": (2, 20)}),
        ("max", {"all": (3, 30), "no first": (3, 30), "no third": (2, 20), "neither": (2, 20)}),
        ("first", {"all": (1, 10), "no first": (2, 20), "no third": (1, 10), "neither": (2, 20)}),
        ("last", {"all": (3, 30), "no first": (3, 30), "no third": (2, 20), "neither": (2, 20)}),
    ],
)
def test_each_combiner_gives_its_documented_sci_and_wht(three, combine, expected):
    mosaic = combine_band(three, combine=combine)
    found = _regions(mosaic)
    for region, (sci, wht) in expected.items():
        assert found[region][0] == pytest.approx(sci, rel=1e-6), region
        assert found[region][1] == wht, region
    assert mosaic[0].header["COMBINE"] == combine
    assert not np.any(mosaic["SCI"].data == -999)  # unobserved pixels never take part


def test_a_median_ignores_one_skycells_bright_artefact(base):
    """Three skycells alike but for a 5 x 5 artefact in one: the median is the common sky, the
    weighted mean is pulled up by a third of the artefact."""
    sky = np.asarray(base["SCI"].data, np.float32)
    artefact = sky.copy()
    artefact[10:15, 20:25] += 3000
    inputs = [_copy(base, sky, 1000, "a"), _copy(base, artefact, 1000, "b"), _copy(base, sky, 1000, "c")]
    median = combine_band(inputs, combine="median")
    np.testing.assert_array_equal(median["SCI"].data, sky)  # exact: the median of a, sky, sky
    assert np.all(median["WHT"].data == 3000)
    mean = combine_band(inputs)
    np.testing.assert_allclose(mean["SCI"].data[10:15, 20:25], sky[10:15, 20:25] + 1000, rtol=1e-5)


def test_a_callable_gets_the_aligned_stacks(three):
    """Called on each block of the output with the inputs that cover it: float32 stacks of SCI
    (NaN where an input has no data) and WHT (0 there), every output pixel once."""
    seen = []

    def brightest_weight(sci, wht):
        assert sci.dtype == wht.dtype == np.float32 and sci.shape == wht.shape
        assert np.all(np.isnan(sci) == (wht == 0))
        seen.append(sci.shape)
        return np.nanmax(sci, axis=0), wht.max(axis=0)

    mosaic = combine_band(three, combine=brightest_weight)
    # Rows 10-39 x columns 0-29 have all three; rows 0-9 lack the first, columns 30-39 the third.
    assert sorted(seen) == [(1, 10, 10), (2, 10, 30), (2, 30, 10), (3, 30, 30)]
    assert _regions(mosaic)["all"] == (3, 30) and _regions(mosaic)["no first"] == (3, 30)
    assert mosaic[0].header["COMBINE"].endswith("brightest_weight")


def test_unknown_combiners_are_refused_with_the_list(three):
    with pytest.raises(
        ValueError, match="Unknown combiner 'mode': one of wmean, mean, median, min, max, first, last"
    ):
        combine_cutouts(three, combine="mode")


def test_a_single_input_is_itself_for_every_named_combiner(base):
    for combine in COMBINERS:
        (mosaic,) = combine_cutouts([base], combine=combine).values()
        np.testing.assert_array_equal(mosaic["SCI"].data, base["SCI"].data)
        np.testing.assert_array_equal(mosaic["WHT"].data, base["WHT"].data)


@pytest.mark.parametrize("combine", ["median", "first", "last", "min"])
def test_resampled_inputs_take_part_as_inputs_of_their_own(archives, combine):
    """Fine and coarse F160W never share a grid: with first/last the order of the inputs decides
    (here, which band's sky a pixel shows); every combiner keeps WHT 0 where nothing is."""
    lmc = archives["lmc"]
    coord = SkyCoord(84.9208, -69.1467, unit="deg")
    fine = cut_layer(lmc.directory / "hst_skycell-p0081x14y15_wfc3_ir_f160w_all_drz.fits", coord, 3)
    coarse = cut_layer(lmc.directory / "hst_skycell-p0081x14y15_wfc3_ir_f160w_coarse-all_drz.fits", coord, 3)
    coarse[0].header["FILENAME"] = fine[0].header["FILENAME"]  # one band for this test
    mosaic = combine_band([fine, coarse], combine=combine)
    sci, wht = mosaic["SCI"].data, mosaic["WHT"].data
    assert mosaic[0].header["COMBMETH"] == "paste + reproject_exact"
    assert np.all(sci[wht == 0] == 0) and np.count_nonzero(wht) > 0.9 * wht.size
    if combine == "first":
        observed = fine["WHT"].data > 0
        np.testing.assert_array_equal(sci[observed], fine["SCI"].data[observed])
