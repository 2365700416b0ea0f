"""The real MAST, over the internet: skipped unless ``pytest --remote-data=any``.

Run by hand now and then (``pytest --remote-data=any tests/test_real_mast.py``) to learn whether
the archive still answers as the stand-in does: names, columns, footprints, files and ranges.
What is asserted is what MAST documents and what astroquery's own recorded replies show, never
a count of layers (the archive grows).
"""

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits

from glue_mvmcut.core.cutout import cut_layer
from glue_mvmcut.core.download import download_layer
from glue_mvmcut.core.endpoints import using_server
from glue_mvmcut.core.footprints import parse_region
from glue_mvmcut.core.mast import query_layers, resolve_name
from glue_mvmcut.core.names import LayerName
from glue_mvmcut.core.probe import check_server
from glue_mvmcut.core.servers import RANGE_KINDS
from glue_mvmcut.core.transport import TransferStats

pytestmark = pytest.mark.remote_data

MAST = "https://mast.stsci.edu"
#: NGC 1850 in the LMC, as SIMBAD gives it (05h08m44.0s -68d45m39s).
NGC1850 = SkyCoord("05h08m44.0s", "-68d45m39s")


@pytest.fixture(autouse=True)
def real_mast():
    with using_server(MAST):
        yield


@pytest.fixture(scope="module")
def layers():
    with using_server(MAST):
        return query_layers(NGC1850, 10)


def test_ngc1850_resolves_where_simbad_puts_it():
    assert resolve_name("NGC 1850").separation(NGC1850).arcsec < 10


def test_the_mvm_layers_there_have_names_footprints_and_columns_as_documented(layers):
    assert len(layers) > 0
    for row in layers:
        name = LayerName.parse(row["productFilename"])  # the name grammar of every layer
        assert row["dataURI"] == f"mast:HST/product/{name.filename}"
        assert parse_region(row["s_region"]).hits_cone(NGC1850.ra.deg, NGC1850.dec.deg, 10 / 3600)
    # MAST's product columns come through, as astroquery's download_products needs them.
    for column in ("obsID", "obs_collection", "productFilename", "dataURI", "size"):
        assert column in layers.colnames


def test_a_ranged_cutout_equals_the_same_box_cut_from_the_downloaded_layer(layers, tmp_path):
    smallest = layers[int(np.argmin(layers["size"]))]
    stats = TransferStats()
    ranged = cut_layer(smallest["dataURI"], NGC1850, 5, stats=stats)
    assert stats.bytes < 0.1 * smallest["size"]  # a few rows and headers, not the file
    path = download_layer(smallest["productFilename"], smallest["dataURI"], cache=tmp_path)
    with fits.open(path) as hdul:
        assert hdul["SCI"].header.get("XTENSION") == "IMAGE"  # uncompressed, as MVM is
    local = cut_layer(path, NGC1850, 5)
    for ext in ("SCI", "WHT"):
        np.testing.assert_array_equal(ranged[ext].data, local[ext].data)
        assert ranged[ext].header.tostring() == local[ext].header.tostring()


def test_check_server_reports_on_the_real_archive():
    report = check_server((NGC1850.ra.deg, NGC1850.dec.deg))
    assert report.server == MAST and report.ranges in RANGE_KINDS
    assert LayerName.parse(report.layer).filename == report.layer
    assert report.round_trip > 0 and len(report.lines()) == 11
    # Whether MAST answers pipelined requests in order is what this run is to tell.
    assert report.pipelining.startswith(("answered in order", "not taken", "not tried"))
    print("\n".join(report.lines()))  # what the docs' configuration page should show
