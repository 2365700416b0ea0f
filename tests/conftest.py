"""Shared fixtures: one synthetic archive and one stand-in MAST server per test session.

Every test talks to the stand-in over 127.0.0.1 with the real astroquery client, but those
marked ``remote_data`` (tests/test_real_mast.py), which talk to the real MAST and run only with
``pytest --remote-data=any`` (pytest-remotedata, as astroquery's own tests do; it also keeps
every other test off the internet).
"""

import asyncio
import gc
import multiprocessing
import os
import queue
import shutil

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from glue_mvmcut import conf
from glue_mvmcut.core.endpoints import using_server
from glue_mvmcut.core.fitsheaders import LAYER_HEADERS
from glue_mvmcut.core.servers import forget_servers
from glue_mvmcut.core.transport import run
from glue_mvmcut.testing.server import MastServer
from glue_mvmcut.testing.synth import build_archive

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def _qt_objects_freed_on_the_gui_thread(request):
    """In a test with Qt widgets, Python's cyclic garbage collector runs only on the GUI thread,
    between tests: left to itself it runs on whichever thread allocates when a threshold is
    crossed (a worker's, the stand-in's, the I/O loop's), and a Qt object it frees there (a
    closed Glue window of an earlier test, a viewer) is destroyed off the GUI thread, which Qt
    does not allow: a crash, or a deadlock, now and then, more often under load."""
    if "qtbot" not in request.fixturenames:
        yield
        return
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


@pytest.fixture(scope="session", autouse=True)
def _quick_retries():
    """Retries as in production, but with 10 ms backoff so fault tests stay quick."""
    with conf.set_temp("backoff", 0.01):
        yield


@pytest.fixture(scope="session")
def archives(tmp_path_factory):
    """Synthetic archives of every test field (see glue_mvmcut.testing.synth.FIELDS)."""
    return {
        name: build_archive(tmp_path_factory.mktemp(name), name)
        for name in ("lmc", "twocells", "polar", "ra0")
    }


@pytest.fixture(scope="session")
def lmc_archive(archives):
    """The seed's LMC field: four skycells of p0081, ACS/WFC and WFC3/IR (fine and coarse)."""
    return archives["lmc"]


@pytest.fixture(scope="session")
def scaled_archive(archives, tmp_path_factory):
    """The two-cell field, its F814W layers stored as int16 with BSCALE/BZERO (SCI and WHT) and
    BLANK (SCI: a 3 x 4 patch at the field centre blanked), as some archives store images."""
    folder = tmp_path_factory.mktemp("scaled") / "twocells"
    shutil.copytree(archives["twocells"].directory, folder)
    for path in folder.glob("*_f814w_*.fits"):
        with fits.open(path) as hdul:
            hdul = fits.HDUList([hdu.copy() for hdu in hdul])
        sci, wht = hdul["SCI"], hdul["WHT"]
        sci.scale("int16", bscale=float(np.ptp(sci.data)) / 60000, bzero=float(sci.data.mean()))
        wht.scale("int16", bscale=0.25, bzero=4000.0)
        x, y = (int(v) for v in np.round(WCS(sci.header).world_to_pixel(SkyCoord(182.2, 26.0, unit="deg"))))
        if 0 <= x < sci.data.shape[1] and 0 <= y < sci.data.shape[0]:
            sci.header["BLANK"] = -32768
            sci.data[y - 1 : y + 2, x - 2 : x + 2] = -32768
        hdul.writeto(path, overwrite=True)
    return folder


@pytest.fixture(scope="session")
def _server(archives):
    with MastServer(list(archives.values())) as server:
        yield server


@pytest.fixture
def mast(_server):
    """The stand-in MAST serving every test field, with faults off, empty records, and
    astroquery pointed at it."""
    _server.faults.reset()
    _server.reset_stats()
    with using_server(_server.url):
        yield _server
    _server.faults.reset()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """An empty cache (downloads, MAST's answers) for each test (through MVMCUT_CACHE_DIR), so
    that no test finds what another left, nor writes into the user's own cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("MVMCUT_CACHE_DIR", str(path))
    return path


@pytest.fixture(autouse=True)
def _nothing_learned():
    """Each test starts without layer headers or servers' ways remembered from another test's
    cutouts."""
    LAYER_HEADERS.clear()
    forget_servers()
    yield
    LAYER_HEADERS.clear()
    forget_servers()


@pytest.fixture
def in_forked_child():
    """``run(function)``: call ``function()`` in a child forked from this process (with the thread
    pools and connections it has used) and return what it returns; fail if it hangs for 60 s."""

    def run(function):
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        child = context.Process(target=lambda: results.put(function()))
        child.start()
        try:
            result = results.get(timeout=60)  # before join: a large result fills the pipe
        except queue.Empty:
            pytest.fail("the forked child hung")
        finally:
            child.join(5)
            if child.is_alive():
                child.kill()
        assert child.exitcode == 0
        return result

    return run


@pytest.fixture
def loop_tasks():
    """``loop_tasks()``: the tasks on the process's I/O loop (but the one asking)."""

    async def tasks():
        return [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]

    return lambda: run(tasks())
