"""Ranged cutouts straight from the archive: identical to local ones, a fraction of the bytes,
and correct under every fault the stand-in server can inject."""

import asyncio
import gc
import logging
import os
import shutil
import time

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from sameness import FIRST_CONTACT, hdul_bytes, same_as_local

from glue_mvmcut import ArchiveError, Cancelled, CompressedLayerError, NotMVMFileError, conf
from glue_mvmcut.core.byteranges import Targets, copy_parts, parse_multipart, parts_as_asked
from glue_mvmcut.core.coords import parse_coord, parse_size
from glue_mvmcut.core.cutout import cut_layer, cut_remote
from glue_mvmcut.core.endpoints import file_url, using_server
from glue_mvmcut.core.fitsheaders import LAYER_HEADERS
from glue_mvmcut.core.mast import query_layers
from glue_mvmcut.core.pipeline import cutout_mosaic
from glue_mvmcut.core.remote import RangeNotSupported, RemoteFITS
from glue_mvmcut.core.servers import MARGIN, Server, server_of
from glue_mvmcut.core.spanplan import request_batches
from glue_mvmcut.core.transport import TransferStats, run, submit
from glue_mvmcut.testing.server import MastServer

LMC = (84.9208, -69.1467)
FINE = "hst_skycell-p0081x14y15_acs_wfc_f814w_all_drc.fits"
COARSE = "hst_skycell-p0081x15y15_wfc3_ir_f160w_coarse-all_drz.fits"


@pytest.mark.parametrize("name", [FINE, COARSE])
def test_ranged_cutouts_are_identical_to_local_ones(mast, lmc_archive, name):
    stats = same_as_local(lmc_archive.directory, name, LMC, 6)
    assert stats.bytes == mast.bytes_sent < 0.35 * lmc_archive.layer(name).size
    # Primary + SCI headers (one read), then every row of SCI and WHT with WHT's header.
    assert stats.requests == len(mast.requests("download")) == 2


@pytest.mark.parametrize("size, shape", [(0.01, (0, 0)), ((20, 0.01), (500, 0))])
def test_boxes_narrower_than_a_pixel_are_cut_as_from_a_local_file(mast, lmc_archive, size, shape):
    # Rounded to no rows or no columns: an empty cutout, no pixel bytes asked for.
    stats = same_as_local(lmc_archive.directory, FINE, LMC, size)
    assert cut_layer(lmc_archive.directory / FINE, LMC, size)["SCI"].data.shape == shape
    first, second = (r.range for r in mast.requests("download"))
    assert stats.requests == 2 and first == FIRST_CONTACT and "," not in second


def test_headers_are_read_generously_first_then_as_long_as_the_servers_are(mast, lmc_archive):
    same_as_local(lmc_archive.directory, FINE, LMC, 6)
    same_as_local(lmc_archive.directory, COARSE, LMC, 6)
    with fits.open(lmc_archive.directory / FINE) as hdul:
        opening = hdul.fileinfo(1)["datLoc"]  # FINE's primary and SCI headers: where SCI's data start
    first, _, second, _ = (r.range for r in mast.requests("download"))
    assert (first, second) == (FIRST_CONTACT, f"bytes=0-{opening + MARGIN - 1}")
    assert server_of(mast.url).header_lengths == {"SCI": 3 * 2880, "WHT": 2 * 2880}


def _edited_archive(archive, tmp_path, edit, names):
    """A copy of ``archive``'s folder with the layers ``names`` passed through ``edit(hdul)``."""
    archive_dir = tmp_path / "archive"
    shutil.copytree(archive.directory, archive_dir)
    for name in names:
        with fits.open(archive_dir / name) as hdul:
            edit(hdul)
            hdul.writeto(tmp_path / name)
        os.replace(tmp_path / name, archive_dir / name)
    return archive_dir


def _lengthen(hdu, cards):
    for i in range(cards):
        hdu.header.add_history(f"an extra card to lengthen the header ({i})")


def _drop_alternate_wcs(hdu):  # 26 of WHT's 56 cards: 30 left, one block
    for key in [key for key in hdu.header if key[-1] in "AO" and key[:-1] in WCS_KEYWORDS]:
        del hdu.header[key]


WCS_KEYWORDS = ("WCSNAME", "WCSAXES", "RADESYS", "CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2")
WCS_KEYWORDS += ("CD1_1", "CD1_2", "CD2_1", "CD2_2")
SECOND = "hst_skycell-p0081x15y15_acs_wfc_f814w_all_drc.fits"  # also holds the LMC box


