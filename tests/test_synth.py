"""The synthetic archive: real skycell geometry, trimmed layers, analytic pixels."""

import hashlib
import json

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from glue_mvmcut.core.skycells import SkyCell
from glue_mvmcut.testing import synth

LMC_SKYCELLS = ["p0081x14y14", "p0081x14y15", "p0081x15y14", "p0081x15y15"]
LMC_BANDS = [
    "acs_wfc_f658n_all_drc",
    "acs_wfc_f814w_all-jbp505jg_drc",
    "acs_wfc_f814w_all_drc",
    "wfc3_ir_f160w_all_drz",
    "wfc3_ir_f160w_coarse-all_drz",
]


def test_lmc_archive_has_every_layer_of_the_four_skycells(lmc_archive):
    expected = sorted(f"hst_skycell-{cell}_{band}.fits" for cell in LMC_SKYCELLS for band in LMC_BANDS)
    assert sorted(rec.filename for rec in lmc_archive.layers) == expected
    on_disk = sorted(p.name for p in lmc_archive.directory.glob("*.fits"))
    assert on_disk == expected
    manifest = json.loads((lmc_archive.directory / "manifest.json").read_text())
    assert manifest["field"]["name"] == "lmc" and len(manifest["layers"]) == 20


def test_layer_structure_and_headers(lmc_archive):
    rec = lmc_archive.layer("hst_skycell-p0081x14y15_wfc3_ir_f160w_coarse-all_drz.fits")
    with fits.open(lmc_archive.directory / rec.filename) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SCI", "WHT", "CTX", "HDRTAB"]
        primary = hdul[0].header
        assert (primary["INSTRUME"], primary["DETECTOR"], primary["FILTER"]) == ("WFC3", "IR", "F160W")
        assert primary["SCELLID"] == "p0081x14y15"
        for key in ("NPIXFRAC", "MEANEXPT", "MEDEXPT", "MEANNEXP", "MEDNEXP", "MEANWHT", "MEDWHT"):
            assert key in primary
        assert 0 < primary["NPIXFRAC"] < 1
        assert hdul["SCI"].data.dtype == np.dtype(">f4") and hdul["WHT"].data.dtype == np.dtype(">f4")
        assert hdul["SCI"].header["BUNIT"] == "ELECTRONS/S"
        assert hdul["SCI"].data.shape == rec.shape
        # Trimmed like a real layer: CRPIX of the full skycell minus the subarray origin.
        full = SkyCell.from_name("p0081x14y15").wcs("coarse")
        wcs = WCS(hdul["SCI"].header)
        np.testing.assert_allclose(wcs.wcs.crpix, full.wcs.crpix - np.array(rec.origin), atol=1e-9)
        np.testing.assert_allclose(wcs.wcs.crval, full.wcs.crval, atol=1e-12)
        np.testing.assert_allclose(wcs.wcs.cd, full.wcs.cd, rtol=1e-12)
        assert "CD1_1" in hdul["SCI"].header and "PC1_1" not in hdul["SCI"].header
    assert rec.size == (lmc_archive.directory / rec.filename).stat().st_size


