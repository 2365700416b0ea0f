"""cut_layer: pixel-exact SCI+WHT cutouts from local MVM layers."""

import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from glue_mvmcut import NotMVMFileError, OutsideFootprintError
from glue_mvmcut.core.cutout import cut_layer
from glue_mvmcut.core.fitsheaders import HDUInfo, celestial_wcs, edited_header, hdu_with_header, plain_wcs

LMC = SkyCoord(84.9208, -69.1467, unit="deg")
F814W = "hst_skycell-p0081x14y15_acs_wfc_f814w_all_drc.fits"


def _layer(archive, name=F814W):
    return archive.directory / name


def _check_pixel_exact(cutout, layer_path):
    """Every cutout pixel equals the layer pixel at the same sky position (0 outside the layer)."""
    with fits.open(layer_path) as layer:
        for ext in ("SCI", "WHT"):
            data = cutout[ext].data
            cut_wcs, layer_wcs = WCS(cutout[ext].header), WCS(layer[ext].header)
            ys, xs = np.mgrid[: data.shape[0], : data.shape[1]]
            lx, ly = layer_wcs.world_to_pixel(cut_wcs.pixel_to_world(xs, ys))
            lx, ly = np.round(lx).astype(int), np.round(ly).astype(int)
            # Same grid: the mapping is a whole-pixel shift.
            assert np.allclose(lx - xs, lx[0, 0], atol=1e-6) and np.allclose(ly - ys, ly[0, 0], atol=1e-6)
            inside = (lx >= 0) & (ly >= 0) & (lx < layer[ext].data.shape[1]) & (ly < layer[ext].data.shape[0])
            np.testing.assert_array_equal(data[inside], layer[ext].data[ly[inside], lx[inside]])
            assert np.all(data[~inside] == 0)
            return inside


def test_cutout_structure_and_headers(lmc_archive):
    cutout = cut_layer(_layer(lmc_archive), LMC, 20)
    assert [h.name for h in cutout] == ["PRIMARY", "SCI", "WHT"]
    primary = cutout[0].header
    assert primary["FILENAME"] == "hst_cutout_skycell-p0081x14y15-ra84d9208-decs69d1467_acs_wfc_f814w.fits"
    assert primary["ORIG_FLE"] == F814W
    assert (primary["RA_OBJ"], primary["DEC_OBJ"]) == pytest.approx((84.9208, -69.1467))
    assert (primary["INSTRUME"], primary["FILTER"], primary["SCELLID"]) == ("ACS", "F814W", "p0081x14y15")
    for ext in ("SCI", "WHT"):
        assert cutout[ext].data.dtype == np.dtype(">f4") and cutout[ext].data.shape == (500, 500)
        assert cutout[ext].header["ORIG_FLE"] == F814W and "CD1_1" in cutout[ext].header
    # The cutout centre is the target, to well under a pixel.
    centre = WCS(cutout["SCI"].header).pixel_to_world(249.5, 249.5)
    assert centre.separation(LMC).arcsec < 0.04


@pytest.mark.parametrize("skycell", ["p0081x14y14", "p0081x14y15", "p0081x15y14", "p0081x15y15"])
def test_cutout_pixels_are_the_layer_pixels(lmc_archive, skycell):
    # The target lies in the four skycells' overlap strips, near each trimmed array's edge:
    # part of each box falls off the array and is padded with 0.
    path = _layer(lmc_archive, f"hst_skycell-{skycell}_acs_wfc_f814w_all_drc.fits")
    inside = _check_pixel_exact(cut_layer(path, LMC, 20), path)
    assert 0.25 < inside.mean() <= 1


@pytest.mark.parametrize(
    "size, shape",
    [((10, 20), (250, 500)), ([100, 250] * u.pix, (100, 250)), (0.25 * u.arcmin, (375, 375)), (6, (50, 50))],
)
def test_sizes_are_ny_nx_never_transposed(lmc_archive, size, shape):
    name = "hst_skycell-p0081x14y15_wfc3_ir_f160w_coarse-all_drz.fits" if shape == (50, 50) else F814W
    cutout = cut_layer(_layer(lmc_archive, name), LMC, size)
    assert cutout["SCI"].data.shape == cutout["WHT"].data.shape == shape


