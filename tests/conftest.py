"""Shared fixtures: one synthetic archive and one stand-in MAST server per test session.

Every test talks to the stand-in over 127.0.0.1 with the real astroquery client.
"""

import os

import pytest

from glue_mvmcut.core.archive import using_server
from glue_mvmcut.testing.server import MastServer
from glue_mvmcut.testing.synth import build_archive

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def pytest_addoption(parser):
    parser.addoption("--remote-data", action="store_true", help="run tests that need the real MAST")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--remote-data"):
        return
    skip = pytest.mark.skip(reason="needs the real MAST: run with --remote-data")
    for item in items:
        if "remote_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def lmc_archive(tmp_path_factory):
    """The seed's LMC field: four skycells of p0081, ACS/WFC and WFC3/IR (fine and coarse)."""
    return build_archive(tmp_path_factory.mktemp("lmc"), "lmc")


@pytest.fixture(scope="session")
def _lmc_server(lmc_archive):
    with MastServer(lmc_archive) as server:
        yield server


@pytest.fixture
def mast(_lmc_server):
    """The stand-in MAST, with faults off and empty records, and astroquery pointed at it."""
    _lmc_server.faults.reset()
    _lmc_server.reset_stats()
    with using_server(_lmc_server.url):
        yield _lmc_server
    _lmc_server.faults.reset()