def test_every_layer_of_a_skycell_shares_its_subarray(lmc_archive):
    for cell in LMC_SKYCELLS:
        fine = {
            rec.origin + rec.shape
            for rec in lmc_archive.layers
            if rec.skycell == cell and rec.scale == "fine"
        }
        assert len(fine) == 1
        ((x0, y0, ny, nx),) = fine
        coarse = next(rec for rec in lmc_archive.layers if rec.skycell == cell and rec.scale == "coarse")
        assert coarse.origin == (x0 // 3, y0 // 3)
        assert coarse.shape == (-(-(y0 + ny) // 3) - y0 // 3, -(-(x0 + nx) // 3) - x0 // 3)


@pytest.mark.parametrize(
    "filename",
    [
        "hst_skycell-p0081x15y15_acs_wfc_f814w_all_drc.fits",
        "hst_skycell-p0081x15y14_acs_wfc_f658n_all_drc.fits",
        "hst_skycell-p0081x14y14_wfc3_ir_f160w_coarse-all_drz.fits",
    ],
)
def test_pixels_equal_the_analytic_truth(lmc_archive, filename):
    rec = lmc_archive.layer(filename)
    with fits.open(lmc_archive.directory / filename) as hdul:
        sci, wht = hdul["SCI"].data, hdul["WHT"].data
        wcs = WCS(hdul["SCI"].header)
    rng = np.random.default_rng(7)
    ys, xs = rng.integers(0, rec.shape[0], 400), rng.integers(0, rec.shape[1], 400)
    ra, dec = wcs.pixel_to_world_values(xs, ys)
    truth_sci, truth_wht = lmc_archive.truth(rec, ra, dec)
    # Equal to float32 rounding: numpy's SIMD sin/cos may differ by an ulp between array layouts.
    np.testing.assert_allclose(sci[ys, xs], truth_sci, rtol=2.5e-7, atol=0)
    np.testing.assert_array_equal(wht[ys, xs], truth_wht)
    # Unobserved pixels are 0.0 in both arrays, never NaN.
    assert np.all(sci[wht == 0] == 0) and not np.isnan(sci).any()
    assert np.count_nonzero(wht) > 0.3 * wht.size


def test_sources_make_structure_and_the_gap_is_empty_in_one_skycell_only(lmc_archive):
    f = lmc_archive.field
    ra = f.ra + np.array([-1.5, 10.0]) / 3600 / np.cos(np.radians(f.dec))  # 1.5" west: in the gap
    dec = np.array([f.dec, f.dec])
    holes = lmc_archive.layer("hst_skycell-p0081x15y14_acs_wfc_f814w_all_drc.fits")
    whole = lmc_archive.layer("hst_skycell-p0081x14y14_acs_wfc_f814w_all_drc.fits")
    assert list(lmc_archive.observed(holes, ra, dec)) == [False, True]
    assert list(lmc_archive.observed(whole, ra, dec)) == [True, True]
    values = synth.sky(
        f,
        *np.meshgrid(
            np.linspace(f.ra - 0.005, f.ra + 0.005, 200), np.linspace(f.dec - 0.005, f.dec + 0.005, 200)
        ),
    )
    assert values.max() > 3 and values.min() > 0.1  # stars well above a positive background


def test_archives_are_deterministic(tmp_path):
    digests = []
    for name in ("a", "b"):
        archive = synth.build_archive(tmp_path / name, "tiny")
        (rec,) = archive.layers
        digests.append(hashlib.sha256((archive.directory / rec.filename).read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_layer_headers_are_as_long_as_real_mvm_ones(lmc_archive):
    # A real layer: ~870 primary cards (22 drizzle keywords and 4 lines of history for each
    # input), 106 in SCI, 56 in WHT. Layers differ in their inputs (27 to 32; here 27 to 30).
    lengths = {}
    for rec in lmc_archive.layers:
        with fits.open(lmc_archive.directory / rec.filename) as hdul:
            lengths[rec.filename] = [len(hdu.header) for hdu in hdul[:4]]
    primaries = sorted({primary for primary, *_ in lengths.values()})
    assert primaries == [93, 769, 795, 821, 847]  # 93: exposure-level layers, one input
    assert {tuple(rest) for _, *rest in lengths.values()} == {(106, 56, 30)}
    name = "hst_skycell-p0081x14y15_wfc3_ir_f160w_coarse-all_drz.fits"
    with fits.open(lmc_archive.directory / name) as hdul:
        primary, inputs = hdul[0].header, len(hdul["HDRTAB"].data)
        assert lengths[name][0] == 4 + 63 + 26 * inputs and primary["NDRIZIM"] == inputs
        assert primary[f"D{inputs:03d}DATA"] == f"ib0081{inputs:02d}q_flc.fits[sci,1]"
        assert primary["D001SCAL"] == 0.12 and primary["D001OUDA"] == name
        # CTX: the bits of every input where WHT has data.
        every = np.int32(np.uint32(2**inputs - 1).view(np.int32))
        expected = np.where(hdul["WHT"].data > 0, every, 0)
        assert hdul["CTX"].data.dtype == np.dtype(">i4")
        np.testing.assert_array_equal(hdul["CTX"].data, expected)
        assert list(hdul["HDRTAB"].data["ROOTNAME"][:2]) == ["ib008101q", "ib008102q"]


def test_an_archive_of_another_format_is_written_anew(tmp_path):
    archive = synth.build_archive(tmp_path, "tiny")
    (rec,) = archive.layers
    layer, manifest = tmp_path / rec.filename, tmp_path / "manifest.json"
    written = layer.read_bytes()
    layer.write_bytes(b"an older layer")
    synth.build_archive(tmp_path, "tiny")  # the same format: reused as it is
    assert layer.read_bytes() == b"an older layer"
    manifest.write_text(manifest.read_text().replace(f'"format": {synth.FORMAT}', '"format": 1'))
    synth.build_archive(tmp_path, "tiny")
    assert layer.read_bytes() == written and json.loads(manifest.read_text())["format"] == synth.FORMAT


def test_command_line_writes_an_archive(tmp_path, capsys):
    synth.main([str(tmp_path), "--field", "tiny"])
    assert capsys.readouterr().out.startswith("1 layers, 0.6 MB in ")
    assert (tmp_path / "manifest.json").exists()
    assert not list(tmp_path.glob("*.part"))
    assert synth.Archive.load(tmp_path).field == synth.FIELDS["tiny"]