@pytest.mark.parametrize("field", ["twocells", "polar", "ra0"])
def test_cutout_pixels_are_exact_in_every_field(archives, field):
    archive = archives[field]
    coord = SkyCoord(archive.field.ra, archive.field.dec, unit="deg")  # ra0: the box crosses RA 0
    for rec in archive.layers:
        cutout = cut_layer(archive.directory / rec.filename, coord, 12)
        assert _check_pixel_exact(cutout, archive.directory / rec.filename).mean() > 0.25


def test_a_box_partly_off_the_layer_keeps_its_size(lmc_archive):
    path = _layer(lmc_archive)
    with fits.open(path) as layer:
        corner = WCS(layer["SCI"].header).pixel_to_world(10, 10)  # near the array's corner
    cutout = cut_layer(path, corner, 8)
    assert cutout["SCI"].data.shape == (200, 200)
    inside = _check_pixel_exact(cutout, path)
    assert 0.2 < inside.mean() < 0.35  # about a quarter of the box lies on the layer


def test_coarse_and_string_paths(lmc_archive):
    path = _layer(lmc_archive, "hst_skycell-p0081x15y15_wfc3_ir_f160w_coarse-all_drz.fits")
    cutout = cut_layer(str(path), "84.9208 -69.1467", 20)
    assert cutout["SCI"].data.shape == (167, 167)
    assert cutout[0].header["FILENAME"].endswith("_wfc3_ir_f160w_coarse.fits")
    _check_pixel_exact(cutout, path)


def test_a_box_wholly_off_the_layer(lmc_archive):
    with pytest.raises(OutsideFootprintError, match=r"lies wholly outside hst_skycell-p0081x14y15"):
        cut_layer(_layer(lmc_archive), (84.9208, -69.0), 10)


def test_non_mvm_files_are_refused(tmp_path, lmc_archive):
    plain = tmp_path / "image.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((10, 10), np.float32))]).writeto(plain)
    with pytest.raises(NotMVMFileError, match=r"image.fits is not an MVM layer"):
        cut_layer(plain, LMC, 10)
    text = tmp_path / "notes.fits"
    text.write_text("hello")
    with pytest.raises(
        NotMVMFileError, match=r"notes.fits is not a readable, complete FITS file \(not a FITS file\)"
    ):
        cut_layer(text, LMC, 10)
    no_wht = tmp_path / F814W
    with fits.open(_layer(lmc_archive)) as layer:
        fits.HDUList([layer[0].copy(), layer["SCI"].copy()]).writeto(no_wht)
    with pytest.raises(NotMVMFileError, match=r"has no WHT extension"):
        cut_layer(no_wht, LMC, 10)
    with pytest.raises(NotMVMFileError, match=r"does not exist"):
        cut_layer(tmp_path / "missing.fits", LMC, 10)


def test_truncated_layers_are_refused(tmp_path, lmc_archive):
    data = _layer(lmc_archive).read_bytes()
    truncated = tmp_path / F814W
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        NotMVMFileError, match=rf"{F814W} is not .* \(truncated: {len(data) // 2} bytes, but its HDU"
    ):
        cut_layer(truncated, LMC, 10)
    truncated.write_bytes(data[:5000])  # inside the primary header
    with pytest.raises(
        NotMVMFileError, match=r"the header at byte 0 is cut short: the file ends before its END"
    ):
        cut_layer(truncated, LMC, 10)


