"""Cutouts and mosaics larger than a block (``conf.block_mb``) are written into their files a
block of rows at a time, and are byte for byte what the same products held in memory are."""

import errno
import filecmp
import gc
import os

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from sameness import hdul_bytes

from glue_mvmcut import Cancelled, OutputFolderError, conf, cutout_mosaic
from glue_mvmcut.core.combine import combine_cutouts
from glue_mvmcut.core.cutout import cut_layer
from glue_mvmcut.core.fitsfile import (
    LaidOutFITS,
    file_of,
    open_mapped,
    placeholder,
    read_rows,
    row_blocks,
    stored_rows,
)
from glue_mvmcut.core.mast import query_layers
from glue_mvmcut.hapcut import make_the_cut, mvm_combine

LMC = SkyCoord(84.9208, -69.1467, unit="deg")
FINE = "hst_skycell-p0081x14y15_acs_wfc_f814w_all_drc.fits"
COARSE = "hst_skycell-p0081x14y15_wfc3_ir_f160w_coarse-all_drz.fits"
#: Blocks of 0.05 MB: 13 rows of a 20" cutout (1000 px wide), so every product here takes many.
SMALL_BLOCKS = 0.05


def _hdus(sci, wht):
    primary = fits.PrimaryHDU()
    primary.header["FILENAME"] = "laid_out.fits"
    extensions = []
    for extname, data in (("SCI", sci), ("WHT", wht)):
        hdu = fits.ImageHDU(data=data, name=extname)
        hdu.header["CRPIX1"], hdu.header["BUNIT"] = 1.5, "ELECTRONS/S"
        extensions.append(hdu)
    return [primary, *extensions]


def test_a_file_laid_out_then_filled_by_blocks_is_what_astropy_writes(tmp_path):
    rng = np.random.default_rng(5)
    sci, wht = (rng.random((301, 123)).astype(">f4") for _ in range(2))
    fits.HDUList(_hdus(sci, wht)).writeto(tmp_path / "astropy.fits", output_verify="ignore")
    file = LaidOutFITS.create(tmp_path / "blocks.fits", _hdus(placeholder(sci.shape), placeholder(wht.shape)))
    # Laid out: the size of the whole file, zeros where no pixel has been written yet.
    assert os.path.getsize(tmp_path / "blocks.fits") == os.path.getsize(tmp_path / "astropy.fits")
    with fits.open(tmp_path / "blocks.fits") as hdul:
        assert hdul["SCI"].data.shape == (301, 123) and not hdul["SCI"].data.any()
    with conf.set_temp("block_mb", 0.01):  # 21 rows a block
        blocks = list(row_blocks(0, 301, 123))
        assert [(b.start, b.stop) for b in blocks[:2]] == [(0, 21), (21, 42)] and blocks[-1].stop == 301
        for index, data in ((1, sci), (2, wht)):
            for rows in blocks:
                with file.rows(index, rows) as window:
                    window[...] = data[rows]
    assert filecmp.cmp(tmp_path / "astropy.fits", tmp_path / "blocks.fits", shallow=False)
    with fits.open(tmp_path / "blocks.fits") as hdul:  # read back a block, the file unmapped
        np.testing.assert_array_equal(read_rows(hdul["WHT"], slice(40, 50), slice(7, 9)), wht[40:50, 7:9])


