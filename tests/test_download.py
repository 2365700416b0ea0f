"""Whole-file downloads: cache, verification, atomic rename, refusal of hostile names."""

import re

import pytest

from glue_mvmcut import ArchiveError, Cancelled, UnsafeNameError
from glue_mvmcut.core.download import cache_dir, download_layer
from glue_mvmcut.core.names import safe_filename
from glue_mvmcut.core.transport import TransferStats

NAME = "hst_skycell-p0081x14y14_wfc3_ir_f160w_coarse-all_drz.fits"
URI = f"mast:HST/product/{NAME}"


def test_download_verifies_and_caches(mast, cache, lmc_archive):
    seen = []
    stats = TransferStats()
    path = download_layer(NAME, URI, progress=lambda *a: seen.append(a), stats=stats)
    assert path == cache / NAME
    assert path.read_bytes() == (lmc_archive.directory / NAME).read_bytes()
    assert seen[-1] == (path.stat().st_size, path.stat().st_size, NAME)
    assert (stats.bytes, stats.requests) == (path.stat().st_size, 2)
    download_layer(NAME, URI, stats=stats)  # cached: HEAD only
    assert (stats.bytes, stats.requests) == (path.stat().st_size, 3)
    download_layer(NAME, URI, stats=stats, overwrite=True)
    assert (stats.bytes, stats.requests) == (2 * path.stat().st_size, 5)


def test_a_cached_file_of_the_wrong_size_is_fetched_again(mast, cache, lmc_archive):
    (cache_dir() / NAME).write_bytes(b"stale")
    path = download_layer(NAME, URI)
    assert path.read_bytes() == (lmc_archive.directory / NAME).read_bytes()


def test_cache_directory_settings(tmp_path, monkeypatch):
    from glue_mvmcut import conf

    monkeypatch.delenv("MVMCUT_CACHE_DIR", raising=False)
    with conf.set_temp("cache_dir", str(tmp_path / "configured")):
        assert cache_dir() == tmp_path / "configured"
        monkeypatch.setenv("MVMCUT_CACHE_DIR", str(tmp_path / "env"))
        assert cache_dir() == tmp_path / "env"
        assert cache_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_a_dropped_body_resumes_where_it_stopped(mast, cache, lmc_archive):
    size = lmc_archive.layer(NAME).size
    mast.faults.drop(after_bytes=100_000, count=2)
    stats = TransferStats()
    path = download_layer(NAME, URI, stats=stats)
    assert path.read_bytes() == (lmc_archive.directory / NAME).read_bytes()
    gets = [r for r in mast.requests("download") if r.method == "GET"]
    # Every byte that came before a break is kept: none is fetched twice.
    assert [r.range for r in gets] == [None, "bytes=100000-", "bytes=200000-"]
    assert stats.bytes == size
    assert sum(r.bytes_sent for r in gets) == size


def test_a_server_that_never_says_the_size_is_verified_by_the_files_structure(mast, cache, lmc_archive):
    # MAST sometimes sends files without Content-Length (astroquery #3290), HEAD included.
    mast.faults.content_length = False
    stats = TransferStats()
    path = download_layer(NAME, URI, stats=stats)
    assert path.read_bytes() == (lmc_archive.directory / NAME).read_bytes()
    assert (stats.bytes, stats.requests) == (path.stat().st_size, 2)
    download_layer(NAME, URI, stats=stats)  # a complete file in the cache: HEAD only
    assert (stats.bytes, stats.requests) == (path.stat().st_size, 3)


def test_without_sizes_a_dropped_body_is_known_by_its_structure_and_resumed(mast, cache, lmc_archive):
    # The connection closing is the body's end: only the FITS structure tells it came short.
    mast.faults.content_length = False
    mast.faults.drop(after_bytes=100_000)
    path = download_layer(NAME, URI)
    assert path.read_bytes() == (lmc_archive.directory / NAME).read_bytes()
    first, second = [r for r in mast.requests("download") if r.method == "GET"]
    assert (first.range, first.bytes_sent) == (None, 100_000)
    assert (second.range, second.status) == ("bytes=100000-", 206)


def test_without_range_a_broken_download_starts_again(mast, cache, lmc_archive):
    size = lmc_archive.layer(NAME).size
    mast.faults.ranges = "no-range"
    mast.faults.drop(after_bytes=100_000, count=1)
    stats = TransferStats()
    path = download_layer(NAME, URI, stats=stats)
    assert path.stat().st_size == size
    gets = [r for r in mast.requests("download") if r.method == "GET"]
    # It asks to resume; the server answers 200 with the whole file, which replaces the part.
    assert [(r.range, r.status) for r in gets] == [(None, 200), ("bytes=100000-", 200)]
    assert mast.bytes_sent == size + 100_000


