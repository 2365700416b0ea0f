"""Every kind of server: how it answers Range requests is learned, never assumed, and requests
follow redirects (a few, to http(s) only) and keep going where they were sent."""

import json
import shutil

import numpy as np
import pytest
from astropy.io import fits
from sameness import FIRST_CONTACT, same_as_local

from glue_mvmcut import ArchiveError, check_server
from glue_mvmcut.cli import main as mvmcut
from glue_mvmcut.core.cutout import cut_layer
from glue_mvmcut.core.download import download_layer
from glue_mvmcut.core.endpoints import file_url
from glue_mvmcut.core.remote import RangeNotSupported, RemoteFITS
from glue_mvmcut.core.servers import location, server_of
from glue_mvmcut.core.transport import RedirectError, TransferStats, run
from glue_mvmcut.testing.server import MastServer

LMC = (84.9208, -69.1467)
FINE = "hst_skycell-p0081x14y15_acs_wfc_f814w_all_drc.fits"
SECOND = "hst_skycell-p0081x15y15_acs_wfc_f814w_all_drc.fits"


@pytest.mark.parametrize("kind", ["multipart", "first-range", "one-range"])
def test_every_server_that_serves_ranges_gives_the_local_cutout(mast, lmc_archive, kind):
    mast.faults.ranges = kind
    stats = TransferStats()
    for name in (FINE, SECOND):
        same_as_local(lmc_archive.directory, name, LMC, 6, stats=stats)
    assert server_of(mast.url).ranges == kind
    replies = [(r.status, "," in r.range) for r in mast.requests("download")]
    # Each layer's header read (one range, and on the first contact a byte more, which asks
    # how several are answered), then its rows and WHT's header (several). Counted, not
    # ordered: requests in flight together may be stamped in either order.
    if kind == "multipart":  # headers, then every row in one multipart reply: per layer
        assert sorted(replies) == [(206, False), (206, True), (206, True), (206, True)]
    elif kind == "first-range":  # the headers came, not the byte: one range per request from then on
        assert replies.count((206, True)) == 1 and replies.count((206, False)) == len(replies) - 1
    else:  # the whole file to the two ranges, its headers read of it: one range per request
        assert replies.count((200, True)) == 1 and replies.count((206, False)) == len(replies) - 1
    # Learned from the first request, the headers' read, alone.
    assert mast.requests("download")[0].range == FIRST_CONTACT
    # Never the whole files (for one-range, not the whole file it was sent: its first 128 KB).
    assert stats.bytes < 0.5 * sum(lmc_archive.layer(name).size for name in (FINE, SECOND))


def test_a_server_without_range_is_learned_and_not_asked_again(mast):
    mast.faults.ranges = "no-range"
    with pytest.raises(
        RangeNotSupported, match=rf"{mast.url.removeprefix('http://')} ignores Range requests"
    ):
        cut_layer(f"mast:HST/product/{FINE}", LMC, 4)
    with pytest.raises(RangeNotSupported):
        cut_layer(f"mast:HST/product/{SECOND}", LMC, 4)
    # The first contact's two ranges, then one, got the whole file; nothing was asked again.
    assert len(mast.requests("download")) == 2 and server_of(mast.url).ranges == "no-range"


@pytest.mark.parametrize(
    "kind, replies",
    [
        ("multipart", [(FIRST_CONTACT, 206)]),
        ("first-range", [(FIRST_CONTACT, 206)]),  # the headers, not the byte
        ("one-range", [(FIRST_CONTACT, 200)]),  # the whole file: its first 128 KB read, the rest left
        ("no-range", [(FIRST_CONTACT, 200), ("bytes=0-131071", 200)]),  # no "Accept-Ranges": one range tells
    ],
)
def test_the_first_read_of_a_server_learns_how_it_answers_several_ranges(mast, lmc_archive, kind, replies):
    mast.faults.ranges = kind
    remote = RemoteFITS(file_url(f"mast:HST/product/{FINE}"))
    if kind == "no-range":
        with pytest.raises(RangeNotSupported):
            run(remote.read_headers(("SCI",)))
    else:
        sci = run(remote.read_headers(("SCI",)))["SCI"]
        with fits.open(lmc_archive.directory / FINE) as hdul:
            assert (sci.data_offset, sci["NAXIS1"]) == (hdul.fileinfo(1)["datLoc"], hdul[1].header["NAXIS1"])
        # Of the whole file (one-range), only the headers' bytes were read.
        read = mast.bytes_sent if kind == "multipart" else 131072  # (multipart: the framing too)
        assert (remote.size, remote.stats.bytes) == (lmc_archive.layer(FINE).size, read)
    assert [(r.range, r.status) for r in mast.requests("download")] == replies
    assert server_of(mast.url).ranges == kind


