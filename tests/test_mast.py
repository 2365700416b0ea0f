"""query_layers: the MVM layers over a box, through astroquery, against the stand-in MAST."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.utils.exceptions import AstropyWarning

from glue_mvmcut import ArchiveError, InvalidCoordinateError, InvalidNameError, NoMVMDataWarning, conf
from glue_mvmcut.core.endpoints import astroquery_config_file, resolver_url, server_url, using_server
from glue_mvmcut.core.mast import LAYER_COLUMNS, query_layers, query_layers_near, resolve_name, resolve_target
from glue_mvmcut.core.skycells import skycells_covering

LMC = (84.9208, -69.1467)


def test_the_lmc_box_finds_all_twenty_layers(mast, lmc_archive):
    table = query_layers(LMC, 20)
    assert table.colnames[: len(LAYER_COLUMNS)] == list(LAYER_COLUMNS)
    assert {"obsID", "obs_collection", "dataproduct_type"} <= set(table.colnames)  # MAST's own
    assert list(table["productFilename"]) == sorted(rec.filename for rec in lmc_archive.layers)
    row = table[table["productFilename"] == "hst_skycell-p0081x14y15_wfc3_ir_f160w_coarse-all_drz.fits"][0]
    rec = lmc_archive.layer(row["productFilename"])
    assert (row["skycell"], row["instrument"], row["detector"], row["filter"]) == (
        "p0081x14y15",
        "wfc3",
        "ir",
        "f160w",
    )
    assert (row["scale"], row["level"]) == ("coarse", "filter")
    assert (row["size"], row["obsid"]) == (rec.size, rec.obsid)
    assert row["dataURI"] == f"mast:HST/product/{rec.filename}"
    assert row["obs_id"] == rec.obs_id and row["s_region"] == rec.s_region
    assert (row["s_ra"], row["s_dec"]) == pytest.approx((rec.s_ra, rec.s_dec))
    assert set(table["level"]) == {"filter", "exposure"}
    # Decoys (single-visit HAP product, classic HST product, previews, trailers) never appear.
    assert all(name.startswith("hst_skycell") and name.endswith(".fits") for name in table["productFilename"])


def test_filters_and_instruments_select_rows(mast):
    f814w = query_layers(LMC, 20, filters=["F814W"])
    assert len(f814w) == 8 and set(f814w["filter"]) == {"f814w"}
    wfc3 = query_layers(LMC, 20, instruments=["wfc3"])
    assert len(wfc3) == 8 and set(wfc3["instrument"]) == {"wfc3"}
    both = query_layers(SkyCoord(*LMC, unit="deg"), (20, 10), instruments=["acs"], filters=["f658n"])
    assert list(both["skycell"]) == ["p0081x14y14", "p0081x14y15", "p0081x15y14", "p0081x15y15"]


def test_unknown_filters_and_instruments_are_refused_with_the_valid_ones_before_mast_is_asked(mast):
    with pytest.raises(
        InvalidNameError, match=r"Unknown filter 'f999x': MVM layers are made in ACS/WFC: F435W .*F814W"
    ):
        query_layers(LMC, 20, filters=["F814W", "f999x"])
    with pytest.raises(
        InvalidNameError, match=r"Unknown instrument 'nicmos': MVM layers are made of ACS and WFC3"
    ):
        query_layers(LMC, 20, instruments=["nicmos"])
    assert mast.requests() == []
    # A two-wheel ACS filter is a filter too (none in this field). The warning is an astropy one,
    # as astroquery's are: filters on AstropyWarning take it.
    with pytest.warns(AstropyWarning, match=r"\(instruments ACS; filters F606W-POL60V\)\.$") as caught:
        assert len(query_layers(LMC, 20, instruments=["acs"], filters=["f606w-pol60v"])) == 0
    assert [w.category for w in caught] == [NoMVMDataWarning]


def test_a_box_inside_one_skycell_returns_only_that_skycell(mast, lmc_archive):
    f = lmc_archive.field
    # Walk north-east from the four-way corner until a 2" box touches one skycell only.
    for step in range(1, 40):
        ra = f.ra + step * 0.6 / 3600 / np.cos(np.radians(f.dec))
        dec = f.dec + step * 0.6 / 3600
        cells = skycells_covering((ra, dec), 2)
        if len(cells) == 1:
            break
    centre = SkyCoord(f.ra, f.dec, unit="deg")
    assert len(cells) == 1 and centre.separation(SkyCoord(ra, dec, unit="deg")).arcsec < f.radius
    table = query_layers((ra, dec), 2)
    assert set(table["skycell"]) == {cells[0].name}
    assert len(table) == 5


def test_no_data_warns_and_returns_an_empty_table(mast):
    with pytest.warns(NoMVMDataWarning, match=r'No MVM layer covers a 10" x 10" box at 10.000000 10.000000'):
        table = query_layers((10.0, 10.0), 10)
    assert len(table) == 0 and table.colnames == list(LAYER_COLUMNS)


def test_executing_replies_are_waited_for(mast):
    mast.faults.executing = 2
    assert len(query_layers(LMC, 20)) == 20


def test_server_errors_become_archive_errors(mast):
    mast.faults.fail(502, count=50, scope="query")
    with pytest.raises(ArchiveError, match=rf"MVM query: MAST at {mast.url} answered 502"):
        query_layers(LMC, 20)


def test_a_silent_server_times_out(mast):
    mast.faults.latency = 1.0
    with conf.set_temp("timeout", 0.2), pytest.raises(ArchiveError, match=r"did not answer within 0.2 s"):
        query_layers(LMC, 20)


@pytest.mark.parametrize("column", ["s_region", "parent_obsid", "productFilename"])
def test_a_reply_without_a_column_that_is_read_is_named(mast, column):
    # Observations, products, and a product column astroquery reads itself (it names it alone).
    mast.faults.missing_columns = {column}
    with pytest.raises(
        ArchiveError, match=rf"MVM query: MAST at .* sent an unreadable reply \((no column )?'{column}'\)"
    ):
        query_layers(LMC, 20)


def test_a_failure_of_our_own_is_not_blamed_on_the_archive(mast, monkeypatch):
    # Only calls to MAST and the reading of their replies become "unreadable reply": a bug in
    # what glue-mvmcut does with a good reply stays the bug it is.
    def broken(*tables, **options):
        raise TypeError("a bug of ours")

    monkeypatch.setattr("glue_mvmcut.core.mast.vstack", broken)
    with pytest.raises(TypeError, match="a bug of ours"):
        query_layers(LMC, 20)


def test_an_unreachable_server_is_named_with_the_file_that_sets_it():
    with (
        using_server("http://127.0.0.1:9"),
        pytest.raises(ArchiveError, match=r"cannot reach MAST at http://127.0.0.1:9") as raised,
    ):
        query_layers(LMC, 20)
    assert str(raised.value).endswith(f"[mast] server setting in {astroquery_config_file()}.")


def test_server_url_follows_astroquery_configuration(mast):
    assert server_url() == mast.url
    with using_server("http://example.invalid/"):
        assert server_url() == "http://example.invalid"


def _astroquery_config_for(mast, tmp_path) -> dict:
    """The environment of a process whose astroquery.cfg ([mast] server) points at ``mast``."""
    config = tmp_path / "config" / "astropy"
    config.mkdir(parents=True)
    (config / "astroquery.cfg").write_text(f"[mast]\nserver = {mast.url}\n")
    return {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}


def test_the_astroquery_config_file_points_every_request_at_the_server(mast, tmp_path):
    """A user's astroquery.cfg ([mast] server) is all it takes, in a fresh process."""
    env = _astroquery_config_for(mast, tmp_path)
    config = tmp_path / "config" / "astropy"
    result = subprocess.run(
        [sys.executable, "-m", "glue_mvmcut.cli", "query", "84.9208", "-69.1467", "--size", "20"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "20 layers" in result.stdout
    assert "hst_skycell-p0081x15y15_wfc3_ir_f160w_coarse-all_drz.fits" in result.stdout
    assert len(mast.requests("Mast.Caom.Filtered.Position")) == 1
    assert len(mast.requests("Mast.Caom.Products")) == 1
    # The file errors name as the one to check is the one read.
    named = subprocess.run(
        [sys.executable, "-c", "import glue_mvmcut.core.endpoints as a; print(a.astroquery_config_file())"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert named.stdout.strip() == str(config / "astroquery.cfg")


@pytest.mark.parametrize("field", ["lmc", "twocells", "polar", "ra0"])
def test_every_overlapping_layer_is_found_in_every_field(mast, archives, field):
    archive = archives[field]
    centre = (archive.field.ra, archive.field.dec)
    covering = {cell.name for cell in skycells_covering(centre, 16)}
    expected = sorted(rec.filename for rec in archive.layers if rec.skycell in covering)
    assert expected
    assert list(query_layers(centre, 16)["productFilename"]) == expected


def test_an_object_name_resolves_through_the_servers_resolver(mast, capsys):
    coord = resolve_target("LMC")
    assert (coord.ra.deg, coord.dec.deg) == (84.9208, -69.1467)
    assert resolver_url() == f"{mast.url}/Santa-war/query"
    assert [r.service for r in mast.requests()] == ["resolver"]
    # Said from Python as astropy and astroquery say things (astropy's handler, INFO on stdout).
    said = capsys.readouterr().out.splitlines()
    assert said[-1].startswith("INFO: Resolved 'LMC' to 84.920800 -69.146700 with ")
    assert said[-1].endswith(" [glue_mvmcut.core.mast]")


def test_positions_are_parsed_without_asking_the_resolver(mast):
    coord = resolve_target("05:39:41.0 -69:08:48")
    assert coord.ra.deg == pytest.approx(84.920833, abs=1e-6)
    assert coord.dec.deg == pytest.approx(-69.146667, abs=1e-6)
    assert mast.requests() == []


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("84.9 -95", "off the sky|-95"),  # a bad position is never sent to the resolver
        ("NGC 99999", "'NGC 99999' is neither a sky position nor a name the resolver knows"),
    ],
)
def test_bad_targets_are_refused_with_the_input_named(mast, target, message):
    with pytest.raises(InvalidCoordinateError, match=message):
        resolve_target(target)


def test_an_unreachable_resolver_is_named_with_advice(mast):
    with conf.set_temp("resolver", "http://127.0.0.1:9/Santa-war/query"):
        with pytest.raises(ArchiveError, match=r"cannot reach the name resolver at http://127\.0\.0\.1:9/"):
            resolve_name("lmc")


def test_the_public_resolver_is_used_with_the_public_server():
    with using_server("https://mast.stsci.edu"):
        assert resolver_url() == "https://mastresolver.stsci.edu/Santa-war/query"


def test_a_resolver_that_fails_or_sends_garbage_gives_an_archive_error(mast):
    mast.faults.fail(status=500, count=10, scope="query")
    with pytest.raises(ArchiveError, match="Resolving 'lmc': the name resolver at .* answered 500"):
        resolve_name("lmc")


def test_nearby_boxes_share_one_query_and_get_what_each_gets_alone(mast, lmc_archive):
    # Boxes around the LMC field centre: across the four skycells, one outside the data, one
    # elongated; sizes as (ny, nx).
    boxes = [
        (SkyCoord(84.9208, -69.1467, unit="deg"), 20),
        (SkyCoord(84.9325, -69.14253, unit="deg"), 2),  # inside p0081x14y15 only
        (SkyCoord(84.9260, -69.1500, unit="deg"), (4, 12)),
        (SkyCoord(84.9208, -69.1300, unit="deg"), 5),  # 60" north: no data there
    ]
    query_layers((182.2, 26.0), 4)  # the column configs, fetched once per process
    mast.reset_stats()
    together = query_layers_near(boxes)
    assert [r.service for r in mast.requests()] == ["Mast.Caom.Filtered.Position", "Mast.Caom.Products"]
    mast.reset_stats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoMVMDataWarning)
        alone = [query_layers(coord, size, refresh=True) for coord, size in boxes]
    assert len(mast.requests()) == 2 * len(boxes)  # refresh: each asked MAST anew
    assert [len(t) for t in together] == [len(t) for t in alone] == [20, 5, 20, 0]
    for mine, theirs in zip(together, alone, strict=True):
        assert mine.colnames == theirs.colnames
        # Every cell, MAST's masked (empty) ones too.
        assert mine.pformat(max_lines=-1, max_width=-1) == theirs.pformat(max_lines=-1, max_width=-1)


def test_a_warm_process_asks_mast_at_most_twice_per_box(mast):
    """astroquery fetches a service's column config per client; glue-mvmcut keeps them per
    server for the process, so a box elsewhere needs one search and one product list."""
    from glue_mvmcut.core.mast import forget_column_configs

    forget_column_configs()
    query_layers(LMC, 4)
    first = [r.service for r in mast.requests()]
    mast.reset_stats()
    query_layers((182.2, 26.0), 4)  # other skycells: nothing of them on disk
    second = [r.service for r in mast.requests()]
    assert first == ["columnsconfig", "Mast.Caom.Filtered.Position", "columnsconfig", "Mast.Caom.Products"]
    assert second == ["Mast.Caom.Filtered.Position", "Mast.Caom.Products"]


def test_mast_is_asked_once_per_skycell_and_the_answer_kept_a_day(mast, lmc_archive, cache):
    first = query_layers(LMC, 20)
    asked = len(mast.requests())
    kept = sorted(path.name for path in (cache / "queries").glob("*/*.ecsv"))
    assert kept == ["p0081x14y14.ecsv", "p0081x14y15.ecsv", "p0081x15y14.ecsv", "p0081x15y15.ecsv"]
    # The same box, a neighbour in its skycells, another selection: MAST is not asked again,
    # and the answers are what MAST's would be.
    again = query_layers(LMC, 20)
    assert again.pformat(max_lines=-1, max_width=-1) == first.pformat(max_lines=-1, max_width=-1)
    neighbour = query_layers((84.9325, -69.14253), 2, filters=["f814w"])
    assert len(mast.requests()) == asked
    assert list(neighbour["productFilename"]) == [
        "hst_skycell-p0081x14y15_acs_wfc_f814w_all-jbp505jg_drc.fits",
        "hst_skycell-p0081x14y15_acs_wfc_f814w_all_drc.fits",
    ]
    assert list(neighbour["productFilename"]) == list(
        query_layers((84.9325, -69.14253), 2, filters=["f814w"], refresh=True)["productFilename"]
    )
    assert len(mast.requests()) == asked + 2
    # An answer older than its lifetime is asked for again.
    mast.reset_stats()
    with conf.set_temp("query_lifetime", 1e-9):
        query_layers(LMC, 20)
    assert len(mast.requests()) == 2


def test_another_process_uses_the_answers_on_disk(mast, lmc_archive, tmp_path):
    query_layers(LMC, 20)
    mast.reset_stats()
    env = _astroquery_config_for(mast, tmp_path)
    command = [sys.executable, "-m", "glue_mvmcut.cli", "query", "84.9208", "-69.1467", "--size", "20"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "20 layers" in result.stdout
    assert mast.requests() == []
    refreshed = subprocess.run([*command, "--refresh"], capture_output=True, text=True, env=env, timeout=120)
    assert refreshed.stdout == result.stdout
    assert [r.service for r in mast.requests() if r.service.startswith("Mast")] == [
        "Mast.Caom.Filtered.Position",
        "Mast.Caom.Products",
    ]


def test_an_unreadable_answer_on_disk_is_asked_for_again(mast, lmc_archive, cache):
    first = query_layers(LMC, 4)
    for path in (cache / "queries").glob("*/*.ecsv"):
        path.write_text("# %ECSV 1.0\nnot a table\n")
    mast.reset_stats()
    again = query_layers(LMC, 4)
    assert [r.service for r in mast.requests()] == ["Mast.Caom.Filtered.Position", "Mast.Caom.Products"]
    assert again.pformat(max_lines=-1, max_width=-1) == first.pformat(max_lines=-1, max_width=-1)


def test_a_lifetime_of_zero_keeps_nothing_on_disk(mast, cache):
    with conf.set_temp("query_lifetime", 0):
        query_layers(LMC, 4)
        mast.reset_stats()
        query_layers(LMC, 4)
    assert [r.service for r in mast.requests()] == ["Mast.Caom.Filtered.Position", "Mast.Caom.Products"]
    assert not (cache / "queries").exists()