def test_rows_written_whole_are_written_once_each_and_only_when_complete(tmp_path, monkeypatch):
    """Windows whose every pixel in the columns filled the caller writes (a cutout's rows, read
    from its layer) are filled in memory, its buffer used again for the next, and written with
    one ``pwrite`` each when the block ends (one per row where some columns only are filled,
    the others left a hole): the file is what astropy writes. A block that fails writes
    nothing: its rows stay a hole."""
    rng = np.random.default_rng(6)
    sci, wht = (rng.random((301, 123)).astype(">f4") for _ in range(2))
    fits.HDUList(_hdus(sci, wht)).writeto(tmp_path / "astropy.fits", output_verify="ignore")
    file = LaidOutFITS.create(tmp_path / "whole.fits", _hdus(placeholder(sci.shape), placeholder(wht.shape)))
    writes = []
    pwrite = os.pwrite
    monkeypatch.setattr(
        os, "pwrite", lambda fd, data, at: writes.append((len(data), at)) or pwrite(fd, data, at)
    )
    with conf.set_temp("block_mb", 0.01):  # 21 rows a block
        blocks = list(row_blocks(0, 301, 123))
        for index, data in ((1, sci), (2, wht)):
            for rows in blocks:
                with file.rows(index, rows, slice(None), overwritten=True) as window:
                    window[...] = data[rows]
    assert filecmp.cmp(tmp_path / "astropy.fits", tmp_path / "whole.fits", shallow=False)
    row_bytes = 123 * 4
    assert writes == [
        ((rows.stop - rows.start) * row_bytes, file.offsets[index] + rows.start * row_bytes)
        for index in (1, 2)
        for rows in blocks
    ]
    # Some columns only (a layer covering part of the box): each row's span of them, once.
    part = LaidOutFITS.create(tmp_path / "part.fits", _hdus(placeholder(sci.shape), placeholder(wht.shape)))
    writes.clear()
    with part.rows(1, slice(100, 121), slice(10, 50), overwritten=True) as window:
        window[:, 10:50] = sci[100:121, 10:50]
    assert writes == [(40 * 4, part.offsets[1] + y * row_bytes + 10 * 4) for y in range(100, 121)]
    with fits.open(tmp_path / "part.fits") as hdul:
        expected = np.zeros(sci.shape, np.float32)
        expected[100:121, 10:50] = sci[100:121, 10:50]
        np.testing.assert_array_equal(hdul["SCI"].data, expected)
    failed = LaidOutFITS.create(
        tmp_path / "failed.fits", _hdus(placeholder(sci.shape), placeholder(wht.shape))
    )
    writes.clear()
    with (
        pytest.raises(OSError),
        failed.rows(1, slice(0, 21), slice(None), overwritten=True) as window,
    ):
        window[...] = 5.0
        raise OSError("the layer's connection broke")
    assert writes == []
    with fits.open(tmp_path / "failed.fits") as hdul:
        assert not hdul["SCI"].data.any()


def test_window_buffers_are_let_go_once_no_file_is_being_written(tmp_path):
    """The memory of windows written whole is kept for the next windows while a file is being
    written, and let go when none is (a Glue session holds none between loads)."""
    from glue_mvmcut.core import fitsfile

    gc.collect()  # files of earlier tests left in reference cycles
    file = LaidOutFITS.create(tmp_path / "one.fits", _hdus(placeholder((20, 30)), placeholder((20, 30))))
    for index in (1, 2):
        with file.rows(index, slice(0, 20), slice(None), overwritten=True) as window:
            window[...] = index
    assert [len(buffer) for buffer in fitsfile._BUFFERS._free] == [20 * 30 * 4]  # one, used twice
    del file, window
    assert fitsfile._BUFFERS._free == []
    with fits.open(tmp_path / "one.fits") as hdul:
        assert (hdul["SCI"].data == 1).all() and (hdul["WHT"].data == 2).all()


def test_rows_never_written_are_known_without_reading_them(tmp_path):
    """A laid-out file's rows written in the middle only: the rows around them are holes, which
    `stored_rows` finds (so no one reads them), as it finds an array never written (its first
    and last pages shared with headers); in memory, every row counts."""
    shape = (3000, 1024)  # rows of 4 KB: a page each
    hdus = _hdus(placeholder(shape), placeholder(shape))
    file = LaidOutFITS.create(tmp_path / "sparse.fits", hdus)
    with file.rows(2, slice(1200, 1700), filled=slice(None)) as window:
        window[100:400, 5] = 7.0  # rows 1300-1599 hold data; 1200-1299, 1600-1699 zeros written
    mapped = open_mapped(tmp_path / "sparse.fits")
    # To within a page: the file's pages are not the rows' (a header comes first), and the
    # pages written reach into rows 1199 and 1700.
    assert stored_rows(mapped["WHT"]) == slice(1199, 1701)
    assert stored_rows(mapped["SCI"]) == slice(0, 0)  # never written
    with fits.open(tmp_path / "sparse.fits") as hdul:  # astropy's own, not read yet
        assert stored_rows(hdul["WHT"]) == slice(1199, 1701)
        np.testing.assert_array_equal(
            read_rows(hdul["WHT"], slice(1299, 1301), slice(4, 6)), [[0, 0], [0, 7]]
        )
    in_memory = fits.ImageHDU(np.zeros(shape, np.float32))
    assert stored_rows(in_memory) == slice(0, 3000)


@pytest.mark.parametrize("name", [FINE, COARSE])
@pytest.mark.parametrize("source", ["local", "multipart", "one-range"])
def test_cutouts_written_by_blocks_are_the_cutouts_held_in_memory(mast, lmc_archive, tmp_path, name, source):
    mast.faults.ranges = "one-range" if source == "one-range" else "multipart"
    layer = lmc_archive.directory / name if source == "local" else f"mast:HST/product/{name}"
    held = cut_layer(lmc_archive.directory / name, LMC, 20)
    assert held.filename() is None
    with conf.set_temp("block_mb", SMALL_BLOCKS):
        streamed = cut_layer(layer, LMC, 20, out_dir=tmp_path)
    path = tmp_path / held[0].header["FILENAME"]
    assert file_of(streamed) == path  # memory-mapped from its file, not held
    assert path.read_bytes() == hdul_bytes(held) == hdul_bytes(streamed)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no part left beside it


