"""Mosaics: WHT-weighted, exact where the grids coincide, resampled (without zero leakage) elsewhere."""

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS

from glue_mvmcut import NotMVMFileError
from glue_mvmcut.core.bands import UNKNOWN_BAND, band_of, filter_name
from glue_mvmcut.core.combine import combine_band, combine_cutouts
from glue_mvmcut.core.cutout import cut_layer
from glue_mvmcut.core.names import Band, CombinedName
from glue_mvmcut.testing import synth

LMC = SkyCoord(84.9208, -69.1467, unit="deg")
F814W = Band(instrument="acs", detector="wfc", filter="f814w")
F160W_COARSE = Band(instrument="wfc3", detector="ir", filter="f160w", scale="coarse")


def _records(archive, band):
    return sorted(
        (
            r
            for r in archive.layers
            if (r.instrument, r.detector, r.filter, r.scale, r.exposure)
            == (band.instrument, band.detector, band.filter, band.scale, band.exposure)
        ),
        key=lambda r: r.filename,
    )


def _cutouts(archive, band, coord, size):
    records = _records(archive, band)
    return [cut_layer(archive.directory / r.filename, coord, size) for r in records], records


def _world(hdul):
    wcs = WCS(hdul["SCI"].header)
    ys, xs = np.mgrid[: hdul["SCI"].data.shape[0], : hdul["SCI"].data.shape[1]]
    return wcs, xs, ys, *wcs.pixel_to_world_values(xs, ys)


def _inside(rec, ra, dec):
    px, py = rec.wcs().world_to_pixel_values(ra, dec)
    return (px > -0.5) & (py > -0.5) & (px < rec.shape[1] - 0.5) & (py < rec.shape[0] - 0.5)


def test_a_forked_child_combines_with_threads_of_its_own(lmc_archive, in_forked_child):
    cutouts, _ = _cutouts(lmc_archive, F814W, LMC, 20)
    mosaic = combine_band(cutouts)  # the parent's combine threads exist
    in_child = in_forked_child(lambda: combine_band(cutouts)["SCI"].data)
    np.testing.assert_array_equal(in_child, mosaic["SCI"].data)


def test_fine_cutouts_of_one_projection_cell_are_pasted_exactly(lmc_archive):
    cutouts, _ = _cutouts(lmc_archive, F814W, LMC, 20)
    mosaic = combine_band(cutouts)
    assert mosaic[0].header["COMBMETH"] == "exact paste"
    # The same arithmetic done here, in float64, from the cutout pixels: bit-identical float32.
    sci = np.array([c["SCI"].data for c in cutouts], dtype=np.float64)
    wht = np.array([c["WHT"].data for c in cutouts], dtype=np.float64)
    total = wht.sum(axis=0)
    with np.errstate(invalid="ignore"):
        expected = np.where(total > 0, (wht * sci).sum(axis=0) / total, 0).astype(np.float32)
    np.testing.assert_array_equal(mosaic["SCI"].data, expected)
    np.testing.assert_array_equal(mosaic["WHT"].data, total.astype(np.float32))
    assert mosaic["SCI"].data.dtype == np.float32 and mosaic["WHT"].data.dtype == np.float32


def _weighted_truth(archive, records, mosaic):
    """The WHT-weighted analytic sky at every mosaic pixel, and the summed weight there."""
    _, _, _, ra, dec = _world(mosaic)
    num = np.zeros(ra.shape)
    den = np.zeros(ra.shape)
    for rec in records:
        sci, wht = archive.truth(rec, ra, dec)
        wht = np.where(_inside(rec, ra, dec), wht, 0)
        num += wht * sci
        den += wht
    with np.errstate(invalid="ignore"):
        return np.where(den > 0, num / den, 0), den


def test_fine_mosaic_equals_the_weighted_analytic_truth(lmc_archive):
    cutouts, records = _cutouts(lmc_archive, F814W, LMC, 20)
    mosaic = combine_band(cutouts)
    truth, den = _weighted_truth(lmc_archive, records, mosaic)
    np.testing.assert_allclose(mosaic["SCI"].data, truth, rtol=5e-7, atol=1e-7)
    np.testing.assert_array_equal(mosaic["WHT"].data, den.astype(np.float32))
    assert (den > 0).mean() > 0.95