def test_a_first_read_that_cannot_tell_learns_nothing(mast, lmc_archive, tmp_path):
    # A file shorter than where the byte asked lies: the server sends the one range it can.
    archive_dir = tmp_path / "archive"
    shutil.copytree(lmc_archive.directory, archive_dir)
    pixels = np.arange(100, dtype=np.float32).reshape(10, 10)
    small = [fits.PrimaryHDU(), fits.ImageHDU(pixels, name="SCI"), fits.ImageHDU(pixels, name="WHT")]
    fits.HDUList(small).writeto(archive_dir / FINE, overwrite=True)
    with MastServer(archive_dir) as server:
        server.faults.ranges = "first-range"
        remote = RemoteFITS(f"{server.url}/api/v0.1/Download/file?uri=mast:HST/product/{FINE}")
        assert run(remote.read_headers())["WHT"].data_offset == 4 * 2880
        assert [r.range for r in server.requests("download")] == [FIRST_CONTACT]
        assert server_of(server.url).ranges is None
    # A server that refuses two ranges (here: a Range header longer than 20 characters).
    mast.faults.max_range_header = 20
    remote = RemoteFITS(file_url(f"mast:HST/product/{FINE}"))
    assert run(remote.read_headers(("SCI",)))["SCI"].name == "SCI"
    assert [(r.range, r.status) for r in mast.requests("download")] == [
        (FIRST_CONTACT, 400),
        ("bytes=0-131071", 206),
    ]
    assert server_of(mast.url).ranges is None


@pytest.fixture
def storage(lmc_archive):
    """A second stand-in, on another port, serving the same files (cloud storage, say)."""
    with MastServer(lmc_archive.directory) as server:
        yield server


@pytest.mark.parametrize("status", [302, 307])
def test_ranged_reads_follow_redirects_and_keep_going_there(mast, storage, lmc_archive, status):
    mast.faults.redirect_to, mast.faults.redirect_status = storage.url, status
    same_as_local(lmc_archive.directory, FINE, LMC, 6)
    url = f"{mast.url}/api/v0.1/Download/file?uri=mast:HST/product/{FINE}"
    # The first request was redirected (its Range kept); the second went straight there.
    assert [r.status for r in mast.requests("download")] == [status]
    assert [r.status for r in storage.requests("download")] == [206, 206]
    assert location(url) == storage.url + url.removeprefix(mast.url)
    # What was learned is the storage's: its header lengths, its way with ranges.
    assert server_of(storage.url).header_lengths["WHT"] == 2 * 2880
    assert server_of(storage.url).ranges == "multipart" and server_of(mast.url).ranges is None
    # Another file, redirected there too: its first read does not ask again how several ranges
    # are answered (the first file's did).
    same_as_local(lmc_archive.directory, SECOND, LMC, 6)
    replies = storage.requests("download")
    firsts = [next(r.range for r in replies if r.file == name) for name in (FINE, SECOND)]
    assert firsts[0] == FIRST_CONTACT and "," not in firsts[1]


def test_a_redirected_address_that_fails_is_left_for_the_files_own(mast, storage, lmc_archive):
    mast.faults.redirect_to = storage.url
    same_as_local(lmc_archive.directory, FINE, LMC, 4)
    storage.faults.fail(403, count=1, scope="download")  # as a signed address that expired
    same_as_local(lmc_archive.directory, FINE, LMC, 8)
    assert [r.status for r in storage.requests("download")] == [206, 206, 403, 206]
    assert [r.status for r in mast.requests("download")] == [302, 302]


def test_a_redirected_address_that_keeps_failing_is_reported_not_looped(mast, storage, lmc_archive):
    mast.faults.redirect_to = storage.url
    same_as_local(lmc_archive.directory, FINE, LMC, 4)
    storage.faults.fail(403, count=10, scope="download")
    with pytest.raises(ArchiveError, match=r"answered 403"):
        cut_layer(f"mast:HST/product/{FINE}", LMC, 8)
    # Asked where it was sent, then at its own address once (sent there again): no more.
    assert [r.status for r in storage.requests("download")] == [206, 206, 403, 403]


