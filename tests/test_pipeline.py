"""cutout_mosaic end to end: stand-in MAST, real astroquery, files on disk."""

import re

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from glue_mvmcut import (
    ArchiveError,
    Cancelled,
    InvalidCoordinateError,
    InvalidSizeError,
    NoMVMDataWarning,
    conf,
    cutout_mosaic,
)
from glue_mvmcut.core import pipeline
from glue_mvmcut.core.mast import query_layers

LMC = (84.9208, -69.1467)
TOKEN = "ra84d9208-decs69d1467"


def test_lmc_end_to_end(mast, cache, lmc_archive, tmp_path):
    calls = []
    result = cutout_mosaic(LMC, 20, out_dir=tmp_path / "out", progress=lambda *a: calls.append(a))
    assert len(result.layers) == 20 and len(result.cutouts) == 20 and result.skipped == []
    assert sorted(m[0].header["FILENAME"] for m in result.mosaics.values()) == [
        f"hst_combined_skycells-{TOKEN}_{band}.fits"
        for band in (
            "acs_wfc_f658n",
            "acs_wfc_f814w",
            "acs_wfc_f814w_jbp505jg",
            "wfc3_ir_f160w",
            "wfc3_ir_f160w_coarse",
        )
    ]
    out = tmp_path / "out"
    assert [p.name for p in result.paths["query"]] == [f"mvm_query-{TOKEN}_15_cutout.ecsv"]
    assert len(result.paths["cutouts"]) == 20 and len(result.paths["mosaics"]) == 5
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for kind in result.paths.values() for p in kind
    )
    assert Table.read(result.paths["query"][0]).colnames[:2] == ["productFilename", "dataURI"]
    # Ranged reads: headers and the box's rows only, nothing cached, far less than whole layers.
    assert result.stats.bytes == mast.bytes_sent
    assert result.stats.bytes < 0.6 * sum(rec.size for rec in lmc_archive.layers)
    assert result.stats.requests == len(mast.requests("download")) <= 5 * 20
    assert not cache.exists() or [p for p in cache.iterdir() if p.is_file()] == []  # its locks only
    assert set(result.seconds) == {"query", "cut", "combine", "write"}
    # Progress: monotonic, ends at the total.
    done = [c[0] for c in calls]
    assert done == sorted(done) and calls[-1][0] == calls[-1][1] == 1 + 20 + 1 + 1
    with fits.open(result.paths["mosaics"][0]) as hdul:
        assert hdul[0].header["NCOMBINE"] == 4


def test_download_mode_caches_whole_layers(mast, cache, lmc_archive):
    first = cutout_mosaic(LMC, 10, filters=["f658n"], combine=False, fetch="download")
    layers = [r for r in lmc_archive.layers if r.filter == "f658n"]
    assert first.stats.bytes == sum(r.size for r in layers) and first.stats.requests == 8  # HEAD + GET
    assert sorted(p.name for p in cache.iterdir() if p.is_file()) == sorted(r.filename for r in layers)
    mast.reset_stats()
    again = cutout_mosaic(LMC, 10, filters=["f658n"], combine=False, fetch="download")
    assert again.stats.bytes == 0 and again.stats.requests == 4  # HEAD only
    assert [r.method for r in mast.requests("download")] == ["HEAD"] * 4


@pytest.mark.parametrize("fetch", ["auto", "ranged", "download"])
def test_every_fetch_mode_gives_the_same_files(mast, cache, tmp_path, fetch):
    result = cutout_mosaic(LMC, 8, filters=["f814w", "f160w"], out_dir=tmp_path / fetch, fetch=fetch)
    reference = cutout_mosaic(LMC, 8, filters=["f814w", "f160w"], out_dir=tmp_path / "ref", fetch="download")
    for mine, theirs in zip(
        result.paths["cutouts"] + result.paths["mosaics"],
        reference.paths["cutouts"] + reference.paths["mosaics"],
        strict=True,
    ):
        assert mine.name == theirs.name and mine.read_bytes() == theirs.read_bytes()


def test_auto_falls_back_to_downloads_when_range_is_ignored(mast, cache, lmc_archive):
    mast.faults.ranges = "no-range"
    result = cutout_mosaic(LMC, 8, filters=["f658n"], combine=False)
    assert len(result.cutouts) == 4
    assert sorted(p.name for p in cache.iterdir() if p.is_file()) == sorted(
        r.filename for r in lmc_archive.layers if r.filter == "f658n"
    )
    from glue_mvmcut.core.remote import RangeNotSupported

    with pytest.raises(RangeNotSupported, match="ignores Range requests"):
        cutout_mosaic(LMC, 8, filters=["f658n"], combine=False, fetch="ranged")