def test_zeros_in_a_chip_gap_are_never_averaged_in(lmc_archive):
    cutouts, records = _cutouts(lmc_archive, F814W, LMC, 20)
    mosaic = combine_band(cutouts)
    gap_index = [r.skycell for r in records].index("p0081x15y14")
    gap = cutouts[gap_index]["WHT"].data == 0
    others = np.array([c["WHT"].data > 0 for i, c in enumerate(cutouts) if i != gap_index]).all(axis=0)
    pixels = gap & others & (cutouts[gap_index]["SCI"].data == 0)
    assert pixels.sum() > 1000  # the gap strip crosses the box where the other three have data
    kept = [c for i, c in enumerate(cutouts) if i != gap_index]
    weights = np.array([c["WHT"].data[pixels] for c in kept], dtype=np.float64)
    values = np.array([c["SCI"].data[pixels] for c in kept], dtype=np.float64)
    np.testing.assert_array_equal(
        mosaic["SCI"].data[pixels], ((weights * values).sum(0) / weights.sum(0)).astype(np.float32)
    )
    # A plain mean over the four (the seed's CutoutsCombiner) would be 25% low there.
    assert np.all(values.mean(0) * 0.75 < mosaic["SCI"].data[pixels])


def test_inputs_shifted_clipped_and_with_bad_weights_are_pasted_exactly(lmc_archive):
    # Cutouts of one projection cell at other centres and sizes: whole-pixel offsets, partly off
    # the output. Negative and NaN weights count as none; SCI under them (NaN here) is ignored.
    records = _records(lmc_archive, F814W)
    centres = [LMC, LMC.spherical_offsets_by(6 * u.arcsec, 0 * u.arcsec)]
    centres += [LMC.spherical_offsets_by(-5 * u.arcsec, 7 * u.arcsec)] * 2
    cutouts = [
        cut_layer(lmc_archive.directory / r.filename, c, s)
        for r, c, s in zip(records, centres, (20, 16, 12, 24), strict=True)
    ]
    bad = cutouts[1]
    bad["WHT"].data[50:60] = -3.0
    bad["WHT"].data[60:70] = np.nan
    bad["SCI"].data[50:70] = np.nan
    mosaic = combine_band(cutouts)
    assert mosaic[0].header["COMBMETH"] == "exact paste"
    out = WCS(mosaic["SCI"].header)
    ny, nx = mosaic["SCI"].data.shape
    total, weights, inputs = np.zeros((ny, nx)), np.zeros((ny, nx)), np.zeros((ny, nx), int)
    for cutout in cutouts:  # each input pixel placed by its own WCS, one at a time
        wcs = WCS(cutout["SCI"].header)
        dx, dy = np.round(np.asarray(out.wcs.crpix) - np.asarray(wcs.wcs.crpix)).astype(int)
        assert (dx, dy) != (0, 0) or cutout is cutouts[0]
        for y, x in zip(*np.nonzero(cutout["WHT"].data > 0), strict=True):
            if 0 <= y + dy < ny and 0 <= x + dx < nx:
                w = float(cutout["WHT"].data[y, x])
                total[y + dy, x + dx] += w * float(cutout["SCI"].data[y, x])
                weights[y + dy, x + dx] += w
                inputs[y + dy, x + dx] += 1
    with np.errstate(invalid="ignore"):
        expected = np.where(weights > 0, total / weights, 0).astype(np.float32)
    np.testing.assert_array_equal(mosaic["SCI"].data, expected)
    np.testing.assert_array_equal(mosaic["WHT"].data, weights.astype(np.float32))
    assert not np.isnan(mosaic["SCI"].data).any()
    # Both ways through: pixels where one input has data, and where several do.
    assert (inputs == 1).sum() > 1000 and (inputs >= 2).sum() > 1000


def _in_cutout(cutout, ra, dec):
    px, py = WCS(cutout["SCI"].header).world_to_pixel_values(ra, dec)
    ny, nx = cutout["SCI"].data.shape
    return (px > -0.5) & (py > -0.5) & (px < nx - 0.5) & (py < ny - 0.5)