@pytest.mark.parametrize("source", ["local", "multipart"])
def test_pixels_off_the_layer_are_left_as_holes(mast, lmc_archive, tmp_path, source):
    """A 150" box (3750 px) centred on the corner pixel of a layer 837 x 939 px: its rows beyond
    the layer (three quarters), and the pages of the others beyond it (two of four), are never
    written (they read as 0) and take no disk."""
    layer = lmc_archive.directory / FINE
    with fits.open(layer) as hdul:
        corner = SkyCoord.from_pixel(5, 5, WCS(hdul["SCI"].header))
    source = layer if source == "local" else f"mast:HST/product/{FINE}"
    with conf.set_temp("block_mb", SMALL_BLOCKS):
        cutout = cut_layer(source, corner, 150, out_dir=tmp_path)
    path = file_of(cutout)
    assert os.stat(path).st_blocks * 512 < 0.16 * os.path.getsize(path)
    assert path.read_bytes() == hdul_bytes(cut_layer(layer, corner, 150))


@pytest.mark.parametrize("field, resample", [("lmc", "exact"), ("twocells", "exact"), ("twocells", "interp")])
@pytest.mark.parametrize("combine", ["wmean", "median", "last"])
def test_mosaics_made_by_blocks_are_the_mosaics_made_whole(archives, tmp_path, field, resample, combine):
    """Pasted inputs (lmc's fine layers), inputs 1/3 px off the grid (lmc's coarse ones) and
    inputs of another projection cell (twocells) alike."""
    archive = archives[field]
    coord = LMC if field == "lmc" else SkyCoord(archive.field.ra, archive.field.dec, unit="deg")
    cutouts = [cut_layer(archive.directory / rec.filename, coord, 30) for rec in archive.layers]
    whole = combine_cutouts(cutouts, resample=resample, combine=combine)
    methods = {mosaic[0].header["COMBMETH"] for mosaic in whole.values()}
    assert f"paste + reproject_{resample}" in methods
    with conf.set_temp("block_mb", SMALL_BLOCKS):
        by_blocks = combine_cutouts(cutouts, resample=resample, combine=combine, out_dir=tmp_path)
    assert by_blocks.keys() == whole.keys()
    for band, mosaic in by_blocks.items():
        assert file_of(mosaic) == tmp_path / mosaic[0].header["FILENAME"]
        assert file_of(mosaic).read_bytes() == hdul_bytes(whole[band])


@pytest.mark.parametrize("fetch", ["ranged", "download"])
@pytest.mark.parametrize("products", ["both", "mosaics", "cutouts"])
def test_runs_by_blocks_write_what_runs_held_in_memory_write(mast, tmp_path, fetch, products):
    held = cutout_mosaic(LMC, 20, out_dir=tmp_path / "held", fetch=fetch, products=products)
    with conf.set_temp("block_mb", SMALL_BLOCKS):
        blocks = cutout_mosaic(LMC, 20, out_dir=tmp_path / "blocks", fetch=fetch, products=products)
    names = sorted(p.name for p in (tmp_path / "held").iterdir())
    assert sorted(p.name for p in (tmp_path / "blocks").iterdir()) == names  # no scratch folder left
    assert len(names) == {"both": 1 + 20 + 5, "mosaics": 1 + 5, "cutouts": 1 + 20}[products]
    for name in names:
        assert filecmp.cmp(tmp_path / "held" / name, tmp_path / "blocks" / name, shallow=False), name
    assert [p.name for p in blocks.files()] == [p.name for p in held.files()]
    for streamed, in_memory in zip(blocks.cutouts, held.cutouts, strict=True):
        assert file_of(in_memory) is None
        path = file_of(streamed)  # memory-mapped; for mosaics only, in a folder since removed
        assert path.parent.exists() == (products != "mosaics")
        np.testing.assert_array_equal(streamed["WHT"].data, in_memory["WHT"].data)