def test_cutout_headers_follow_their_data(tmp_path, lmc_archive):
    # A layer stored as float64: the cutout is float32 and its headers say so before any write,
    # and it writes the same bytes as HDUs built by astropy's constructors from the same parts.
    layer = tmp_path / F814W
    with fits.open(_layer(lmc_archive)) as original:
        for ext in ("SCI", "WHT"):
            original[ext].data = original[ext].data.astype(np.float64)
        original.writeto(layer)
    cutout = cut_layer(layer, LMC, (20, 12))
    for ext in ("SCI", "WHT"):
        header = cutout[ext].header
        assert (header["BITPIX"], header["NAXIS1"], header["NAXIS2"]) == (-32, 300, 500)
        assert cutout[ext].data.dtype == np.dtype(">f4")
    rebuilt = fits.HDUList(
        [fits.PrimaryHDU(header=cutout[0].header)]
        + [fits.ImageHDU(cutout[ext].data, cutout[ext].header) for ext in ("SCI", "WHT")]
    )
    ours, theirs = tmp_path / "ours.fits", tmp_path / "theirs.fits"
    cutout.writeto(ours)
    rebuilt.writeto(theirs)
    assert ours.read_bytes() == theirs.read_bytes()


def test_a_layer_without_a_celestial_wcs_is_refused(tmp_path, lmc_archive):
    cut_layer(_layer(lmc_archive), LMC, 10)  # the layer's own WCS, now known to this process
    layer = tmp_path / F814W
    with fits.open(_layer(lmc_archive)) as original:
        for key in ("CTYPE1", "CTYPE2"):
            del original["SCI"].header[key]
        original.writeto(layer)
    with pytest.raises(NotMVMFileError, match=rf"{F814W}: the SCI extension has no celestial WCS"):
        cut_layer(layer, LMC, 10)


@pytest.mark.parametrize("field", ["lmc", "polar", "ra0"])
def test_wcs_read_by_wcslib_alone_is_astropys(archives, field):
    # Undistorted layers (all MVM layers) are read by wcslib alone; their positions are exactly
    # those of astropy's WCS(header), over the whole skycell and beyond.
    archive = archives[field]
    for rec in archive.layers:
        with fits.open(archive.directory / rec.filename) as hdul:
            text = hdul["SCI"].header.tostring()
        assert plain_wcs(text) is not None
        ours, astropys = celestial_wcs(text), WCS(text).celestial
        pixels = np.mgrid[-2000:25000:1500, -2000:25000:1500].reshape(2, -1).T.astype(float)
        world = astropys.wcs_pix2world(pixels, 0)
        assert np.array_equal(ours.wcs_pix2world(pixels, 0), world)
        assert np.array_equal(ours.all_world2pix(world, 0), astropys.all_world2pix(world, 0))


def test_distorted_wcs_is_read_by_astropy(lmc_archive):
    # SIP terms are astropy's to apply: such a header goes the whole way through WCS(header).
    with fits.open(lmc_archive.directory / lmc_archive.layers[0].filename) as hdul:
        header = hdul["SCI"].header.copy()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    header["A_ORDER"] = header["B_ORDER"] = 2
    header["A_2_0"], header["B_0_2"] = 1e-6, -2e-6
    text = header.tostring()
    assert plain_wcs(text) is None
    ours = celestial_wcs(text)
    assert ours.sip is not None and ours.sip.a_order == 2
    pixel = [[5000.0, 7000.0]]
    assert np.array_equal(ours.all_pix2world(pixel, 0), WCS(text).all_pix2world(pixel, 0))
    assert not np.allclose(ours.all_pix2world(pixel, 0), ours.wcs_pix2world(pixel, 0), rtol=0, atol=1e-6)


def test_cutout_headers_are_edited_as_astropy_sets_keywords():
    # Cards are edited as text, their images remembered (SCI and WHT get the same new cards):
    # the result is what header[keyword] = value gives, True and 1 told apart.
    header = fits.Header()
    header["NAXIS1"] = (10284, "length of data axis 1")
    header["FLAG"] = (False, "a flag")
    header["HISTORY"] = "drizzled"
    header.append(fits.Card())  # a trailing blank card, which a new card takes the place of
    for settings in (
        [("NAXIS1", 500), ("FLAG", True), ("NEW", 1.5, "a new card")],
        [("NAXIS1", 500), ("FLAG", 1), ("NEW", 1, "a new card")],
    ):
        expected = header.copy()
        for keyword, value, *comment in settings:
            expected[keyword] = (value, *comment)
        edited = edited_header(header, settings)
        assert edited.tostring() == expected.tostring()
        assert [type(edited[keyword]) for keyword, *_ in settings] == [type(v) for _, v, *_ in settings]
    assert edited.comments["NAXIS1"] == "length of data axis 1" and len(edited) == len(header)


