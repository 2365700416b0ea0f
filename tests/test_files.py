"""Folders others can write to: planted links never redirect a write, runs sharing a folder
take turns, and what killed runs left is cleared."""

import errno
import logging
import os
import threading

import pytest
from together import at_once

from glue_mvmcut.core.download import download_layer
from glue_mvmcut.core.errors import OutputFolderError, UnsafePathError
from glue_mvmcut.core.files import folder_lock, folder_lock_path, open_regular, write_atomically
from glue_mvmcut.core.pipeline import cutout_mosaic

LMC = (84.9208, -69.1467)
LAYER = "hst_skycell-p0081x14y15_acs_wfc_f814w_all_drc.fits"


@pytest.fixture
def victim(tmp_path):
    """A file outside the output folder, which planted links point to."""
    path = tmp_path / "elsewhere" / "precious.txt"
    path.parent.mkdir()
    path.write_text("keep me")
    return path


def _plant(link, to) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(to, link)


def test_a_link_planted_at_the_old_temporary_name_is_never_followed(tmp_path, victim):
    out = tmp_path / "out"
    _plant(out / "table.ecsv.part", victim)
    write_atomically(out / "table.ecsv", lambda path: path.write_text("written"))
    assert (out / "table.ecsv").read_text() == "written"
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["table.ecsv", "table.ecsv.part"]


def test_a_link_planted_at_the_final_name_is_replaced_not_followed(tmp_path, victim):
    out = tmp_path / "out"
    _plant(out / "table.ecsv", victim)
    write_atomically(out / "table.ecsv", lambda path: path.write_text("written"))
    assert not (out / "table.ecsv").is_symlink() and (out / "table.ecsv").read_text() == "written"
    assert victim.read_text() == "keep me"


def test_a_folder_written_atomically_replaces_a_planted_link_to_a_folder(tmp_path, victim):
    out = tmp_path / "out"
    _plant(out / "target", victim.parent)

    def write(path):
        path.mkdir()
        (path / "a.txt").write_text("a")

    write_atomically(out / "target", write)
    assert [p.name for p in (out / "target").iterdir()] == ["a.txt"] and not (out / "target").is_symlink()
    assert sorted(p.name for p in victim.parent.iterdir()) == ["precious.txt"]


@pytest.mark.parametrize(
    "failure, raised, message",
    [
        (RuntimeError("a bug"), RuntimeError, "^a bug$"),
        (OSError(errno.EIO, "Input/output error"), OSError, "Input/output error"),
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), OutputFolderError, None),
        (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), OutputFolderError, None),
    ],
)
def test_a_failed_write_leaves_nothing_and_a_full_disk_is_said(tmp_path, failure, raised, message):
    def write(path):
        path.write_text("half")
        raise failure

    message = message or f"^Cannot write x.fits in {tmp_path}: {failure.strerror}.$"
    with pytest.raises(raised, match=message):
        write_atomically(tmp_path / "x.fits", write)
    assert list(tmp_path.iterdir()) == []


def test_a_cut_never_writes_through_links_planted_in_its_output_folder(mast, cache, tmp_path, victim):
    """Links at every name the cut writes and at its old temporary names: all replaced or ignored."""
    first = cutout_mosaic(LMC, 6, out_dir=tmp_path / "first")
    names = [p.name for paths in first.paths.values() for p in paths]
    assert len(names) == 26  # the query table, cutouts and mosaics of every band
    out = tmp_path / "out"
    for name in names:
        _plant(out / (name + ".part"), victim)
        _plant(out / f".{name}.planted.part", victim.parent)  # as a stale private folder looks: a link
    _plant(out / names[1], victim)
    cutout_mosaic(LMC, 6, out_dir=out)
    assert victim.read_text() == "keep me" and sorted(p.name for p in victim.parent.iterdir()) == [
        "precious.txt"
    ]
    for name in names:
        assert (out / name).is_file() and not (out / name).is_symlink()
        assert (out / name).read_bytes() == (tmp_path / "first" / name).read_bytes() or name.endswith(".ecsv")