@pytest.mark.parametrize(
    "edit, requests",
    [
        # Longer than the 2 blocks guessed: the rest of its header, then its rows again.
        (lambda hdul: _lengthen(hdul["WHT"], 60), 4),
        # Shorter: the block read holds it whole; its rows again.
        (lambda hdul: _drop_alternate_wcs(hdul["WHT"]), 3),
    ],
    ids=["longer", "shorter"],
)
def test_wht_headers_of_another_length_are_read_right_and_learned(lmc_archive, tmp_path, edit, requests):
    archive_dir = _edited_archive(lmc_archive, tmp_path, edit, [FINE, SECOND])
    with MastServer(archive_dir) as server, using_server(server.url):
        counts = []
        for name in (FINE, SECOND):
            stats = TransferStats()
            remote = cut_layer(f"mast:HST/product/{name}", LMC, 6, stats=stats)
            assert hdul_bytes(remote) == hdul_bytes(cut_layer(archive_dir / name, LMC, 6))
            counts.append(stats.requests)
        # The second layer's WHT header is guessed as long as the first one's: two requests.
        assert counts == [requests, 2] and len(server.requests("download")) == requests + 2


def test_primary_headers_longer_than_the_first_read_are_read_on_then_learned(lmc_archive, tmp_path):
    # 3500 more cards: ~350 KB of primary header, beyond the first 128 KB read.
    archive_dir = _edited_archive(
        lmc_archive, tmp_path, lambda hdul: _lengthen(hdul[0], 3500), [FINE, SECOND]
    )
    with MastServer(archive_dir) as server, using_server(server.url):
        for name in (FINE, SECOND):
            assert hdul_bytes(cut_layer(f"mast:HST/product/{name}", LMC, 6)) == hdul_bytes(
                cut_layer(archive_dir / name, LMC, 6)
            )
        with fits.open(archive_dir / FINE) as hdul:
            opening = hdul.fileinfo(1)["datLoc"]
        ranges = [r.range for r in server.requests("download")]
        # The first read, then the next 256 KB (what follows it, twice as long as all read so
        # far); the second layer's first read is as long as the first layer's headers and more.
        assert ranges[:2] == [FIRST_CONTACT, "bytes=131072-393215"] and len(ranges) == 5
        assert ranges[3] == f"bytes=0-{opening + MARGIN - 1}"


def test_cutouts_reuse_the_connections_of_earlier_ones(mast, lmc_archive):
    # Each cutout reads headers, then rows (one request each, in turn): two cutouts of two
    # files, four requests, over at most one new connection (none if an earlier test left one).
    same_as_local(lmc_archive.directory, FINE, LMC, 4)
    same_as_local(lmc_archive.directory, COARSE, LMC, 8)
    assert len(mast.requests("download")) == 4
    assert mast.connections <= 1


def test_connections_idle_longer_than_the_timeout_are_reused_cleanly(mast, lmc_archive):
    # aiohttp 3.14.0 and 3.14.1 armed the read timeout of a connection back in the pool: once
    # idle that long, the next request on it failed at once (aiohttp #12953) and was asked again.
    with conf.set_temp("timeout", 0.3):
        same_as_local(lmc_archive.directory, FINE, LMC, 4)
        time.sleep(0.6)
        same_as_local(lmc_archive.directory, COARSE, LMC, 8)
    assert [r.status for r in mast.requests("download")] == [206] * 4


@pytest.fixture
def loop_reports():
    """What asyncio reports on the I/O loop during the test (e.g. "exception was never retrieved",
    which it prints when the future is collected, at exit if not before)."""
    reported = []

    async def handle_with(handler):
        asyncio.get_running_loop().set_exception_handler(handler)

    run(handle_with(lambda loop, context: reported.append(context["message"])))
    yield reported
    run(handle_with(None))


@pytest.mark.parametrize("after", [0.1, 0.6])  # its headers, then its pixels on their way
def test_a_cancelled_cut_leaves_nothing_running(mast, after, loop_tasks, loop_reports):
    # As the pipeline cancels the other layers' cuts when one fails.
    mast.faults.latency = 0.5
    job = submit(cut_remote(f"mast:HST/product/{FINE}", parse_coord(LMC), parse_size(6)))
    time.sleep(after)
    job.cancel()
    time.sleep(0.05)
    assert loop_tasks() == []
    del job
    gc.collect()
    assert loop_reports == []