def test_cutout_headers_hold_a_layers_cards_fixed_as_astropy_writes_them_verified_once(tmp_path):
    # A remote layer's header text is verified once (astropy re-verified every card of every
    # cutout as it wrote it): cards astropy fixes when writing come out fixed all the same.
    cards = [f"{keyword:8}= {value:>20}" for keyword, value in (("SIMPLE", "T"), ("BITPIX", 8), ("NAXIS", 0))]
    cards += ["EXPTIME =             1.5e-193", "date-obs= '2020-01-01'", "END"]
    text = "".join(card.ljust(80) for card in cards).ljust(2880).encode("ascii")
    expected = fits.Header.fromstring(text.decode("ascii"))
    expected["NEW"] = 1
    with warnings.catch_warnings(record=True) as astropys:
        warnings.simplefilter("always")
        expected_text = expected.tostring()
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        edited = edited_header(HDUInfo.read(text, 0, len(text)), [("NEW", 1)])
    assert edited.tostring() == expected_text
    assert [str(w.message) for w in ours] == [str(w.message) for w in astropys]
    assert "EXPTIME =             1.5E-193" in expected_text and "DATE-OBS= '2020-01-01'" in expected_text
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same layer's next cutout: its cards verified already
        again = edited_header(HDUInfo.read(text, 0, len(text)), [("NEW", 2)])
        hdu_with_header(fits.PrimaryHDU, again).writeto(tmp_path / "again.fits", output_verify="ignore")
    assert fits.getheader(tmp_path / "again.fits")["DATE-OBS"] == "2020-01-01"


TWO = SkyCoord(182.2, 26.0, unit="deg")


def _astropy_window(path, cutout, ext):
    """What astropy's own read of the layer holds where ``cutout`` was cut (the box lies inside)."""
    dx, dy = (-int(cutout[ext].header[key]) for key in ("LTV1", "LTV2"))
    ny, nx = cutout[ext].data.shape
    with fits.open(path, memmap=False) as hdul:
        return hdul[ext].data[dy : dy + ny, dx : dx + nx].astype(np.float32)


@pytest.mark.parametrize("route", ["local", "ranged", "one-range", "download"])
def test_scaled_integer_layers_give_their_physical_values(scaled_archive, route, tmp_path, monkeypatch):
    from glue_mvmcut.core.endpoints import using_server
    from glue_mvmcut.core.pipeline import cutout_mosaic
    from glue_mvmcut.testing.server import MastServer

    monkeypatch.setenv("MVMCUT_CACHE_DIR", str(tmp_path / "cache"))
    names = sorted(p.name for p in scaled_archive.glob("*_f814w_*.fits"))
    if route == "local":
        cutouts = [cut_layer(scaled_archive / name, TWO, 3) for name in names]
    else:
        with MastServer([scaled_archive]) as server, using_server(server.url):
            server.faults.ranges = "one-range" if route == "one-range" else "multipart"
            fetch = "download" if route == "download" else "ranged"
            cutouts = cutout_mosaic(TWO, 3, filters=["f814w"], fetch=fetch).cutouts
    assert len(cutouts) == len(names) == 2  # the box is in both projection cells' skycells
    blanked = 0
    for cutout in cutouts:
        layer = scaled_archive / cutout[0].header["ORIG_FLE"]
        for ext in ("SCI", "WHT"):
            expected = _astropy_window(layer, cutout, ext)
            assert cutout[ext].data.dtype == np.dtype(">f4")
            np.testing.assert_array_equal(cutout[ext].data, expected)
            assert not any(key in cutout[ext].header for key in ("BSCALE", "BZERO", "BLANK"))
        assert set(np.unique(cutout["WHT"].data)) <= {0.0, 1000.0, 1500.0}  # exact in steps of 0.25
        blanked += int(np.isnan(cutout["SCI"].data).sum())
        assert np.nanmax(np.abs(cutout["SCI"].data)) < 10  # the stored integers reach ~30000
    assert blanked == 12 * len(cutouts)  # the blanked patch: NaN, as astropy reads BLANK