def test_a_cut_clears_what_a_killed_cut_left_of_its_files(mast, cache, tmp_path):
    out = tmp_path / "out"
    name = cutout_mosaic(LMC, 6, out_dir=out).paths["mosaics"][0].name
    stale = out / f".{name}.x1y2z3.part"
    stale.mkdir()
    (stale / name).write_bytes(b"half a mosaic")
    other = out / ".someone-else.fits.abcdef.part"  # not a name this cut writes: left alone
    other.mkdir()
    cutout_mosaic(LMC, 6, out_dir=out)
    assert not stale.exists() and other.is_dir()


def test_a_download_never_writes_through_links_planted_in_the_cache(mast, cache, victim):
    _plant(cache / (LAYER + ".part"), victim)
    _plant(cache / (LAYER + ".part.json"), victim)
    path = download_layer(LAYER, f"mast:HST/product/{LAYER}")
    assert path.is_file() and not path.is_symlink() and path.stat().st_size > 1e6
    assert victim.read_text() == "keep me"
    assert not (cache / (LAYER + ".part")).exists() and not (cache / (LAYER + ".part.json")).exists()


def test_only_regular_files_are_opened(tmp_path, victim):
    os.mkfifo(tmp_path / "pipe.fits")
    with pytest.raises(UnsafePathError, match="pipe.fits is not a regular file"):
        open_regular(tmp_path / "pipe.fits", "rb")  # a FIFO would block the open: it must not
    _plant(tmp_path / "link.fits", victim)
    with pytest.raises(UnsafePathError, match="link.fits is a symbolic link"):
        open_regular(tmp_path / "link.fits")
    with open_regular(tmp_path / "new.part") as made:
        made.write(b"abc")
    assert (tmp_path / "new.part").read_bytes() == b"abc"


def test_a_planted_lock_file_link_is_refused(cache, tmp_path, victim):
    _plant(folder_lock_path(tmp_path / "out"), victim)
    with pytest.raises(UnsafePathError, match="is a symbolic link"):
        with folder_lock(tmp_path / "out"):
            pass
    assert victim.read_text() == "keep me"


def test_a_second_run_in_a_folder_waits_for_the_first(mast, cache, tmp_path, caplog):
    """While another run holds the folder, a cut says it waits and writes nothing; then it writes."""
    out = tmp_path / "out"
    out.mkdir()
    waiting = threading.Event()

    class Noticed(logging.Handler):
        def emit(self, record):
            if "Waiting for another mvmcut run" in record.getMessage():
                waiting.set()

    handler = Noticed()
    logging.getLogger("glue_mvmcut").addHandler(handler)
    result = {}
    try:
        with folder_lock(out):
            worker = threading.Thread(target=lambda: result.update(run=cutout_mosaic(LMC, 6, out_dir=out)))
            worker.start()
            assert waiting.wait(60), "the second run did not say it waits"
            assert list(out.iterdir()) == []
        worker.join(60)
    finally:
        logging.getLogger("glue_mvmcut").removeHandler(handler)
    written = sorted(p.name for paths in result["run"].paths.values() for p in paths)
    assert len(written) == 26 and sorted(p.name for p in out.iterdir()) == written


def test_three_cuts_into_one_folder_at_once_all_finish_with_the_same_files(mast, cache, tmp_path):
    out = tmp_path / "out"
    results, errors = at_once(lambda: cutout_mosaic(LMC, 6, out_dir=out), 3)
    assert errors == [] and len(results) == 3
    alone = cutout_mosaic(LMC, 6, out_dir=tmp_path / "alone")
    names = sorted(p.name for paths in alone.paths.values() for p in paths)
    assert sorted(p.name for p in out.iterdir()) == names
    for name in names:
        assert name.endswith(".ecsv") or (out / name).read_bytes() == (tmp_path / "alone" / name).read_bytes()