def _resampled_truth(archive, records, cutouts, mosaic):
    """Expected SCI and WHT where every input either fully has data or fully has none within
    1.5 output pixels, away from sources (interpolation is only accurate on the smooth sky).

    An input has data where its layer observed the sky, inside the layer's array and inside its
    cutout's box (cutouts of other projection cells are rotated against the mosaic grid).
    """
    wcs, xs, ys, ra, dec = _world(mosaic)
    f = archive.field
    num, den = np.zeros(ra.shape), np.zeros(ra.shape)
    usable = np.ones(ra.shape, bool)
    around = [(0, 0), (1.5, 0), (-1.5, 0), (0, 1.5), (0, -1.5), (1.5, 1.5), (-1.5, -1.5)]
    for rec, cutout in zip(records, cutouts, strict=True):
        states = []
        for dx, dy in around:
            r, d = wcs.pixel_to_world_values(xs + dx, ys + dy)
            states.append(archive.observed(rec, r, d) & _inside(rec, r, d) & _in_cutout(cutout, r, d))
        states = np.array(states)
        full, none = states.all(0), ~states.any(0)
        usable &= full | none
        num += np.where(full, rec.weight * (rec.gain * synth.sky(f, ra, dec) + rec.offset), 0)
        den += np.where(full, rec.weight, 0)
    east, north = synth._offsets(f, ra, dec)
    for source in synth._sources(f):
        usable &= np.hypot(east - source.east, north - source.north) > source.radius + 0.4
    with np.errstate(invalid="ignore"):
        return np.where(den > 0, num / den, 0), den, usable


@pytest.mark.parametrize("resample", ["exact", "interp"])
@pytest.mark.parametrize(
    "field, band, inputs",
    [
        ("lmc", F160W_COARSE, 4),  # coarse neighbours: 1/3 px apart
        ("twocells", F814W, 2),  # p1889 and p1890 tangent points
        ("polar", F814W, 3),  # p2635, p2636 and the polar cap
        ("polar", F160W_COARSE, 3),
    ],
)
def test_resampled_mosaics_match_the_analytic_sky(archives, field, band, inputs, resample):
    archive = archives[field]
    coord = SkyCoord(archive.field.ra, archive.field.dec, unit="deg")
    cutouts, records = _cutouts(archive, band, coord, 16 if band.scale == "coarse" else 8)
    assert len(cutouts) == inputs
    mosaic = combine_band(cutouts, resample=resample)
    # The first cutout is on the output grid (pasted), the others are resampled.
    assert mosaic[0].header["COMBMETH"] == f"paste + reproject_{resample}"
    truth, weight, usable = _resampled_truth(archive, records, cutouts, mosaic)
    covered = usable & (weight > 0)
    assert covered.sum() > 1500
    # Tolerance 5e-4 on a sky of ~0.2-0.5 (x gain): interpolation or pixel-area averaging of the
    # smooth background errs below 1e-4; a wrong weight would be off by up to the skycell
    # offsets (0.05).
    np.testing.assert_allclose(mosaic["SCI"].data[covered], truth[covered], rtol=0, atol=5e-4)
    np.testing.assert_allclose(mosaic["WHT"].data[covered], weight[covered], rtol=1e-5)
    empty = usable & (weight == 0)
    assert np.all(mosaic["SCI"].data[empty] == 0) and np.all(mosaic["WHT"].data[empty] == 0)
    # Several inputs really overlap somewhere, with different weights.
    assert len(np.unique(weight[covered])) > 1


@pytest.mark.parametrize("field", ["lmc", "twocells", "polar", "ra0"])
def test_mosaic_wcs_is_centred_on_the_target(archives, field):
    archive = archives[field]
    coord = SkyCoord(archive.field.ra, archive.field.dec, unit="deg")
    for band in (F814W, F160W_COARSE):
        mosaic = combine_band(_cutouts(archive, band, coord, 20)[0])
        ny, nx = mosaic["SCI"].data.shape
        centre = WCS(mosaic["SCI"].header).pixel_to_world((nx - 1) / 2, (ny - 1) / 2)
        scale = mosaic[0].header["D001SCAL"]
        assert centre.separation(coord).arcsec < scale


