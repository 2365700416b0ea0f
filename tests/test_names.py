"""The MVM name grammar: formatting, parsing, round trips and refusals."""

from decimal import ROUND_DOWN, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glue_mvmcut import InvalidCoordinateError, InvalidNameError
from glue_mvmcut.core.names import (
    Band,
    CombinedName,
    CutoutName,
    LayerName,
    QueryName,
    coord_token,
    mosaic_files,
    parse_coord_token,
    parse_product_name,
)
from glue_mvmcut.core.skycells import SkyCell

LAYERS = [
    "hst_skycell-p0081x14y14_wfc3_uvis_f225w_all_drc.fits",
    "hst_skycell-p0081x14y15_wfc3_ir_f128n_coarse-all_drz.fits",
    "hst_skycell-p0081x14y15_wfc3_ir_f128n_all_drz.fits",
    "hst_skycell-p0081x14y15_wfc3_ir_f128n_coarse-all-ibp505mf_drz.fits",
    "hst_skycell-p1253x05y09_acs_wfc_f658n_all_drc.fits",
    "hst_skycell-p1253x05y09_acs_wfc_f814w_all-jbp505jg_drc.fits",
    # Both of ACS's wheels (drizzlepac's determine_filter_name: polarizer last), and a ramp filter.
    "hst_skycell-p1253x05y09_acs_wfc_f606w-pol60v_all_drc.fits",
    "hst_skycell-p1253x05y09_acs_wfc_f435w-f660n_all-jbp505jg_drc.fits",
    "hst_skycell-p1253x05y09_acs_wfc_fr656n_all_drc.fits",
]


@pytest.mark.parametrize(
    "ra, dec, token",
    [
        (84.9208, -69.1467, "ra84d9208-decs69d1467"),
        (84.0, 0.0, "ra84d0000-decn0d0000"),  # integral values: the seed's split(".") broke here
        (84, -70, "ra84d0000-decs70d0000"),
        (359.99999, 12.5, "ra359d9999-decn12d5000"),  # truncated, never rounded up to 360
        (360.0, 1.0, "ra0d0000-decn1d0000"),
        (-0.00001, 1.0, "ra359d9999-decn1d0000"),
        (-1e-20, 1.0, "ra0d0000-decn1d0000"),  # wraps to exactly 360.0 in floating point
        (10.0, -0.00001, "ra10d0000-decs0d0000"),  # just below 0 is south
        (10.0, -0.0, "ra10d0000-decs0d0000"),  # what "decs0d0000" parses to must format back
        (0.05, -0.05, "ra0d0500-decs0d0500"),  # 0.05 % 1 == 0.04999... broke the seed
        (5.1, -90.0, "ra5d1000-decs90d0000"),
    ],
)
def test_coordinate_tokens(ra, dec, token):
    assert coord_token(ra, dec) == token


@pytest.mark.parametrize("ra, dec", [(10.0, 90.5), (float("nan"), 0.0), (float("inf"), 0.0)])
def test_coordinate_tokens_refuse_positions_off_the_sky(ra, dec):
    with pytest.raises(InvalidCoordinateError, match=r"Cannot name a position at RA="):
        coord_token(ra, dec)


def _truncated(value: float) -> float:
    return float(Decimal(repr(value)).quantize(Decimal("0.0001"), rounding=ROUND_DOWN))


@given(ra=st.floats(0, 360, exclude_max=True), dec=st.floats(-90, 90))
def test_coordinate_tokens_round_trip(ra, dec):
    token = coord_token(ra, dec)
    back_ra, back_dec = parse_coord_token(token)
    assert back_ra == _truncated(ra)
    assert abs(back_dec) == _truncated(abs(dec))
    assert coord_token(back_ra, back_dec) == token


@pytest.mark.parametrize("name", LAYERS)
def test_layer_names_round_trip(name):
    layer = LayerName.parse(name)
    assert layer.filename == name
    assert layer.obs_id == name.rsplit("_", 1)[0]
    assert parse_product_name(name) == layer


def test_layer_name_fields():
    layer = LayerName.parse("hst_skycell-p0081x14y15_wfc3_ir_f128n_coarse-all-ibp505mf_drz.fits")
    assert layer.skycell == SkyCell(81, 14, 15)
    assert (layer.instrument, layer.detector, layer.filter) == ("wfc3", "ir", "f128n")
    assert (layer.scale, layer.exposure, layer.kind) == ("coarse", "ibp505mf", "drz")
    assert layer.band == Band(
        instrument="wfc3", detector="ir", filter="f128n", scale="coarse", exposure="ibp505mf"
    )
    assert layer.label() == "WFC3/IR F128N coarse ibp505mf"
    fine = LayerName.parse("hst_skycell-p0081x14y15_wfc3_ir_f128n_all_drz.fits")
    assert fine.band != layer.band and fine.scale == "fine"