def test_requests_in_flight_when_the_work_meanwhile_fails_are_cancelled(mast, loop_tasks, loop_reports):
    remote = RemoteFITS(file_url(f"mast:HST/product/{FINE}"))
    sci = run(remote.read_headers())["SCI"]
    mast.faults.latency = 0.5  # the rows are on their way when the file is found unusable

    async def unusable():
        raise ValueError("found unusable meanwhile")

    with pytest.raises(ValueError, match="found unusable meanwhile"):
        run(remote.read_windows([(sci, slice(10, 20), slice(5, 25))], meanwhile=unusable))
    time.sleep(0.05)
    assert loop_tasks() == []
    gc.collect()
    assert loop_reports == []


def test_a_forked_child_reads_with_threads_and_connections_of_its_own(mast, lmc_archive, in_forked_child):
    # 10000 spans never merged: many requests, sent from the shared request threads.
    spans = [(start, start + 10) for start in range(10_000, 1_010_000, 100)]

    def read():
        remote = RemoteFITS(file_url(f"mast:HST/product/{FINE}"), merge_gap=0)
        return [bytes(data) for data in run(remote.read_spans(spans))]

    local = (lmc_archive.directory / FINE).read_bytes()
    assert read() == [local[a:b] for a, b in spans]  # the parent's threads and connections exist
    mast.reset_stats()
    assert in_forked_child(read) == [local[a:b] for a, b in spans]
    assert mast.connections >= 1  # the child did not reuse the parent's sockets


def test_a_forked_child_has_a_header_cache_of_its_own(in_forked_child):
    # Another thread holds the cache's lock at the fork: the child must not wait for it.
    with LAYER_HEADERS._lock:
        assert in_forked_child(lambda: LAYER_HEADERS.get("http://nowhere/file.fits")) is None


@pytest.mark.parametrize("field", ["twocells", "polar", "ra0"])
def test_ranged_cutouts_in_every_field(mast, archives, field):
    archive = archives[field]
    for rec in archive.layers:
        same_as_local(archive.directory, rec.filename, (archive.field.ra, archive.field.dec), 5)


def test_http_urls_work_too(mast, lmc_archive):
    url = file_url(f"mast:HST/product/{FINE}")
    assert hdul_bytes(cut_layer(url, LMC, 3)) == hdul_bytes(cut_layer(lmc_archive.directory / FINE, LMC, 3))


def test_servers_that_honour_one_range_per_request(mast, lmc_archive):
    mast.faults.ranges = "first-range"
    stats = same_as_local(lmc_archive.directory, FINE, LMC, 2)
    headers, *rest = (replies := mast.requests("download"))
    # The headers' read asked how several ranges are answered: the first only (no byte at
    # 256 KB). So WHT's header and the rows came one range per request from the first (the
    # rows' gaps joined where cheaper than a request, as the round trips measured say).
    assert (headers.range, headers.status, headers.bytes_sent) == (FIRST_CONTACT, 206, 131072)
    assert all("," not in reply.range for reply in rest) and stats.requests == len(replies)


def test_a_large_first_reply_tells_the_throughput_once_small_ones_tell_the_round_trip():
    # A cutout's headers (128 KB) come first: alone they cannot tell round trip from transfer.
    server = Server("http://archive.example")
    server.saw_reply(0.030, 131_072)
    assert (server.round_trip, server.throughput) == (0.030, None)
    server.saw_reply(0.020, 2_000)  # a row: the round trip is 20 ms, so the headers took 10 ms more
    assert server.round_trip == 0.020 and server.throughput == pytest.approx(13.1072e6)
    assert server.request_worth(8) == pytest.approx(0.020 * 13.1072e6 / 8)  # 32.8 KB
    server.saw_reply(0.022, 1_000_000)  # faster still: 500 MB/s beyond the round trip
    assert server.throughput == pytest.approx(5e8)


@pytest.mark.parametrize("kind", ["first-range", "one-range"])
@pytest.mark.parametrize("overfetch", [0, 2])
def test_one_range_servers_join_spans_where_cheaper_than_a_request(mast, lmc_archive, kind, overfetch):
    mast.faults.ranges = kind
    # A request here is worth more than 25 MB (a round trip of 0.2 ms or more, 1 TB/s).
    server_of(mast.url).throughput = 1e12
    remote = RemoteFITS(file_url(f"mast:HST/product/{FINE}"))
    # Three spans of 1000 bytes 100 apart, then one 487 KB further on: every gap is cheaper
    # than a request; within twice the 4000 bytes wanted (overfetch 2), only the two of 100.
    spans = [(10_000, 11_000), (11_100, 12_100), (12_200, 13_200), (500_000, 501_000)]
    with conf.set_temp("overfetch", overfetch):
        got = run(remote.read_spans(spans))
    local = (lmc_archive.directory / FINE).read_bytes()
    assert [bytes(g) for g in got] == [local[a:b] for a, b in spans]
    first, *rest = (r.range for r in mast.requests("download"))
    assert first == "bytes=10000-13199,500000-500999"  # joined as for a multi-range server
    if overfetch == 0:  # one range per request now: all in one
        assert rest == ["bytes=10000-500999"] if kind == "one-range" else rest == ["bytes=500000-500999"]
    elif kind == "first-range":  # the first range came: the last asked for alone
        assert rest == ["bytes=500000-500999"] and remote.stats.bytes == 3200 + 1000
    else:  # the whole file, unread: both again, a request each
        assert sorted(rest) == ["bytes=10000-13199", "bytes=500000-500999"] and remote.stats.bytes == 4200