def test_a_band_of_one_cutout_written_by_blocks_is_its_own_mosaic(mast, tmp_path):
    """Not copied into a mosaic file, as a band of one cutout held in memory is not written twice."""
    table = query_layers(LMC, 20)
    one_skycell = table[["p0081x15y15" in name for name in table["productFilename"]]]
    held = cutout_mosaic(LMC, 20, layers=one_skycell, out_dir=tmp_path / "held")
    with conf.set_temp("block_mb", SMALL_BLOCKS):
        blocks = cutout_mosaic(LMC, 20, layers=one_skycell, out_dir=tmp_path / "blocks")
    assert len(blocks.cutouts) == len(blocks.mosaics) == 5
    assert [blocks.mosaics[band] for band in blocks.mosaics] == blocks.cutouts  # the very cutouts
    # Held in memory: each band's mosaic is made when first asked for (no file), once.
    assert len(held.mosaics) == 5 and held.paths["mosaics"] == held.paths["cutouts"]
    made = list(held.mosaics.values())
    assert all(mosaic is not cutout for mosaic, cutout in zip(made, held.cutouts, strict=True))
    assert all(m[0].header["FILENAME"].startswith("hst_combined_skycells-") for m in made)
    assert all(again is first for again, first in zip(held.mosaics.values(), made, strict=True))
    assert len(list((tmp_path / "held").iterdir())) == 6  # the table, 5 cutouts
    for mosaic, cutout in zip(made, held.cutouts, strict=True):
        np.testing.assert_array_equal(mosaic["SCI"].data, cutout["SCI"].data)
    assert blocks.paths["mosaics"] == blocks.paths["cutouts"]
    assert [p.name for p in blocks.files()] == [p.name for p in held.files()]  # the table, 5 cutouts
    assert len(list((tmp_path / "blocks").iterdir())) == 6


def test_a_cancelled_run_by_blocks_leaves_no_file_that_looks_finished(mast, tmp_path):
    out = tmp_path / "out"

    def cancel():  # checked between requests: the run stops amid the blocks of the other cutouts
        return any(out.glob("hst_cutout_*"))

    with conf.set_temp("block_mb", SMALL_BLOCKS), pytest.raises(Cancelled):
        cutout_mosaic(LMC, 20, out_dir=out, cancel=cancel)
    written = list(out.iterdir())
    assert 0 < len(written) < 20
    for path in written:  # whole cutouts only (their private part folders gone)
        assert path.name.startswith("hst_cutout_") and path.is_file(), path.name
        with fits.open(path) as hdul:
            assert [hdu.name for hdu in hdul] == ["PRIMARY", "SCI", "WHT"]
            assert hdul["WHT"].data.shape == (500, 500) and hdul["WHT"].data.any()


def test_a_disk_that_fills_up_mid_cut_is_said_and_leaves_no_file_that_looks_finished(
    mast, tmp_path, monkeypatch
):
    """A cutout's rows written from memory (`written_rows`): a full disk is an error that names
    the file, the folder and the cause (through a memory map it would have been a SIGBUS), and
    no file that looks finished is left."""
    out = tmp_path / "out"
    pwrite, writes = os.pwrite, []

    def filling_up(fd, data, position):
        writes.append(len(data))
        if len(writes) > 40:  # headers and some rows go in, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return pwrite(fd, data, position)

    monkeypatch.setattr(os, "pwrite", filling_up)
    with conf.set_temp("block_mb", SMALL_BLOCKS), pytest.raises(OutputFolderError) as raised:
        cutout_mosaic(LMC, 20, out_dir=out)
    message = str(raised.value)
    assert message.startswith("Cannot write hst_cutout_skycell-p0081x")
    assert message.endswith(f".fits in {out}: No space left on device.")
    assert not [p for p in out.rglob("*") if p.suffix == ".fits"]


def test_the_seed_functions_write_by_blocks(lmc_archive, tmp_path):
    layers = [lmc_archive.directory / FINE, lmc_archive.directory / FINE.replace("x14y15", "x15y15")]
    held = make_the_cut(layers, LMC, 20, output_dir=tmp_path / "held")
    with conf.set_temp("block_mb", SMALL_BLOCKS):
        blocks = make_the_cut(layers, LMC, 20, output_dir=tmp_path / "blocks")
    assert blocks == held
    for name in held:
        assert filecmp.cmp(tmp_path / "held" / name, tmp_path / "blocks" / name, shallow=False)
    held_mosaic = mvm_combine([tmp_path / "held" / n for n in held], output_dir=tmp_path / "held")
    with conf.set_temp("block_mb", SMALL_BLOCKS):
        mosaic = mvm_combine([tmp_path / "blocks" / n for n in held], output_dir=tmp_path / "blocks")
    assert [os.path.basename(p) for p in mosaic] == [os.path.basename(p) for p in held_mosaic]
    assert filecmp.cmp(held_mosaic[0], mosaic[0], shallow=False)