def test_single_cutout_band_still_gives_a_mosaic(archives):
    archive = archives["ra0"]
    coord = SkyCoord(archive.field.ra, archive.field.dec, unit="deg")  # RA 0.0005: the box crosses 0
    cutouts, _ = _cutouts(archive, F814W, coord, 20)
    mosaic = combine_band(cutouts)
    assert mosaic[0].header["FILENAME"] == "hst_combined_skycells-ra0d0005-decs30d0000_acs_wfc_f814w.fits"
    np.testing.assert_array_equal(mosaic["SCI"].data, cutouts[0]["SCI"].data)
    np.testing.assert_array_equal(mosaic["WHT"].data, cutouts[0]["WHT"].data)


def test_bands_are_kept_apart_and_named(lmc_archive):
    cutouts = [cut_layer(lmc_archive.directory / r.filename, LMC, 10) for r in lmc_archive.layers]
    mosaics = combine_cutouts(cutouts)
    names = sorted(m[0].header["FILENAME"] for m in mosaics.values())
    assert names == [
        "hst_combined_skycells-ra84d9208-decs69d1467_acs_wfc_f658n.fits",
        "hst_combined_skycells-ra84d9208-decs69d1467_acs_wfc_f814w.fits",
        "hst_combined_skycells-ra84d9208-decs69d1467_acs_wfc_f814w_jbp505jg.fits",
        "hst_combined_skycells-ra84d9208-decs69d1467_wfc3_ir_f160w.fits",
        "hst_combined_skycells-ra84d9208-decs69d1467_wfc3_ir_f160w_coarse.fits",
    ]
    coarse = mosaics[F160W_COARSE]
    assert coarse["SCI"].data.shape == (83, 83) and coarse[0].header["NCOMBINE"] == 4
    for extname in ("SCI", "WHT"):
        header = coarse[extname].header
        assert [header[f"ILAYR{i:03d}"] for i in range(1, 5)] == [
            f"hst_skycell-p0081x{c}_wfc3_ir_f160w_coarse-all_drz.fits"
            for c in ("14y14", "14y15", "15y14", "15y15")
        ]
        assert (
            header["IFILE001"]
            == "hst_cutout_skycell-p0081x14y14-ra84d9208-decs69d1467_wfc3_ir_f160w_coarse.fits"
        )
        assert header["IEXT004"] == f"{extname},1"
    assert band_of(coarse) == F160W_COARSE


def test_written_mosaic_reads_back(lmc_archive, tmp_path):
    from glue_mvmcut.core.pipeline import write_fits

    cutouts, _ = _cutouts(lmc_archive, F160W_COARSE, LMC, 10)
    path = write_fits(combine_band(cutouts), tmp_path)
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SCI", "WHT"]
        assert hdul["SCI"].header["NCOMBINE"] == 4
        assert WCS(hdul["SCI"].header).has_celestial
    assert not list(tmp_path.glob("*.part"))


def _astrocut_cutouts(archive, records, tmp_path):
    """astrocut's own fits_cut of SCI and WHT: both extensions named CUTOUT (the layer's names in
    O_EXT_NM), the layer in ORIG_FLE, RA_OBJ/DEC_OBJ in the primary, NaN off the layer."""
    astrocut = pytest.importorskip("astrocut")
    files = astrocut.fits_cut(
        [str(archive.directory / r.filename) for r in records],
        LMC,
        [400, 400],
        extension=[1, 2],
        single_outfile=False,
        output_dir=str(tmp_path),
    )
    cutouts = []
    for path in files:
        with fits.open(path) as hdul:
            cutouts.append(fits.HDUList([hdu.copy() for hdu in hdul]))
    return cutouts


def _cutout2d_cutouts(archive, records):
    """astropy Cutout2D of SCI and WHT, written with WCS.to_header() (PC + CDELT), the layer's
    primary header as it is: no FILENAME, ORIG_FLE, RA_OBJ or DEC_OBJ."""
    cutouts = []
    for rec in records:
        with fits.open(archive.directory / rec.filename) as layer:
            primary = layer[0].header.copy()
            for key in ("FILENAME", "ORIG_FLE", "RA_OBJ", "DEC_OBJ"):
                primary.remove(key, ignore_missing=True)
            hdus = [fits.PrimaryHDU(header=primary)]
            for extname in ("SCI", "WHT"):
                cut = Cutout2D(layer[extname].data, LMC, 16 * u.arcsec, wcs=WCS(layer[extname].header))
                hdus.append(fits.ImageHDU(cut.data.copy(), header=cut.wcs.to_header(), name=extname))
        cutouts.append(fits.HDUList(hdus))
    return cutouts