@pytest.mark.parametrize(
    "to, message",
    [
        ("self", r"redirected more than 5 times \(a loop\?\), last to http://127\.0\.0\.1"),
        (
            "ftp://127.0.0.1:1",
            r"redirected to ftp://127\.0\.0\.1:1/api/.*, not an http\(s\) address: refused",
        ),
    ],
)
def test_redirect_loops_and_other_schemes_are_refused(mast, cache, to, message):
    mast.faults.redirect_to = mast.url if to == "self" else to
    with pytest.raises(RedirectError, match=rf"Reading {FINE}: {message}"):
        cut_layer(f"mast:HST/product/{FINE}", LMC, 4)
    assert len(mast.requests("download")) == (6 if to == "self" else 1)
    with pytest.raises(RedirectError, match=rf"Downloading {FINE}: {message}"):
        download_layer(FINE, f"mast:HST/product/{FINE}")
    assert not [path for path in cache.iterdir() if path.is_file()]
    assert issubclass(RedirectError, ArchiveError)


def test_downloads_follow_redirects(mast, storage, cache, lmc_archive):
    mast.faults.redirect_to = storage.url
    path = download_layer(FINE, f"mast:HST/product/{FINE}")
    assert path.read_bytes() == (lmc_archive.directory / FINE).read_bytes()
    assert [(r.method, r.status) for r in storage.requests("download")] == [("HEAD", 200), ("GET", 200)]


@pytest.mark.parametrize("kind", ["multipart", "first-range", "one-range", "no-range"])
def test_check_server_tells_each_kind_and_what_the_cutter_will_do(mast, lmc_archive, kind):
    mast.faults.ranges = kind
    report = check_server()
    smallest = min(lmc_archive.layers, key=lambda rec: rec.size)
    assert (report.server, report.layer, report.layer_size) == (mast.url, smallest.filename, smallest.size)
    assert (report.ranges, report.redirects, report.http_version) == (kind, [], "HTTP/1.1")
    assert report.accept_ranges == (None if kind == "no-range" else "bytes")
    assert report.round_trip > 0 and (report.throughput > 0) == (kind != "no-range")
    lines = report.lines()
    assert (
        lines[6]
        == "several ranges:  "
        + {
            "multipart": "206 multipart/byteranges, every range",
            "first-range": "206 with the first range only",
            "one-range": "200 with the whole file (as object stores answer)",
            "no-range": "200 with the whole file",
        }[kind]
    )
    assert lines[7] == "pipelining:      " + (
        "(not tried)" if kind == "no-range" else "answered in order (4 of 4 requests)"
    )
    assert lines[-1].startswith("the cutter will: " + ("whole-layer" if kind == "no-range" else "ranged"))


@pytest.mark.parametrize(
    ("pipelining", "said"),
    [
        ("closes", "not taken: the server closed the connection after 1 replies (4 sent)"),
        ("loses", "not taken: the server fell silent after 1 replies (4 sent)"),
    ],
)
def test_check_server_tells_whether_the_server_takes_pipelined_requests(mast, pipelining, said):
    mast.faults.ranges, mast.faults.pipelining = "one-range", pipelining
    report = check_server()
    assert report.pipelining == said and report.lines()[7] == "pipelining:      " + said
    assert report.plan == (
        "ranged cutouts, one range per request, one at a time over up to 8 connections; "
        "rows joined where cheaper than a request"
    )


def test_check_server_follows_redirects_and_says_where(mast, storage, capsys):
    mast.faults.redirect_to = storage.url
    assert mvmcut(["check-server", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    layer_url = f"/api/v0.1/Download/file?uri=mast:HST/product/{report['layer']}"
    assert report["redirects"] == [storage.url + layer_url] and report["ranges"] == "multipart"
    assert report["plan"].startswith("ranged cutouts, a box's rows in a few multi-range requests")


def test_check_server_names_a_place_without_layers(mast, capsys):
    assert mvmcut(["check-server", "--at", "10", "10"]) == 1
    assert capsys.readouterr().err.startswith(
        f"mvmcut: error: Checking the server: MAST at {mast.url} lists no MVM layer at (10.0, 10.0)."
    )
