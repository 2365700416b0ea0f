"""Servers that trickle, encode what was not asked for, send more than asked or never end a
header: every read ends, within bounds, with an error that says what happened."""

import shutil

import pytest

from glue_mvmcut import ArchiveError, NotMVMFileError, conf
from glue_mvmcut.core.cutout import cut_layer
from glue_mvmcut.core.download import download_layer
from glue_mvmcut.core.endpoints import using_server
from glue_mvmcut.core.limits import ReplyRefused, TooSlowError
from glue_mvmcut.core.mast import query_layers
from glue_mvmcut.core.transport import TransferStats
from glue_mvmcut.testing.server import MastServer

LMC = (84.9208, -69.1467)
NAME = "hst_skycell-p0081x14y15_acs_wfc_f814w_all_drc.fits"
URI = f"mast:HST/product/{NAME}"


@pytest.fixture
def impatient():
    """A second of grace, then at least 1 MB/s: a trickle of 2 kB/s is stopped after ~1 s."""
    with conf.set_temp("timeout", 1.0), conf.set_temp("min_rate", 1000.0):
        yield


@pytest.mark.parametrize("ranges", ["multipart", "one-range"])
def test_a_trickling_server_stops_a_ranged_cut(mast, impatient, ranges):
    mast.faults.ranges = ranges
    mast.faults.trickle(2000, count=1, scope="download")
    with pytest.raises(
        TooSlowError, match=rf"Reading {NAME}: .* slower than glue_mvmcut.conf.min_rate = 1000.0 kB/s"
    ):
        cut_layer(URI, LMC, 5)
    assert len(mast.requests("download")) == 1  # not tried again: a slow server stays slow


def test_a_trickling_server_stops_a_download_which_keeps_what_came(mast, cache, impatient, lmc_archive):
    mast.faults.trickle(2000, count=1, scope="download")
    with pytest.raises(
        TooSlowError,
        match=rf"Downloading {NAME}: \d+ bytes in \d+ s, slower .*; the \d+ bytes received are kept",
    ):
        download_layer(NAME, URI)
    kept = (cache / (NAME + ".part")).stat().st_size
    assert 0 < kept < 10_000
    path = download_layer(NAME, URI)
    assert path.read_bytes() == (lmc_archive.directory / NAME).read_bytes()
    assert [r.range for r in mast.requests("download") if r.method == "GET"][-1] == f"bytes={kept}-"


def test_a_trickling_query_is_stopped(mast, impatient):
    mast.faults.trickle(2000, count=1, scope="query")
    with pytest.raises(
        TooSlowError, match=r"MVM query: \d+ bytes in \d+ s, slower than glue_mvmcut.conf.min_rate"
    ):
        query_layers(LMC, 10)


def test_a_query_ends_within_its_deadline_however_its_server_moves(mast):
    # Fast enough for min_rate (1 byte/s), but the query as a whole outlasts query_timeout.
    mast.faults.trickle(3000, count=10, scope="query")
    with conf.set_temp("min_rate", 0.001), conf.set_temp("query_timeout", 1.0):
        with pytest.raises(
            TooSlowError, match=r"MVM query: not done within glue_mvmcut.conf.query_timeout = 1.0 s"
        ):
            query_layers(LMC, 10)


def test_replies_encoded_unasked_are_refused_not_inflated(mast, cache):
    mast.faults.content_encoding = "gzip"
    with pytest.raises(
        ReplyRefused,
        match=rf"Reading {NAME}: the reply is encoded \(gzip\) although identity was asked: refused",
    ):
        cut_layer(URI, LMC, 5)
    with pytest.raises(
        ReplyRefused,
        match=rf"Downloading {NAME}: the reply is encoded \(gzip\) although identity was asked: refused",
    ):
        download_layer(NAME, URI)
    assert not cache.exists() or not [p for p in cache.iterdir() if p.name == NAME]


@pytest.mark.parametrize("content_length", [True, False])
def test_a_reply_longer_than_the_ranges_asked_is_refused(mast, content_length):
    """200 MB more than asked: refused before it is read where its length is announced, after
    the bytes asked (+ 64 KB) where it is not."""
    mast.faults.extra_bytes = 200_000_000
    mast.faults.content_length = content_length
    stats = TransferStats()
    with pytest.raises(
        ReplyRefused,
        match=rf"Reading {NAME}: .* sent more than the \d+ bytes the ranges asked may take: refused",
    ):
        cut_layer(URI, LMC, 5, stats=stats)
    assert stats.bytes == 0


def test_a_header_without_end_is_read_up_to_10_mb(lmc_archive, tmp_path):
    """A layer whose primary header never ends (20 MB of cards): the reader gives up at 10 MB."""
    folder = tmp_path / "lmc"
    shutil.copytree(lmc_archive.directory, folder)
    card = b"COMMENT   " + b"x" * 70
    (folder / NAME).write_bytes(b"SIMPLE  =                    T".ljust(80) + card * (20_000_000 // 80))
    stats = TransferStats()
    with MastServer([folder]) as server, using_server(server.url):
        with pytest.raises(
            NotMVMFileError, match=rf"{NAME}: a header at byte 0 has no END card in its first 10 MB"
        ):
            cut_layer(URI, LMC, 5, stats=stats)
    assert 10 << 20 <= stats.bytes <= (10 << 20) + (1 << 20)


def test_every_refusal_is_an_archive_error():
    assert issubclass(TooSlowError, ArchiveError) and issubclass(ReplyRefused, ArchiveError)


def test_an_impossible_header_on_the_server_is_refused(lmc_archive, tmp_path):
    """NAXIS1 = -720 in SCI: its data would end where its header begins; never walked for ever."""
    folder = tmp_path / "lmc"
    shutil.copytree(lmc_archive.directory, folder)
    data = (folder / NAME).read_bytes()
    at = data.index(b"NAXIS1  =", data.index(b"EXTNAME = 'SCI") - 2880)
    (folder / NAME).write_bytes(data[:at] + b"NAXIS1  =                 -720".ljust(80) + data[at + 80 :])
    with MastServer([folder]) as server, using_server(server.url):
        with pytest.raises(
            NotMVMFileError, match=rf"{NAME}: the header at byte \d+ has NAXIS1 = -720, not a length"
        ):
            cut_layer(URI, LMC, 5)