def test_one_range_servers_move_at_most_twice_the_bytes_of_a_small_box_if_asked(mast, lmc_archive):
    # Rows of a 2" box on a layer 22000 px wide: 200 bytes every 88 000. Within twice the bytes
    # wanted (overfetch 2), no gap can be joined: a request per row.
    mast.faults.ranges = "one-range"
    spans = [(10_000 + 88_000 * row, 10_200 + 88_000 * row) for row in range(50)]
    remote = RemoteFITS(file_url(f"mast:HST/product/{FINE}"))
    with conf.set_temp("overfetch", 2):
        got = run(remote.read_spans(spans))
    local = (lmc_archive.directory / FINE).read_bytes()
    assert [bytes(g) for g in got] == [local[a:b] for a, b in spans]
    assert remote.stats.bytes == 50 * 200 and remote.stats.requests == 1 + 50


def test_replies_stay_within_a_stretch_of_the_file(mast, lmc_archive):
    # 300 rows of 10 KB back to back (3 MB, as a box as wide as the layer gives): joined, they
    # would come as one reply; they end at every 1 MB of the file instead, a request each.
    remote = RemoteFITS(file_url(f"mast:HST/product/{FINE}"), stretch=1 << 20)
    spans = [(start, start + 10_000) for start in range(100_000, 3_100_000, 10_000)]
    got = run(remote.read_spans(spans))
    local = (lmc_archive.directory / FINE).read_bytes()
    assert [bytes(g) for g in got] == [local[a:b] for a, b in spans]
    assert sorted(r.range for r in mast.requests("download")) == [
        "bytes=100000-1049999",  # the first row starting past 1 MiB (1048576) starts the next
        "bytes=1050000-2099999",
        "bytes=2100000-3099999",
    ]


def test_batches_keep_every_request_within_its_header_and_reply_bounds():
    # Random span sets (seeded): offsets of 3 to 11 digits, spans of up to 5 KB or 5 MB.
    rng = np.random.default_rng(7)
    for trial in range(200):
        n = int(rng.integers(1, 3000))
        starts = np.sort(rng.integers(0, 10 ** int(rng.integers(3, 12)), n)).tolist()
        lengths = rng.integers(1, 5_000_000 if trial % 2 else 5_000, n).tolist()
        merged = [(start, start + length) for start, length in zip(starts, lengths, strict=True)]
        limit, stretch = int(rng.integers(30, 9000)), int(rng.integers(1000, 20_000_000))
        batches = request_batches(merged, several=True, header_limit=limit, stretch=stretch)
        assert [m for batch in batches for m in batch] == list(range(n))
        for batch in batches:
            header = ",".join(f"{merged[m][0]}-{merged[m][1] - 1}" for m in batch)
            size = sum(merged[m][1] - merged[m][0] for m in batch)
            assert len(batch) == 1 or (len(header) <= limit and size <= stretch)
    # Rows of a 20" cutout of a 1.65 GB layer: three requests of a third each; one each for a
    # server that takes one range per request.
    rows = [(10**9 + i * 41_136, 10**9 + i * 41_136 + 2000) for i in range(1001)]
    batches = request_batches(rows, several=True, header_limit=7600, stretch=16 << 20)
    assert [len(batch) for batch in batches] == [333, 334, 334]
    assert len(request_batches(rows, several=False, header_limit=7600, stretch=16 << 20)) == 1001


