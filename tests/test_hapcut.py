"""The seed's four functions, on the stand-in MAST."""

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyDeprecationWarning

from glue_mvmcut import make_the_cut, mvm_combine, mvm_id_filenames, mvm_retrieve_files
from glue_mvmcut.core.endpoints import PORTAL_PATHS
from glue_mvmcut.core.mast import observations

LMC = SkyCoord(84.9208, -69.1467, unit="deg")


def test_the_four_functions_in_sequence(mast, cache, lmc_archive, tmp_path):
    table = mvm_id_filenames(LMC, 20, output_dir=tmp_path)
    assert len(table) == 20
    written = Table.read(tmp_path / "mvm_query-ra84d9208-decs69d1467_15_cutout.ecsv")
    assert list(written["productFilename"]) == list(table["productFilename"])

    wfc3 = table[table["instrument"] == "wfc3"]
    paths = mvm_retrieve_files(wfc3, output_dir=tmp_path / "layers")
    assert paths == [str(tmp_path / "layers" / name) for name in wfc3["productFilename"]]
    for path in paths:
        assert Path(path).read_bytes() == (lmc_archive.directory / Path(path).name).read_bytes()
    # Everything already present: no download, no NameError (the seed's defect).
    mast.reset_stats()
    assert mvm_retrieve_files(wfc3, output_dir=tmp_path / "layers") == paths
    assert mast.requests("download") == []

    cutouts = make_the_cut(paths, "84.9208 -69.1467", [10, 20], output_dir=tmp_path / "cut")
    assert sorted(cutouts) == sorted(
        f"hst_cutout_skycell-p0081x{cell}-ra84d9208-decs69d1467_wfc3_ir_f160w{suffix}.fits"
        for cell in ("14y14", "14y15", "15y14", "15y15")
        for suffix in ("", "_coarse")
    )
    with fits.open(tmp_path / "cut" / cutouts[0]) as hdul:
        assert hdul["SCI"].data.shape in ((250, 500), (83, 167))

    mosaics = mvm_combine([tmp_path / "cut" / c for c in cutouts], output_dir=tmp_path / "mosaics")
    assert sorted(p.split("/")[-1] for p in mosaics) == [
        "hst_combined_skycells-ra84d9208-decs69d1467_wfc3_ir_f160w.fits",
        "hst_combined_skycells-ra84d9208-decs69d1467_wfc3_ir_f160w_coarse.fits",
    ]
    for path in mosaics:
        with fits.open(path) as hdul:
            assert hdul["SCI"].data.dtype == np.dtype(">f4") and hdul[0].header["NCOMBINE"] == 4
            assert hdul[0].header["COMBINE"] == "wmean"
    # A combiner of one's choice (not in the seed): the same files, by median.
    medians = mvm_combine(
        [tmp_path / "cut" / c for c in cutouts], output_dir=tmp_path / "medians", combine="median"
    )
    assert [Path(p).name for p in medians] == [Path(p).name for p in mosaics]
    with fits.open(medians[0]) as median, fits.open(mosaics[0]) as mean:
        assert median[0].header["COMBINE"] == "median"
        np.testing.assert_array_equal(median["WHT"].data, mean["WHT"].data)  # sums, both


def test_make_the_cut_takes_a_single_string(lmc_archive, tmp_path):
    layer = str(lmc_archive.directory / "hst_skycell-p0081x14y14_acs_wfc_f658n_all_drc.fits")
    assert make_the_cut(layer, LMC, 4, output_dir=tmp_path) == [
        "hst_cutout_skycell-p0081x14y14-ra84d9208-decs69d1467_acs_wfc_f658n.fits"
    ]


def test_the_query_table_carries_masts_product_columns_for_astroquery(mast, lmc_archive, tmp_path):
    # The seed returned MAST's product table; astroquery's own download_products takes ours too.
    table = mvm_id_filenames(LMC, 20, output_dir=tmp_path)
    assert {"obsID", "obs_collection", "productType", "productSubGroupDescription"} <= set(table.colnames)
    assert set(table["obs_collection"]) == {"HST"} and list(table["obsID"]) == list(table["obsid"])
    first = table[table["productFilename"] == "hst_skycell-p0081x14y14_acs_wfc_f658n_all_drc.fits"]
    manifest = observations().download_products(first, download_dir=str(tmp_path / "astroquery"))
    assert list(manifest["Status"]) == ["COMPLETE"]
    got = Path(manifest["Local Path"][0]).read_bytes()
    assert got == (lmc_archive.directory / first["productFilename"][0]).read_bytes()


def test_the_seeds_own_functions_take_our_tables(mast, lmc_archive, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # importing hapcut_utils opens a log file in the current folder
    hapcut_utils = pytest.importorskip("drizzlepac.haputils.hapcut_utils")
    from astroquery.mast import Observations

    # The seed downloads with astroquery's shared Observations, whose URLs were made from
    # [mast] server at import: aim them at the stand-in, as a user's astroquery.cfg would.
    portal = Observations._portal_api_connection
    for attribute, path in PORTAL_PATHS.items():
        monkeypatch.setattr(portal, attribute, mast.url + path)
    first = mvm_id_filenames(LMC, 20, output_dir=tmp_path)[:1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyDeprecationWarning)  # deprecated since drizzlepac 3.11
        names = hapcut_utils.mvm_retrieve_files(first)
    assert [Path(name).name for name in names] == list(first["productFilename"])
    assert (tmp_path / names[0]).read_bytes() == (lmc_archive.directory / names[0]).read_bytes()