@pytest.mark.parametrize("at_once", [1, 4])
def test_ranged_cuts_read_at_most_layers_at_once(mast, cache, monkeypatch, at_once):
    # Eight layers (F658N and F814W's all-exposure layers, four skycells). The stand-in counts
    # the files with requests under way together, whatever the order they come in; with four at
    # once it answers nothing until four files' requests are there, so the cut can only end if
    # it reads four at once (a cut reading fewer would wait for its timeout and fail).
    monkeypatch.setattr(pipeline, "LAYERS_AT_ONCE", at_once)
    layers = query_layers(LMC, 8, filters=["f658n", "f814w"])
    layers = layers[[not name.endswith("-jbp505jg_drc.fits") for name in layers["productFilename"]]]
    assert len(layers) == 8
    mast.reset_stats()
    if at_once > 1:
        mast.faults.gather(at_once)
    with conf.set_temp("timeout", 20):
        result = cutout_mosaic(LMC, 8, layers=layers, combine=False, fetch="ranged")
    assert len(result.cutouts) == 8 and len(mast.requests("download")) == 16
    assert mast.faults.most_files_at_once == at_once


def test_a_failed_run_leaves_no_cut_running(mast, cache, loop_tasks):
    # Eight layers, four reading at a time: the first garbled reply ends the run; the cuts still
    # reading or waiting to read have stopped by then (a late one sent requests into the next
    # test, taking a fault meant for it).
    mast.faults.latency = 0.05
    mast.faults.garble("no-boundary", count=1000)
    with pytest.raises(ArchiveError, match="a multipart reply without a boundary"):
        cutout_mosaic(LMC, 6, filters=["f814w"], combine=False, fetch="ranged")
    assert loop_tasks() == []


def test_selected_layers_only(mast, cache):
    layers = query_layers(LMC, 10)
    chosen = layers[layers["scale"] == "coarse"]
    mast.reset_stats()
    result = cutout_mosaic(LMC, 10, layers=chosen)
    assert len(result.cutouts) == 4 and len(result.mosaics) == 1
    assert not mast.requests("Mast.Caom.Filtered.Position")


def test_cross_projection_cell_field(mast, cache, archives):
    f = archives["twocells"].field
    result = cutout_mosaic((f.ra, f.dec), 16)
    methods = {m[0].header["FILENAME"]: m[0].header["COMBMETH"] for m in result.mosaics.values()}
    assert methods == {
        "hst_combined_skycells-ra182d2000-decn26d0000_acs_wfc_f814w.fits": "paste + reproject_exact",
        "hst_combined_skycells-ra182d2000-decn26d0000_wfc3_ir_f160w_coarse.fits": "paste + reproject_exact",
    }


def test_layers_without_data_in_the_box_are_skipped(mast, cache, lmc_archive):
    # 15.5" north of the centre: the exposure-level layer (observed radius 14.4") has nothing.
    result = cutout_mosaic((84.9208, -69.1467 + 15.5 / 3600), 1.0, filters=["f814w"])
    assert result.skipped and all("jbp505jg" in name for name in result.skipped)
    assert all("jbp505jg" not in c[0].header["FILENAME"] for c in result.cutouts)


def test_no_data(mast, cache, tmp_path):
    with pytest.warns(NoMVMDataWarning):
        result = cutout_mosaic((10.0, 10.0), 10, out_dir=tmp_path)
    assert len(result.layers) == 0 and result.cutouts == [] and result.mosaics == {}


INSIDE_ONE_SKYCELL = (84.9325, -69.14253)  # p0081x14y15 only: every band has one cutout