def test_a_transfer_that_keeps_breaking_without_progress_is_given_up(mast, cache):
    # Every attempt breaks before its first byte.
    mast.faults.drop(after_bytes=0, count=20)
    with pytest.raises(
        ArchiveError,
        match=rf"Downloading {NAME}: the transfer broke off 5 times in a row without progress "
        r"\(last at byte 0 of \d+: .*\); nothing was kept",
    ):
        download_layer(NAME, URI)
    assert _files(cache) == []


def test_a_transfer_that_keeps_breaking_but_moves_on_finishes(mast, cache, lmc_archive):
    # Eight breaks, more than conf.retries (4), each after 100 000 bytes more: the budget counts
    # the attempts in a row that brought nothing, and there are none.
    mast.faults.drop(after_bytes=100_000, count=8)
    stats = TransferStats()
    path = download_layer(NAME, URI, stats=stats)
    assert path.read_bytes() == (lmc_archive.directory / NAME).read_bytes()
    gets = [r.range for r in mast.requests("download") if r.method == "GET"]
    assert gets == [None] + [f"bytes={100_000 * k}-" for k in range(1, 9)]
    assert stats.bytes == lmc_archive.layer(NAME).size


def _files(cache) -> list[str]:
    """The cache's files (not its folder of locks)."""
    return sorted(p.name for p in cache.iterdir() if p.is_file())


def test_server_error_bursts_are_retried(mast, cache, lmc_archive):
    mast.faults.fail(503, count=3, scope="download")
    assert download_layer(NAME, URI).stat().st_size == lmc_archive.layer(NAME).size
    assert [r.status for r in mast.requests("download")][:3] == [503, 503, 503]


def test_persistent_server_errors_are_reported(mast, cache):
    mast.faults.fail(503, count=50, scope="download")
    with pytest.raises(ArchiveError, match=r"answered 503 Server Error"):
        download_layer(NAME, URI)
    mast.faults.reset()
    with pytest.raises(ArchiveError, match=r"answered 404 Client Error"):
        download_layer(
            "hst_skycell-p0081x01y01_acs_wfc_f814w_all_drc.fits",
            "mast:HST/product/hst_skycell-p0081x01y01_acs_wfc_f814w_all_drc.fits",
        )
    assert _files(cache) == []


def test_a_stalled_download_times_out_then_resumes(mast, cache, lmc_archive):
    from glue_mvmcut import conf

    mast.faults.stall(2.0, scope="download", after_bytes=70_000, count=1)
    with conf.set_temp("timeout", 0.3):
        path = download_layer(NAME, URI)
    assert path.read_bytes() == (lmc_archive.directory / NAME).read_bytes()


def test_a_cancelled_download_keeps_its_part_and_the_next_run_resumes_it(mast, cache, lmc_archive):
    with pytest.raises(Cancelled, match=f"Download of {NAME} cancelled; its \\d+ bytes are kept") as info:
        download_layer(NAME, URI, cancel=lambda: True)
    kept = int(re.search(r"its (\d+) bytes", str(info.value)).group(1))  # the first block that came
    assert 0 < kept == (cache / (NAME + ".part")).stat().st_size
    assert _files(cache) == [NAME + ".part", NAME + ".part.json"]  # never under its final name
    mast.reset_stats()
    stats = TransferStats()
    path = download_layer(NAME, URI, stats=stats)
    assert path.read_bytes() == (lmc_archive.directory / NAME).read_bytes()
    assert stats.bytes == lmc_archive.layer(NAME).size - kept
    (get,) = [r for r in mast.requests("download") if r.method == "GET"]
    assert (get.range, get.status) == (f"bytes={kept}-", 206)
    assert _files(cache) == [NAME]


@pytest.mark.parametrize(
    "name",
    [
        "../evil.fits",
        "/etc/passwd",
        "a/b.fits",
        "a\\b.fits",
        "..",
        ".",
        "",
        "bad\x00name.fits",
        "line\nbreak.fits",
        "C:evil.fits",
        "~root.fits",
    ],
)
def test_hostile_names_are_refused(name, cache):
    with pytest.raises(UnsafeNameError, match="Refusing the product name"):
        safe_filename(name)
    with pytest.raises(UnsafeNameError):
        download_layer(name, f"mast:HST/product/{name}")
    assert list(cache.glob("**/*")) == []


def test_a_uri_for_another_file_is_refused(cache):
    with pytest.raises(UnsafeNameError, match="has a dataURI for another file"):
        download_layer(NAME, "mast:HST/product/../../other.fits")


def test_a_download_never_writes_past_the_size_announced(mast, cache):
    # HEAD says 100 000 bytes; the GET, with no Content-Length, sends the whole file.
    mast.faults.content_length = False
    mast.faults.announced_size = 100_000
    with pytest.raises(ArchiveError, match=rf"Downloading {NAME}: MAST sent more than the 100000 bytes"):
        download_layer(NAME, URI)
    assert (cache / (NAME + ".part")).stat().st_size == 100_000  # what fitted, kept
    assert not (cache / NAME).exists()