def test_servers_that_refuse_long_range_headers_are_asked_for_fewer_spans(mast, lmc_archive):
    # 1000 spans 100 bytes apart, never merged, "10000-10009," and so on: 12-14 characters each.
    # Within 7600 characters they go in two requests of ~7 KB, which this server refuses (HTTP
    # 400, as Apache does over 8 KB); at 3800 in four, refused again; at 1900 (~150 spans) they pass.
    mast.faults.max_range_header = 3000
    remote = RemoteFITS(file_url(f"mast:HST/product/{FINE}"), merge_gap=0)
    spans = [(start, start + 10) for start in range(10_000, 110_000, 100)]
    got = run(remote.read_spans(spans))
    local = (lmc_archive.directory / FINE).read_bytes()
    assert [bytes(g) for g in got] == [local[a:b] for a, b in spans]
    requests = mast.requests("download")
    assert [r.status for r in requests].count(400) == 2 + 4
    served = [r for r in requests if r.status == 206]
    assert all(len(r.range) - len("bytes=") <= 1900 for r in served)
    assert sum(r.range.count(",") + 1 for r in served) == 1000
    assert remote.range_header_limit == 1900
    assert remote.stats.requests == len(requests) == 6 + len(served)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("part-length", "a multipart part is not as long as its Content-Range says"),
        ("no-content-range", "a multipart part without Content-Range"),
        ("no-boundary", "a multipart reply without a boundary"),
    ],
)
def test_garbled_multipart_replies_are_named_never_used(mast, lmc_archive, tmp_path, kind, message):
    mast.faults.garble(kind)
    remote = RemoteFITS(file_url(f"mast:HST/product/{FINE}"), merge_gap=0)
    with pytest.raises(ArchiveError, match=f"Reading {FINE}: {message}. The archive's server misbehaved"):
        run(remote.read_spans([(10_000, 10_010), (20_000, 20_010), (30_000, 30_010)]))
    # Through the pipeline: the cutout fails with that message and nothing is written.
    mast.faults.garble(kind, count=100)
    with pytest.raises(ArchiveError, match=message):
        cutout_mosaic(LMC, 6, out_dir=tmp_path / "out", filters=["f814w"], fetch="ranged")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_servers_that_ignore_range(mast):
    mast.faults.ranges = "no-range"
    with pytest.raises(RangeNotSupported, match=r"ignores Range requests"):
        cut_layer(f"mast:HST/product/{FINE}", LMC, 2)
    # The whole file to the first contact's two ranges, without "Accept-Ranges: bytes": asked
    # for the one range, the whole file again.
    replies = [(r.range, r.status) for r in mast.requests("download")]
    assert replies == [(FIRST_CONTACT, 200), ("bytes=0-131071", 200)]


@pytest.mark.parametrize("after", [100, 5_000, 40_000])
def test_dropped_replies_are_asked_for_again(mast, lmc_archive, after):
    mast.faults.drop(after_bytes=after, count=2)
    same_as_local(lmc_archive.directory, FINE, LMC, 4)


def test_server_error_bursts_and_stalls(mast, lmc_archive):
    mast.faults.fail(502, count=3, scope="download")
    same_as_local(lmc_archive.directory, FINE, LMC, 4)
    mast.faults.stall(2.0, scope="download", after_bytes=1000, count=1)
    with conf.set_temp("timeout", 0.3):
        same_as_local(lmc_archive.directory, FINE, LMC, 4)


def test_persistent_failures_are_reported(mast):
    mast.faults.drop(after_bytes=100, count=100)
    with pytest.raises(ArchiveError, match=rf"Reading {FINE}: the transfer from MAST at .* failed"):
        cut_layer(f"mast:HST/product/{FINE}", LMC, 4)
    mast.faults.reset()
    with pytest.raises(ArchiveError, match=r"answered 404"):
        cut_layer("mast:HST/product/hst_skycell-p0081x01y01_acs_wfc_f814w_all_drc.fits", LMC, 4)


def test_cancel_between_requests(mast):
    with pytest.raises(Cancelled, match=f"Reading {FINE} cancelled"):
        cut_layer(f"mast:HST/product/{FINE}", LMC, 4, cancel=lambda: True)


def test_a_file_that_is_not_fits(mast, lmc_archive):
    remote = RemoteFITS(file_url(f"mast:HST/product/{FINE}"))
    with pytest.raises(NotMVMFileError, match=r"no FITS header at byte 100"):
        run(remote._header_at(100))


def test_a_file_shorter_than_the_first_read_is_named_for_what_it_lacks(lmc_archive, tmp_path):
    # 5760 bytes: a primary header and no extensions, served under an MVM layer's name.
    archive_dir = tmp_path / "archive"
    shutil.copytree(lmc_archive.directory, archive_dir)
    fits.PrimaryHDU(header=fits.Header([("FILENAME", FINE)])).writeto(tmp_path / FINE)
    os.replace(tmp_path / FINE, archive_dir / FINE)
    with MastServer(archive_dir) as server, using_server(server.url):
        with pytest.raises(NotMVMFileError, match=f"{FINE} is not an MVM layer: it has no SCI extension"):
            cut_layer(f"mast:HST/product/{FINE}", LMC, 4)
        assert [r.range for r in server.requests("download")] == [FIRST_CONTACT]


