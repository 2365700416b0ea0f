"""The mvmcut command line."""

import json
import logging
import subprocess
from pathlib import Path

import pytest
from astropy.io import fits

from glue_mvmcut import MVMCutError
from glue_mvmcut.cli import build_parser, main


def test_query_prints_the_layer_table(mast, capsys):
    assert main(["query", "84.9208", "-69.1467", "--size", "20"]) == 0
    out = capsys.readouterr().out
    assert "hst_skycell-p0081x14y14_acs_wfc_f658n_all_drc.fits" in out
    assert out.rstrip().splitlines()[-1].startswith("20 layers, ")


def test_main_leaves_the_package_logger_as_it_found_it(mast, capsys):
    # Run in a longer-lived process (a notebook, a test), the next INFO message still shows.
    logger = logging.getLogger("glue_mvmcut")
    level, handlers = logger.level, logger.handlers[:]  # astropy's handler, from Python
    logger.setLevel(logging.DEBUG)
    try:
        assert main(["query", "84.9208", "-69.1467", "--size", "5"]) == 0
        assert logger.level == logging.DEBUG and logger.handlers == handlers
    finally:
        logger.setLevel(level)


def test_an_output_folder_that_cannot_be_written_is_named_before_any_work(mast, capsys, tmp_path):
    (tmp_path / "a-file").write_text("in the way")
    out = tmp_path / "a-file" / "cutouts"
    assert main(["cut", "84.9208", "-69.1467", "--size", "5", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == f"mvmcut: error: Cannot write to the output folder {out}: Not a directory.\n"
    assert mast.requests() == []  # nothing asked of MAST, nothing fetched


@pytest.mark.parametrize(
    ("typed", "arcsec"),
    [
        ("20", 20),
        ("10arcsec", 10),
        ("0.5arcmin", 30),
        ('20"', 20),
        ("1'", 60),
        ("0.01deg", 36),
        ("100pix", 4),
    ],
)
def test_sizes_as_astronomers_type_them(typed, arcsec):
    args = build_parser().parse_args(["query", "84.9208", "-69.1467", "--size", typed, "--size-y", typed])
    assert args.size == args.size_y == pytest.approx(arcsec)


@pytest.mark.parametrize(
    ("argv", "verbose"),
    [
        (["query", "1", "2", "--size", "5"], 0),
        (["-v", "query", "1", "2", "--size", "5"], 1),
        (["query", "1", "2", "--size", "5", "-v"], 1),
        (["cut", "1", "2", "--size", "5", "--out", "x", "-vv"], 2),
    ],
)
def test_verbose_goes_before_or_after_the_command(argv, verbose):
    assert build_parser().parse_args(argv).verbose == verbose


def test_a_size_that_cannot_be_read_is_named(capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["query", "84.9208", "-69.1467", "--size", "10 parsec"])
    assert exited.value.code == 2
    assert "argument --size: cannot read '10 parsec' as a size: give arcsec" in capsys.readouterr().err


def test_query_accepts_sexagesimal_and_filters(mast, capsys):
    assert (
        main(
            [
                "query",
                "05:39:40.992",
                "-69:08:48.12",
                "--size",
                "20",
                "--size-y",
                "10",
                "--filters",
                "f160w",
                "--instruments",
                "wfc3",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "8 layers" in out and "acs_wfc" not in out


@pytest.mark.parametrize(
    "position",
    [
        ["05 39 40.992", "-69 08 48.12"],  # SIMBAD's six numbers, pasted as two quoted strings
        ["05", "39", "40.992", "-69", "08", "48.12"],
        ["84.9208d", "-69.1467d"],
        ["05h39m40.992s", "-69d08m48.12s"],
        ["--frame", "galactic", "279.50714", "-31.58031"],
    ],
)
def test_positions_as_astronomers_type_them(mast, capsys, position):
    assert main(["query", *position, "--size", "20", "--filters", "f160w", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert (found["ra"], found["dec"]) == pytest.approx((84.9208, -69.1467), abs=1e-5)
    assert len(found["layers"]) == 8
    assert all("wfc3_ir_f160w" in row["productFilename"] for row in found["layers"])


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["query", "0", "-95", "--size", "10"],
            "mvmcut: error: Not a valid sky position: '0 -95' (Latitude angle(s) must be within -90 deg",
        ),
        (["query", "Nowhere", "Nebula", "--size", "10"], "mvmcut: error: 'Nowhere Nebula' is neither a sky"),
        (["query", "1", "2", "--size", "-3"], "mvmcut: error: A cutout size must be positive and finite"),
        (["query", "1", "2", "--size", "7200"], "mvmcut: error: A cutout size of (7200.0, 7200.0) exceeds"),
        (
            ["cut", "84.92", "-69.15", "--size", "5", "--out", "o", "--filters", "f999x"],
            "mvmcut: error: Unknown filter 'f999x': MVM layers are made in ACS/WFC: F435W",
        ),
        (
            ["cut", "84.92", "-69.15", "--size", "5", "--out", "o", "--instruments", "nicmos"],
            "mvmcut: error: Unknown instrument 'nicmos': MVM layers are made of ACS and WFC3 images.",
        ),
        (
            ["batch", "targets.csv", "--size", "5", "--out", "o", "--filters", "f814w,f999x"],
            "mvmcut: error: Unknown filter 'f999x': MVM layers are made in ACS/WFC: F435W",
        ),
    ],
)
def test_user_errors_are_one_line_without_traceback(mast, capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)  # where --out o would go
    (tmp_path / "targets.csv").write_text("ra,dec\n84.92,-69.15\n")
    assert main(args) == 1
    assert not (tmp_path / "o").exists()  # refused before any work
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_an_object_name_is_resolved_by_the_archives_resolver(mast, capsys):
    assert main(["query", "lmc", "--size", "20", "--filters", "f658n"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("4 layers, ")
    assert {"p0081x14y14", "p0081x14y15", "p0081x15y14", "p0081x15y15"} <= set(out.split())


@pytest.mark.parametrize("where", ["after", "before"])
def test_query_prints_json_when_asked_before_or_after_the_command(mast, capsys, where):
    args = ["query", "84.9208", "-69.1467", "--size", "20", "--filters", "f658n"]
    assert main(args + ["--json"] if where == "after" else ["--json", *args]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert (reply["ra"], reply["dec"], reply["size_arcsec"]) == (84.9208, -69.1467, [20.0, 20.0])
    assert [layer["skycell"] for layer in reply["layers"]] == [
        "p0081x14y14",
        "p0081x14y15",
        "p0081x15y14",
        "p0081x15y15",
    ]
    first = reply["layers"][0]
    assert first["productFilename"] == "hst_skycell-p0081x14y14_acs_wfc_f658n_all_drc.fits"
    assert first["dataURI"] == "mast:HST/product/" + first["productFilename"]
    assert (first["filter"], first["level"], first["scale"]) == ("f658n", "filter", "fine") and first[
        "size"
    ] > 0


def test_no_data_is_said_plainly(mast, capsys):
    assert main(["query", "10", "10", "--size", "10"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "No MVM layers found."
    assert captured.err.startswith('WARNING: No MVM layer covers a 10" x 10" box')


def test_unreachable_archive_is_an_error(capsys):
    from glue_mvmcut.core.endpoints import using_server

    with using_server("http://127.0.0.1:9"):
        assert main(["query", "1", "2", "--size", "5"]) == 1
    assert "cannot reach MAST at http://127.0.0.1:9" in capsys.readouterr().err


def test_cut_writes_files_and_reports_json(mast, cache, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "cut",
                "84.9208",
                "-69.1467",
                "--size",
                "10",
                "--filters",
                "f160w",
                "--out",
                str(out),
                "--json",
                "--png",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert [p.split("/")[-1] for p in report["mosaics"]] == [
        "hst_combined_skycells-ra84d9208-decs69d1467_wfc3_ir_f160w.fits",
        "hst_combined_skycells-ra84d9208-decs69d1467_wfc3_ir_f160w_coarse.fits",
    ]
    assert len(report["cutouts"]) == 8 and report["layers"] == 8
    assert 0 < report["bytes_fetched"] == mast.bytes_sent and report["requests"] > 0
    assert set(report["seconds"]) == {"query", "cut", "combine", "write"}
    assert all(Path(p).exists() for p in report["cutouts"] + report["mosaics"] + report["quicklooks"])


@pytest.mark.parametrize("option", [["--no-combine"], ["--products", "cutouts"]])
def test_cut_without_combining(mast, cache, tmp_path, capsys, option):
    args = ["cut", "84.9208", "-69.1467", "--size", "5", "--filters", "f658n", "--out", str(tmp_path)]
    assert main([*args, *option]) == 0
    out = capsys.readouterr().out
    assert out.startswith("4 layers, 4 cutouts, 0 mosaics;")
    assert not list(tmp_path.glob("hst_combined*")) and len(list(tmp_path.glob("hst_cutout*"))) == 4


def test_cut_of_mosaics_only_lists_what_it_wrote(mast, cache, tmp_path, capsys):
    out_dir = tmp_path / "out"
    args = ["cut", "84.9208", "-69.1467", "--size", "5", "--filters", "f658n", "--out", str(out_dir)]
    assert main([*args, "--products", "mosaics"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("4 layers, 4 cutouts, 1 mosaics;")
    assert [line.strip() for line in out[1:]] == [
        str(out_dir / "mvm_query-ra84d9208-decs69d1467_4_cutout.ecsv"),
        str(out_dir / "hst_combined_skycells-ra84d9208-decs69d1467_acs_wfc_f658n.fits"),
    ]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(Path(line.strip()).name for line in out[1:])
    with pytest.raises(SystemExit):
        main([*args, "--products", "mosaic"])
    assert "argument --products: invalid choice: 'mosaic'" in capsys.readouterr().err


def test_cut_with_a_combiner_of_ones_choice(mast, cache, tmp_path, capsys):
    args = ["cut", "84.9208", "-69.1467", "--size", "5", "--filters", "f658n", "--out", str(tmp_path)]
    assert main([*args, "--combine", "max"]) == 0
    (mosaic,) = tmp_path.glob("hst_combined*")
    with fits.open(mosaic) as hdul:
        assert hdul[0].header["COMBINE"] == "max" and "maximum of 4 cutouts" in str(
            hdul["SCI"].header["HISTORY"]
        )
    with pytest.raises(SystemExit):
        main([*args, "--combine", "mode"])
    error = capsys.readouterr().err
    assert "argument --combine: invalid choice: 'mode'" in error and "median" in error


def test_demo_cuts_the_lmc_example(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "Stand-in MAST serving 20 layers at http://127.0.0.1:" in out
    assert "20 layers, 20 cutouts, 5 mosaics;" in out
    written = tmp_path / "demo" / "cutouts"
    assert len(list(written.glob("hst_combined_skycells-*.fits"))) == 5
    assert len(list(written.glob("hst_combined_skycells-*.png"))) == 5
    assert len(list(written.glob("hst_cutout_skycell-*.fits"))) == 20
    assert (
        f"see the mosaics in Glue, loaded and linked by WCS: mvmcut demo --glue --out {tmp_path / 'demo'}"
        in out
    )
    assert f"look at the PNG quick-looks: {written.resolve()}/hst_combined_skycells-*.png" in out


def test_demo_glue_without_a_display_says_what_to_do(monkeypatch, tmp_path):
    from glue_mvmcut.cli import _open_in_glue

    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(
        MVMCutError, match=r"--glue needs a display, .* open them there with: glue a\.fits b\.fits"
    ):
        _open_in_glue([tmp_path / "a.fits", tmp_path / "b.fits"], "LMC demo")


def test_console_script_is_installed():
    result = subprocess.run(["mvmcut", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "demo" in result.stdout and "query" in result.stdout