@pytest.mark.parametrize("tool", ["astrocut", "Cutout2D"])
def test_cutouts_made_by_other_tools_combine_to_the_weighted_truth(lmc_archive, tmp_path, tool):
    records = _records(lmc_archive, F814W)
    if tool == "astrocut":
        cutouts = _astrocut_cutouts(lmc_archive, records, tmp_path)
    else:
        cutouts = _cutout2d_cutouts(lmc_archive, records)
        assert "CD1_1" not in cutouts[0]["SCI"].header and "PC1_1" in cutouts[0]["SCI"].header
    ((band, mosaic),) = combine_cutouts(cutouts).items()
    assert band == F814W  # astrocut: from ORIG_FLE; Cutout2D: from INSTRUME, DETECTOR, FILTER
    truth, den = _weighted_truth(lmc_archive, records, mosaic)
    np.testing.assert_allclose(mosaic["SCI"].data, truth, rtol=5e-7, atol=1e-7)
    np.testing.assert_array_equal(mosaic["WHT"].data, den.astype(np.float32))
    # Named by RA_OBJ/DEC_OBJ (astrocut), else by the centre of the mosaic's grid.
    centre = WCS(mosaic["SCI"].header).pixel_to_world(*(np.array(mosaic["SCI"].data.shape[::-1]) - 1) / 2)
    expected = LMC if tool == "astrocut" else centre
    assert (
        mosaic[0].header["FILENAME"]
        == CombinedName.for_band(F814W, expected.ra.deg, expected.dec.deg).filename
    )
    assert mosaic["SCI"].header["ILAYR001"] == (records[0].filename if tool == "astrocut" else "")


def test_a_cutout_whose_band_nothing_tells_is_named(lmc_archive, tmp_path):
    cutouts = _cutout2d_cutouts(lmc_archive, _records(lmc_archive, F814W))
    for key in ("INSTRUME", "DETECTOR", "FILTER"):
        del cutouts[1][0].header[key]
    unknown = fits.HDUList([hdu.copy() for hdu in cutouts[1]])
    unknown.writeto(tmp_path / "mine.fits")
    with fits.open(tmp_path / "mine.fits") as on_disk:
        with pytest.raises(NotMVMFileError, match=r"Cannot tell the band of mine.fits: neither its name"):
            band_of(on_disk)
        with pytest.raises(NotMVMFileError, match=r"mine.fits: .* Combine it in a call of its own"):
            combine_cutouts([cutouts[0], on_disk])
        # Alone, or with others that tell nothing either: one mosaic for the call.
        ((band, mosaic),) = combine_cutouts([on_disk]).items()
    assert band == UNKNOWN_BAND and mosaic[0].header["FILENAME"].endswith("_unknown_unknown_unknown.fits")
    with pytest.raises(
        NotMVMFileError, match=r"cutout 1 \(in memory\) is not a cutout: it has no WHT extension"
    ):
        combine_cutouts([fits.HDUList([cutouts[0][0], cutouts[0]["SCI"]])])


def test_filters_from_keywords_follow_drizzlepacs_rules():
    assert filter_name("F606W;POL60V") == "f606w-pol60v"
    assert filter_name("POL120UV;F435W") == "f435w-pol120uv"  # the polarizer last
    assert filter_name("CLEAR1L;F814W") == "f814w"
    assert filter_name("CLEAR1L;CLEAR2L") == "clear"
    assert filter_name("F140LP;N/A;F140LP") == "f140lp"  # SBC's malformed third entry


def test_an_unknown_resampler_is_refused_before_any_work(lmc_archive):
    cutouts, _ = _cutouts(lmc_archive, F814W, LMC, 4)
    with pytest.raises(ValueError, match=r"resample must be one of exact, interp, not 'cubic'\."):
        combine_cutouts(cutouts, resample="cubic")