def _files_of(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_band_of_one_cutout_is_not_written_twice(mast, cache, tmp_path):
    result = cutout_mosaic(INSIDE_ONE_SKYCELL, 2, out_dir=tmp_path / "both")
    assert len(result.cutouts) == len(result.mosaics) == 2  # F658N and F814W have data there
    # Its cutout's file stands for each band's mosaic: the query table and two files, not four.
    assert result.paths["mosaics"] == result.paths["cutouts"]
    assert [p.name for p in result.paths["mosaics"]] == [
        "hst_cutout_skycell-p0081x14y15-ra84d9325-decs69d1425_acs_wfc_f658n.fits",
        "hst_cutout_skycell-p0081x14y15-ra84d9325-decs69d1425_acs_wfc_f814w.fits",
    ]
    assert _files_of(tmp_path / "both") == sorted(p.name for p in result.files()) and len(result.files()) == 3
    # Asked for, they are written: mosaics only, under their combined names, same pixels.
    mosaics = cutout_mosaic(INSIDE_ONE_SKYCELL, 2, out_dir=tmp_path / "mosaics", products="mosaics")
    assert mosaics.paths["cutouts"] == []
    assert [p.name for p in mosaics.paths["mosaics"]] == [
        "hst_combined_skycells-ra84d9325-decs69d1425_acs_wfc_f658n.fits",
        "hst_combined_skycells-ra84d9325-decs69d1425_acs_wfc_f814w.fits",
    ]
    assert _files_of(tmp_path / "mosaics") == sorted(p.name for p in mosaics.files())
    for cutout_path, mosaic_path in zip(result.paths["mosaics"], mosaics.paths["mosaics"], strict=True):
        with fits.open(cutout_path) as cutout, fits.open(mosaic_path) as mosaic:
            assert mosaic[0].header["NCOMBINE"] == 1
            for ext in ("SCI", "WHT"):
                assert np.array_equal(mosaic[ext].data, cutout[ext].data)


def test_each_kind_of_products_writes_what_it_names(mast, cache, tmp_path):
    both = cutout_mosaic(LMC, 6, out_dir=tmp_path / "both")
    assert len(both.cutouts) == 20 and len(both.paths["mosaics"]) == 5
    assert not set(both.paths["mosaics"]) & set(both.paths["cutouts"])  # four cutouts in each band
    cutout_mosaic(LMC, 6, out_dir=tmp_path / "mosaics", products="mosaics")
    cutouts = cutout_mosaic(LMC, 6, out_dir=tmp_path / "cutouts", products="cutouts")
    assert cutouts.mosaics == {} and "combine" not in cutouts.seconds  # none made, as none is written
    for kind in ("mosaics", "cutouts"):
        assert _files_of(tmp_path / kind) == sorted(p.name for p in both.paths["query"] + both.paths[kind])
        for name in _files_of(tmp_path / kind):  # byte for byte what "both" writes
            if name.endswith(".fits"):
                assert (tmp_path / kind / name).read_bytes() == (tmp_path / "both" / name).read_bytes()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"products": "mosaic"}, "products must be one of both, mosaics, cutouts, not 'mosaic'."),
        ({"products": "mosaics", "combine": False}, "products='mosaics' asks for mosaics, and combine=False"),
    ],
)
def test_products_that_cannot_be_made_are_refused_before_any_request(mast, tmp_path, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        cutout_mosaic(LMC, 6, out_dir=tmp_path / "out", **options)
    assert mast.requests() == []


@pytest.mark.parametrize(
    "coord, size, error",
    [((10.0, 91.0), 10, InvalidCoordinateError), (LMC, -1, InvalidSizeError), (LMC, 0, InvalidSizeError)],
)
def test_bad_input_is_refused_before_any_request(mast, coord, size, error):
    with pytest.raises(error):
        cutout_mosaic(coord, size)
    assert mast.requests() == []


@pytest.mark.parametrize("stop_after", [0, 1, 5, 22])
def test_cancel_leaves_no_partial_files(mast, cache, tmp_path, stop_after):
    calls = []

    def cancel():
        return len(calls) >= stop_after

    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        cutout_mosaic(LMC, 10, out_dir=out, progress=lambda *a: calls.append(a), cancel=cancel)
    leftovers = list(out.glob("*")) if out.exists() else []
    assert not [p for p in leftovers if p.suffix == ".part"]
    assert not cache.exists() or not list(cache.glob("*.part"))
    for path in leftovers:  # whatever was written is complete
        if path.suffix == ".fits":
            with fits.open(path) as hdul:
                assert np.isfinite(hdul["SCI"].data).all()


def test_an_object_name_is_resolved(mast, cache):
    result = cutout_mosaic("LMC", 2, filters=["f658n"])
    assert (result.coord.ra.deg, result.coord.dec.deg) == (84.9208, -69.1467)
    assert len(result.cutouts) == 4 and len(result.mosaics) == 1