def test_blank_pixels_of_a_scaled_layer_take_no_part_in_its_mosaic(scaled_archive):
    """A cutout with BLANK (NaN) pixels combined with one on its grid that has data everywhere
    (SCI 2, WHT 500): the blanked pixels take the other's values, the rest the weighted mean."""
    from glue_mvmcut.core.combine import combine_cutouts

    blanked = cut_layer(next(scaled_archive.glob("*p1889*_f814w_*.fits")), TWO, 3)
    other = fits.HDUList([hdu.copy() for hdu in blanked])
    other["SCI"].data[:], other["WHT"].data[:] = 2.0, 500.0
    (mosaic,) = combine_cutouts([blanked, other]).values()
    sci, wht = mosaic["SCI"].data, mosaic["WHT"].data
    blank = np.isnan(blanked["SCI"].data)
    assert blank.sum() == 12 and not np.isnan(sci).any()
    assert np.all(wht[blank] == 500) and np.all(sci[blank] == 2)
    w = blanked["WHT"].data[~blank].astype(float)
    expected = (w * blanked["SCI"].data[~blank] + 500 * 2.0) / (w + 500)
    np.testing.assert_allclose(sci[~blank], expected, rtol=1e-6)


def _with_card(data: bytes, after: int, keyword: str, value: str) -> bytes:
    """``data`` with the first ``keyword`` card after byte ``after`` set to ``value``."""
    at = data.index(f"{keyword:8}=".encode(), after)
    return data[:at] + f"{keyword:8}= {value:>20}".ljust(80).encode() + data[at + 80 :]


@pytest.mark.parametrize(
    ("keyword", "value", "problem"),
    [
        ("NAXIS1", "-720", "NAXIS1 = -720, not a length"),  # the next HDU would begin before this one
        ("NAXIS", "-1", "NAXIS = -1, not a number of axes"),
        ("BITPIX", "12", "BITPIX = 12, not one of"),
        ("GCOUNT", "0", "GCOUNT = 0, not a count"),
    ],
)
def test_impossible_headers_are_refused_before_astropy_reads_them(
    lmc_archive, tmp_path, keyword, value, problem
):
    data = _layer(lmc_archive).read_bytes()
    sci = data.index(b"EXTNAME = 'SCI")
    sci = sci - sci % 2880  # the SCI header's first block (it is shorter than one)
    while not data[sci:].startswith(b"XTENSION"):
        sci -= 2880
    bad = tmp_path / F814W
    bad.write_bytes(_with_card(data, sci, keyword, value))
    with pytest.raises(NotMVMFileError, match=rf"{F814W}: the header at byte {sci} has {problem}"):
        cut_layer(bad, LMC, 10)


def test_only_regular_files_are_opened_as_layers(tmp_path):
    import os

    os.mkfifo(tmp_path / F814W)  # a reader would block on it for ever
    with pytest.raises(NotMVMFileError, match=rf"{F814W} is not a regular file: refused"):
        cut_layer(tmp_path / F814W, LMC, 10)


def test_a_local_header_without_end_is_read_up_to_10_mb(tmp_path):
    endless = tmp_path / F814W
    endless.write_bytes(b"SIMPLE  =                    T".ljust(80) + b"COMMENT".ljust(80) * 200_000)
    with pytest.raises(NotMVMFileError, match=r"the header at byte 0 has no END card in its first 10 MB"):
        cut_layer(endless, LMC, 10)
