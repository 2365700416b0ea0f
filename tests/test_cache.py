"""The download cache across runs, threads and processes: parts kept and resumed unless the file
changed, one download per layer however many ask for it, and a size limit."""

import logging
import multiprocessing
import os
import shutil
import signal
import time

import pytest
from together import at_once

from glue_mvmcut import Cancelled, conf
from glue_mvmcut.core.download import download_layer
from glue_mvmcut.core.endpoints import using_server
from glue_mvmcut.core.transport import TransferStats
from glue_mvmcut.testing.server import MastServer

NAME = "hst_skycell-p0081x14y14_wfc3_ir_f160w_coarse-all_drz.fits"
OTHER = "hst_skycell-p0081x14y15_wfc3_ir_f160w_coarse-all_drz.fits"
URI = f"mast:HST/product/{NAME}"


def _gets(server):
    return [(r.range, r.status) for r in server.requests("download") if r.method == "GET"]


def test_a_part_of_a_file_that_changed_since_is_started_over(lmc_archive, cache, tmp_path):
    archive_dir = tmp_path / "archive"
    shutil.copytree(lmc_archive.directory, archive_dir)
    with MastServer(archive_dir) as server, using_server(server.url):
        with pytest.raises(Cancelled):
            download_layer(NAME, URI, cancel=lambda: True)
        stamp = (archive_dir / NAME).stat().st_mtime + 100
        os.utime(archive_dir / NAME, (stamp, stamp))  # a new version: another Last-Modified and ETag
        server.reset_stats()
        stats = TransferStats()
        path = download_layer(NAME, URI, stats=stats)
        assert path.read_bytes() == (archive_dir / NAME).read_bytes()
        assert _gets(server) == [(None, 200)] and stats.bytes == path.stat().st_size


def test_if_range_resumes_only_the_version_the_part_is_of(mast, lmc_archive):
    # The stand-in as HTTP says (RFC 9110 13.1.5): the rest if If-Range still holds, else all.
    import requests

    from glue_mvmcut.core.endpoints import file_url

    url = file_url(URI)
    head = requests.head(url, timeout=10)
    for validator, status in (
        (head.headers["ETag"], 206),
        (head.headers["Last-Modified"], 206),
        ('"old"', 200),
    ):
        reply = requests.get(url, headers={"Range": "bytes=100-", "If-Range": validator}, timeout=10)
        assert reply.status_code == status
        assert len(reply.content) == lmc_archive.layer(NAME).size - (100 if status == 206 else 0)


def test_threads_wanting_one_layer_download_it_once(mast, cache, lmc_archive):
    mast.faults.latency = 0.1  # so that the others ask while the first downloads
    paths, errors = at_once(lambda: download_layer(NAME, URI), 3, timeout=60)
    assert errors == [] and len(set(paths)) == 1
    assert paths[0].read_bytes() == (lmc_archive.directory / NAME).read_bytes()
    # One download; the two that waited found it complete (a HEAD each).
    assert _gets(mast) == [(None, 200)]
    assert [r.method for r in mast.requests("download")].count("HEAD") == 3


def _download_in_child(results):
    try:
        download_layer(NAME, URI)
        results.put("ok")
    except Exception as exc:
        results.put(repr(exc))


def test_processes_sharing_the_cache_download_a_layer_once(mast, cache, lmc_archive):
    mast.faults.latency = 0.1
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    children = [context.Process(target=_download_in_child, args=(results,)) for _ in range(3)]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(10)
    assert outcomes == ["ok"] * 3
    assert (cache / NAME).read_bytes() == (lmc_archive.directory / NAME).read_bytes()
    assert _gets(mast) == [(None, 200)]


def test_a_killed_download_is_resumed_by_the_next_run(mast, cache, lmc_archive):
    # The child receives 200 000 bytes, then the stand-in goes silent; it is killed meanwhile.
    mast.faults.stall(5.0, scope="download", after_bytes=200_000)
    context = multiprocessing.get_context("fork")
    child = context.Process(target=download_layer, args=(NAME, URI))
    child.start()
    part = cache / (NAME + ".part")
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size >= 200_000) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    held = part.stat().st_size
    assert held == 200_000  # every byte that came is written as it comes
    stats = TransferStats()
    path = download_layer(NAME, URI, stats=stats)
    assert path.read_bytes() == (lmc_archive.directory / NAME).read_bytes()
    assert stats.bytes == lmc_archive.layer(NAME).size - held  # only what was missing
    assert _gets(mast)[-1] == (f"bytes={held}-", 206)


def test_the_cache_stays_within_its_limit_and_says_so(mast, cache, lmc_archive, caplog):
    sizes = {name: lmc_archive.layer(name).size for name in (NAME, OTHER)}
    first = download_layer(NAME, URI)
    old = time.time() - 100
    os.utime(first, (old, old))  # used longer ago
    # A limit that holds either layer, not both: the least recently used goes.
    with conf.set_temp("cache_limit", (max(sizes.values()) + 1000) / 1e9):
        with caplog.at_level(logging.WARNING, logger="glue_mvmcut"):
            second = download_layer(OTHER, f"mast:HST/product/{OTHER}")
    assert second.exists() and not first.exists()
    (message,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    total = sum(sizes.values()) / 1e9
    assert message.startswith(f"The download cache {cache} held {total:.2f} GB, over its limit of ")
    assert message.endswith(f"removed 1 least recently used files ({sizes[NAME] / 1e9:.2f} GB).")