def test_hostile_product_names_never_reach_the_disk(mast, cache, tmp_path, caplog, monkeypatch):
    from glue_mvmcut import NoMVMDataWarning, cutout_mosaic

    monkeypatch.chdir(tmp_path)
    mast.faults.hostile_names = True
    with caplog.at_level(logging.WARNING, logger="glue_mvmcut"), pytest.warns(NoMVMDataWarning):
        table = query_layers(LMC, 10, instruments=["wfc3"])
    refused = [r.getMessage() for r in caplog.records if "Refusing the product name" in r.getMessage()]
    # Every layer of the four skycells (all instruments: MAST is asked for every layer there)
    # was listed under a bad name.
    assert len(refused) == 20 and len(table) == 0
    assert "'../../hst_skycell-" in " ".join(refused) and "'/tmp/hst_skycell-" in " ".join(refused)
    with pytest.warns(NoMVMDataWarning):
        result = cutout_mosaic(LMC, 10, instruments=["wfc3"], out_dir=tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [result.paths["query"][0].name]
    for name in ("../../{}", "/tmp/{}"):
        for rec in mast.archives[0].layers:
            assert not (tmp_path / "out" / name.format(rec.filename)).exists()
            assert not (cache / name.format(rec.filename)).exists()


def test_a_second_cutout_of_a_layer_reuses_its_headers_until_the_file_changes(lmc_archive, tmp_path):
    archive_dir = tmp_path / "archive"
    shutil.copytree(lmc_archive.directory, archive_dir)
    with MastServer(archive_dir) as server, using_server(server.url):
        first, second = TransferStats(), TransferStats()
        cut_layer(f"mast:HST/product/{FINE}", LMC, 6, stats=first)
        again = cut_layer(f"mast:HST/product/{FINE}", (84.9210, -69.1465), 4, stats=second)
        assert (first.requests, second.requests) == (2, 1)  # the pixels only
        assert hdul_bytes(again) == hdul_bytes(cut_layer(archive_dir / FINE, (84.9210, -69.1465), 4))
        # The archive reprocesses the layer: a longer WHT header moves its pixels. The cached
        # headers are found stale (size and Last-Modified differ) and read again.
        with fits.open(archive_dir / FINE) as hdul:
            for i in range(60):
                hdul["WHT"].header.add_history(f"reprocessed ({i})")
            hdul.writeto(tmp_path / FINE)
        os.replace(tmp_path / FINE, archive_dir / FINE)
        third = TransferStats()
        changed = cut_layer(f"mast:HST/product/{FINE}", LMC, 6, stats=third)
        assert hdul_bytes(changed) == hdul_bytes(cut_layer(archive_dir / FINE, LMC, 6))
        assert changed["WHT"].header["HISTORY"][-1] == "reprocessed (59)"
        assert third.requests == 1 + 4  # the stale read, then headers and pixels afresh


def _multipart_body(boundary: str, parts: list[tuple[int, int, bytes]], size: int) -> bytes:
    """A multipart/byteranges body of (start, last, data) parts, framed as Apache frames them."""
    body = b"".join(
        f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Range: bytes {start}-{last}/{size}\r\n\r\n".encode()
        + data
        for start, last, data in parts
    )
    return body + f"\r\n--{boundary}--\r\n".encode()


def _contents(parts) -> dict[int, bytes]:
    """{first file byte: bytes} of every part of a reply."""
    return {
        start: bytes(parts.body[at : at + length])
        for start, at, length in zip(
            parts.starts.tolist(), parts.at.tolist(), parts.lengths.tolist(), strict=True
        )
    }


def test_multipart_replies_as_asked_are_read_in_one_go_and_others_part_by_part():
    content_type = "multipart/byteranges; boundary=b0"
    # Offsets around powers of ten, where the heads' lengths change.
    spans = [(9, 12), (98, 101), (999, 1001), (10_000, 10_003)]
    ranges = b"9-11,98-100,999-1000,10000-10002"  # the Range header value they were asked with
    asked = [
        (start, stop - 1, bytes(range(start % 200, start % 200 + stop - start))) for start, stop in spans
    ]
    body = _multipart_body("b0", asked, 123_456)
    for given in (None, ranges):  # the heads expected built from the spans, or from the header
        parts, total = parts_as_asked(body, body.find(b"--b0"), b"b0", spans, given)
        assert total == b"123456" and _contents(parts) == {a: d for a, _, d in asked}
    # The server joined the two middle spans (RFC 7233 allows it): not as asked, read part by part.
    joined = [asked[0], (98, 1001, bytes(904)), asked[3]]
    body = _multipart_body("b0", joined, 123_456)
    assert parts_as_asked(body, body.find(b"--b0"), b"b0", spans, ranges) is None
    parts, total = parse_multipart(body, content_type, spans, ranges)
    parts = _contents(parts)
    assert sorted(parts) == [9, 98, 10_000] and len(parts[98]) == 904 and total == b"123456"
    # A later part's head that lies about its bytes fails the one-go check and then the walk.
    lying = _multipart_body("b0", asked, 123_456).replace(b"bytes 999-1000/", b"bytes 999-1001/")
    for given in (None, ranges):
        assert parts_as_asked(lying, lying.find(b"--b0"), b"b0", spans, given) is None
    with pytest.raises(ArchiveError, match="not as long as its Content-Range says"):
        parse_multipart(lying, content_type, spans, ranges)
    # Numbers that differ from those asked, each as long: framed alike, yet not as asked.
    shifted = _multipart_body("b0", [asked[0], (97, 99, asked[1][2]), *asked[2:]], 123_456)
    assert parts_as_asked(shifted, shifted.find(b"--b0"), b"b0", spans, ranges) is None
    assert sorted(_contents(parse_multipart(shifted, content_type, spans, ranges)[0])) == [9, 97, 999, 10_000]


def test_reply_bytes_reach_their_targets_run_by_run():
    # Rows of two arrays and loose buffers, spaced evenly in the reply in stretches (as multipart
    # parts are until their heads grow a digit), some overlapping: every byte lands where a
    # copy span by span puts it.
    rng = np.random.default_rng(3)
    source = memoryview(rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    for trial in range(50):
        targets, at, lengths = Targets(), [], []
        position = int(rng.integers(0, 100))
        for _ in range(int(rng.integers(1, 6))):
            rows, width = int(rng.integers(1, 40)), int(rng.integers(1, 30))
            if rng.random() < 0.5:  # an array's rows, back to back
                targets.add(np.zeros((rows, width), ">f4"), np.arange(rows) * width * 4)
                length = width * 4
            else:  # a buffer per span
                length = width
                for _ in range(rows):
                    targets.add(bytearray(length), [0])
            step = length + int(rng.integers(-length // 2, 60))  # below the length: overlapping
            for _ in range(rows):
                at.append(position)
                lengths.append(length)
                position += step + (int(rng.integers(1, 3)) if rng.random() < 0.1 else 0)
        at, lengths = np.array(at), np.array(lengths)
        copy_parts(source, at, lengths, targets, np.arange(len(at)))
        got = b"".join(bytes(buffer) for buffer in targets.buffers)
        assert got == b"".join(
            bytes(source[a : a + n]) for a, n in zip(at.tolist(), lengths.tolist(), strict=True)
        ), trial


def test_a_layer_off_its_skycells_grid_is_cut_right_all_the_same(lmc_archive, tmp_path, caplog):
    # The rows are asked for where the tessellation puts the box; this layer's WCS lies 9 px
    # (0.36") away from its skycell's, so the guess is found wrong and the right rows read.
    archive_dir = tmp_path / "archive"
    shutil.copytree(lmc_archive.directory, archive_dir)
    with fits.open(archive_dir / FINE) as hdul:
        for ext in ("SCI", "WHT"):
            hdul[ext].header["CRVAL2"] += 0.0001
        hdul.writeto(tmp_path / FINE)
    os.replace(tmp_path / FINE, archive_dir / FINE)
    with MastServer(archive_dir) as server, using_server(server.url), caplog.at_level(logging.INFO):
        stats = TransferStats()
        remote = cut_layer(f"mast:HST/product/{FINE}", LMC, 6, stats=stats)
        assert hdul_bytes(remote) == hdul_bytes(cut_layer(archive_dir / FINE, LMC, 6))
        assert stats.requests == len(server.requests("download")) == 3  # headers, guessed rows, rows
    assert "the box is not where its skycell's grid puts it" in caplog.text


def test_rows_are_read_into_the_array_given_where_they_can_be(mast, lmc_archive):
    remote = RemoteFITS(file_url(f"mast:HST/product/{FINE}"))
    sci = run(remote.read_headers())["SCI"]
    with fits.open(lmc_archive.directory / FINE) as hdul:
        truth = hdul["SCI"].data[10:20, 5:25]
    held = np.full((15, 30), -1, ">f4")
    (window,) = run(
        remote.read_windows([(sci, slice(10, 20), slice(5, 25))], into=[(held, (slice(3, 13), slice(2, 22)))])
    )
    assert np.shares_memory(window, held) and np.array_equal(window, truth)
    # The rest of the array is left as it was.
    assert (held[:3] == -1).all() and (held[13:] == -1).all() and (held[:, :2] == -1).all()
    # An array of another type (or byte order) cannot take the file's bytes: a new one is read.
    for other in (np.zeros((10, 20), "<f4"), np.zeros((10, 20), ">f8")):
        (window,) = run(
            remote.read_windows(
                [(sci, slice(10, 20), slice(5, 25))], into=[(other, (slice(0, 10), slice(0, 20)))]
            )
        )
        assert not np.shares_memory(window, other) and np.array_equal(window, truth) and not other.any()
    with pytest.raises(ValueError, match=r"\(10, 19\) pixels to hold a \(10, 20\) window of SCI"):
        run(
            remote.read_windows(
                [(sci, slice(10, 20), slice(5, 25))], into=[(held, (slice(3, 13), slice(2, 21)))]
            )
        )


def test_boxes_that_leave_the_layer_are_cut_as_from_a_local_file(mast, lmc_archive):
    # The rows are read into the cutout's arrays, 0 where the box leaves the layer.
    with fits.open(lmc_archive.directory / FINE) as hdul:
        ny, nx = hdul["SCI"].data.shape
        corner = WCS(hdul["SCI"].header).pixel_to_world(nx - 40, -30)
    cutout = cut_layer(f"mast:HST/product/{FINE}", corner, 6)
    assert hdul_bytes(cutout) == hdul_bytes(cut_layer(lmc_archive.directory / FINE, corner, 6))
    sci = cutout["SCI"].data
    assert sci.shape == (150, 150) and sci[104:, :115].all()
    assert not sci[:104].any() and not sci[:, 115:].any()


@pytest.fixture
def compressed_archive(lmc_archive, tmp_path):
    """The LMC archive with FINE's SCI and WHT tile-compressed, losslessly (GZIP, no quantizing)."""
    folder = tmp_path / "archive"
    folder.mkdir()
    for path in lmc_archive.directory.iterdir():
        if path.name != FINE:
            (folder / path.name).symlink_to(path)
    with fits.open(lmc_archive.directory / FINE) as layer:
        hdus = [layer[0].copy()]
        for hdu in layer[1:]:
            if hdu.name in ("SCI", "WHT"):
                header = hdu.header.copy()
                hdu = fits.CompImageHDU(hdu.data, header, compression_type="GZIP_2", quantize_level=0.0)
            hdus.append(hdu)
        fits.HDUList(hdus).writeto(folder / FINE)
    return folder


def test_tile_compressed_layers_are_cut_from_whole_files_never_by_ranges(
    compressed_archive, lmc_archive, tmp_path
):
    truth = cut_layer(lmc_archive.directory / FINE, LMC, 6)

    def same_cutout(cut):  # the pixels and every keyword's value (comments: astropy's own)
        for index in range(3):
            assert dict(cut[index].header) == dict(truth[index].header)
        return all(np.array_equal(cut[ext].data, truth[ext].data) for ext in ("SCI", "WHT"))

    # A local file: astropy decompresses the tiles the box touches; the same cutout.
    assert same_cutout(cut_layer(compressed_archive / FINE, LMC, 6))
    with MastServer(compressed_archive) as server, using_server(server.url):
        # Ranged: its stored rows are not the image's (wrong pixels before): refused by name.
        with pytest.raises(CompressedLayerError, match=f"{FINE}: its SCI is tile-compressed"):
            cut_layer(f"mast:HST/product/{FINE}", LMC, 6)
        assert [r.range for r in server.requests("download")] == [FIRST_CONTACT]  # headers only
        layers = query_layers(LMC, 6)
        layers = layers[layers["filter"] == "f814w"]
        with pytest.raises(CompressedLayerError):
            cutout_mosaic(LMC, 6, layers=layers, fetch="ranged", cache=tmp_path / "cache")
        # auto: that layer alone is downloaded whole, the others cut by ranges.
        server.reset_stats()
        result = cutout_mosaic(LMC, 6, layers=layers, fetch="auto", cache=tmp_path / "cache")
        whole = [r.file for r in server.requests("download") if r.method == "GET" and r.range is None]
    assert whole == [FINE]
    (cut,) = [c for c in result.cutouts if c[0].header["ORIG_FLE"] == FINE]
    assert same_cutout(cut)
