"""The documentation's examples run (``pytest docs``) against the synthetic LMC archive served by
the stand-in MAST, in a scratch folder, exactly as they would against MAST. They show results,
not the INFO lines the package logs meanwhile (see "Messages" in config.rst)."""

import logging

import pytest

from glue_mvmcut.core.endpoints import using_server
from glue_mvmcut.testing.server import MastServer
from glue_mvmcut.testing.synth import build_archive


@pytest.fixture(scope="session")
def _docs_archive(tmp_path_factory):
    archive = build_archive(tmp_path_factory.mktemp("lmc"), "lmc")
    with MastServer(archive) as server:
        yield server


@pytest.fixture(autouse=True)
def _docs_environment(_docs_archive, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MVMCUT_CACHE_DIR", str(tmp_path / "cache"))
    logger = logging.getLogger("glue_mvmcut")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with using_server(_docs_archive.url):
            yield
    finally:
        logger.setLevel(level)