@pytest.mark.parametrize(
    "layer, cutout, combined",
    [
        (
            "hst_skycell-p0081x14y15_acs_wfc_f814w_all_drc.fits",
            "hst_cutout_skycell-p0081x14y15-ra84d9208-decs69d1467_acs_wfc_f814w.fits",
            "hst_combined_skycells-ra84d9208-decs69d1467_acs_wfc_f814w.fits",
        ),
        (
            "hst_skycell-p0081x14y15_wfc3_ir_f128n_coarse-all_drz.fits",
            "hst_cutout_skycell-p0081x14y15-ra84d9208-decs69d1467_wfc3_ir_f128n_coarse.fits",
            "hst_combined_skycells-ra84d9208-decs69d1467_wfc3_ir_f128n_coarse.fits",
        ),
        (
            "hst_skycell-p0081x14y15_wfc3_ir_f128n_coarse-all-ibp505mf_drz.fits",
            "hst_cutout_skycell-p0081x14y15-ra84d9208-decs69d1467_wfc3_ir_f128n_coarse-ibp505mf.fits",
            "hst_combined_skycells-ra84d9208-decs69d1467_wfc3_ir_f128n_coarse_ibp505mf.fits",
        ),
        (
            "hst_skycell-p0081x14y15_acs_wfc_f814w_all-jbp505jg_drc.fits",
            "hst_cutout_skycell-p0081x14y15-ra84d9208-decs69d1467_acs_wfc_f814w-jbp505jg.fits",
            "hst_combined_skycells-ra84d9208-decs69d1467_acs_wfc_f814w_jbp505jg.fits",
        ),
        (  # an 8-letter polarizer, then an exposure: each keeps its part
            "hst_skycell-p0081x14y15_acs_wfc_f606w-pol120uv_all-jbp505jg_drc.fits",
            "hst_cutout_skycell-p0081x14y15-ra84d9208-decs69d1467_acs_wfc_f606w-pol120uv-jbp505jg.fits",
            "hst_combined_skycells-ra84d9208-decs69d1467_acs_wfc_f606w-pol120uv_jbp505jg.fits",
        ),
    ],
)
def test_cutout_and_combined_names_follow_the_seed(layer, cutout, combined):
    parsed = LayerName.parse(layer)
    cut = CutoutName.for_layer(parsed, 84.9208, -69.1467)
    assert cut.filename == cutout
    assert CutoutName.parse(cutout) == cut
    mosaic = CombinedName.for_band(cut, 84.9208, -69.1467)
    assert mosaic.filename == combined
    assert CombinedName.parse(combined) == mosaic
    assert parse_product_name(cutout) == cut and parse_product_name(combined) == mosaic


@pytest.mark.parametrize(
    ("name", "ra", "dec"),
    [
        ("hst_cutout_skycell-p1889x07y19-ra180d0-decn26d0_acs_wfc_f814w.fits", 180.0, 26.0),
        ("hst_cutout_skycell-p0081x14y14-ra84d92-decs69d146_acs_wfc_f814w.fits", 84.92, -69.146),
        ("hst_combined_skycells-ra84d9-decs69d1467_wfc3_ir_f160w_coarse.fits", 84.9, -69.1467),
    ],
)
def test_the_seeds_names_with_fewer_decimals_are_read_as_it_wrote_them(name, ra, dec):
    # The seed wrote str(value).split(".")[1][0:4]: as many decimals as Python printed, up to 4.
    parsed = parse_product_name(name)
    assert (parsed.ra, parsed.dec) == (ra, dec)


def test_query_table_name():
    name = QueryName(84.9208, -69.1467, 15)
    assert name.filename == "mvm_query-ra84d9208-decs69d1467_15_cutout.ecsv"
    assert QueryName.parse(name.filename) == name


names = st.builds(
    dict,
    skycell=st.builds(SkyCell, st.integers(0, 2643), st.integers(1, 21), st.integers(1, 21)),
    instrument=st.sampled_from(["acs", "wfc3"]),
    detector=st.sampled_from(["wfc", "uvis", "ir", "hrc"]),
    filter=st.from_regex(r"f[0-9]{3}[wmnlx](-(f[0-9]{3}[wmn]|pol(0|60|120)u?v))?", fullmatch=True),
    scale=st.sampled_from(["fine", "coarse"]),
    exposure=st.none() | st.from_regex(r"[ij][a-z0-9]{7}", fullmatch=True),
)


@given(fields=names, ra=st.floats(0, 359.9999), dec=st.floats(-90, 90))
def test_every_name_kind_round_trips(fields, ra, dec):
    layer = LayerName(**fields, kind="drc")
    assert LayerName.parse(layer.filename) == layer
    cut = CutoutName.for_layer(layer, ra, dec)
    again = CutoutName.parse(cut.filename)
    assert again.filename == cut.filename
    assert again.band == layer.band and again.skycell == layer.skycell
    mosaic = CombinedName.for_band(layer, ra, dec)
    assert CombinedName.parse(mosaic.filename).filename == mosaic.filename


@pytest.mark.parametrize(
    "parser, name",
    [
        (LayerName.parse, "hst_skycell-p0081x14y14_acs_wfc_f814w_drc.fits"),  # no label
        (LayerName.parse, "hst_skycell-p0081x14y14_acs_wfc_f814w_all_flt.fits"),
        (LayerName.parse, "hst_15629_07_acs_wfc_f814w_jdxk07_drc.fits"),  # single-visit product
        (LayerName.parse, "hst_skycell-p0081x14y14_acs_wfc_f814w_all_drc.fits.jpg"),
        (LayerName.parse, "../hst_skycell-p0081x14y14_acs_wfc_f814w_all_drc.fits"),
        (CutoutName.parse, "hst_cutout_skycell-p0081x14y14-ra84d92345-decs69d1467_acs_wfc_f814w.fits"),
        (LayerName.parse, "hst_skycell-p0081x14y14_acs_wfc_f606w-jbp505jg_all_drc.fits"),  # no filter
        (CutoutName.parse, "hst_cutout_skycell-p0081x14y14-ra84d9208-decx69d1467_acs_wfc_f814w.fits"),
        (CombinedName.parse, "hst_combined_skycells-ra400d0000-decs69d1467_acs_wfc_f814w.fits"),
        (CutoutName.parse, "hst_cutout_skycell-p0081x14y14-ra84d9208-decs69d1467_acs_wfc_f814w-x.fits"),
        (QueryName.parse, "mvm_query_84.920800_s69.146700_15_cutout.ecsv"),  # the seed's real output
        (parse_product_name, "image.fits"),
    ],
)
def test_names_it_did_not_make_are_refused(parser, name):
    with pytest.raises(InvalidNameError, match="name|off the sky"):
        parser(name)


def test_invalid_fields_are_refused():
    with pytest.raises(InvalidNameError, match="Invalid filter 'F814W'"):
        Band(instrument="acs", detector="wfc", filter="F814W")
    with pytest.raises(InvalidNameError, match="Invalid scale 'medium'"):
        Band(instrument="acs", detector="wfc", filter="f814w", scale="medium")
    with pytest.raises(InvalidNameError, match="Invalid instrument 'acs/wfc'"):
        Band(instrument="acs/wfc", detector="wfc", filter="f814w")
    with pytest.raises(InvalidNameError, match="whole arcseconds"):
        _ = QueryName(1.0, 2.0, 1.5).filename


def test_the_file_standing_for_each_bands_mosaic_is_found_by_name():
    token = "ra84d9208-decs69d1467"
    names = [
        f"mvm_query-{token}_3_cutout.ecsv",
        f"hst_cutout_skycell-p0081x14y14-{token}_acs_wfc_f814w.fits",
        f"hst_cutout_skycell-p0081x14y15-{token}_acs_wfc_f814w.fits",
        f"hst_combined_skycells-{token}_acs_wfc_f814w.fits",
        f"hst_cutout_skycell-p0081x14y14-{token}_wfc3_ir_f160w_coarse.fits",  # alone in its band
        f"hst_cutout_skycell-p0081x14y14-{token}_acs_wfc_f658n.fits",  # two cutouts, no mosaic
        f"hst_cutout_skycell-p0081x14y15-{token}_acs_wfc_f658n.fits",
        "notes.txt",
    ]
    assert mosaic_files(names) == [names[3], names[4]]
    assert mosaic_files([]) == []
