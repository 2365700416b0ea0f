"""Many targets on Dask: outputs equal to one-at-a-time runs, the manifest, resume, lost workers."""

import filecmp
import os
import shutil
import signal
import socket
import warnings

import numpy as np
import pytest
from astropy.table import Table
from together import at_once

from glue_mvmcut import Cancelled, InvalidTargetsError, MVMCutError
from glue_mvmcut.cli import main
from glue_mvmcut.core.batch import MANIFEST, PROCESSES_ABOVE, cutout_batch, local_cluster, read_targets
from glue_mvmcut.core.endpoints import using_server
from glue_mvmcut.core.files import fits_problem
from glue_mvmcut.core.fitsheaders import LAYER_HEADERS
from glue_mvmcut.testing.server import MastServer

distributed = pytest.importorskip("distributed")

LMC = (84.9208, -69.1467)


def _offset(centre, east, north):
    """The position ``east``/``north`` arcsec from ``centre``."""
    ra, dec = centre
    return ra + east / 3600 / np.cos(np.radians(dec)), dec + north / 3600


def _thirty_targets() -> Table:
    """30 targets: LMC positions (one skycell, two, four), the two-projection-cell, RA=0 and polar fields,
    four with no data, one off the sky, one by name; per-row sizes and filters on some."""
    rows = []
    for i, (east, north) in enumerate([(x, y) for x in (-15, -6, 0, 6, 15) for y in (-15, 0, 15)]):
        ra, dec = _offset(LMC, east, north)
        rows.append((f"lmc{i:02d}", f"{ra:.6f}", f"{dec:.6f}", "", "", "f814w" if i % 3 else ""))
    for i, (east, north) in enumerate([(0, 0), (-4, 3), (5, -2)]):
        ra, dec = _offset((182.2, 26.0), east, north)
        rows.append((f"two{i}", f"{ra:.6f}", f"{dec:.6f}", "", "3", ""))
    for i, (east, north) in enumerate([(0, 0), (4, 0), (-4, 2)]):
        ra, dec = _offset((0.0005, -30.0), east, north)
        rows.append((f"ra0-{i}", f"{ra % 360:.6f}", f"{dec:.6f}", "", "", "f160w"))
    for i, (east, north) in enumerate([(0, 0), (3, -3)]):
        ra, dec = _offset((45.0, 87.9), east, north)
        rows.append((f"polar{i}", f"{ra:.6f}", f"{dec:.6f}", "", "", "f814w"))
    rows.append(("sexagesimal", "05:39:41.0", "-69:08:48", "", "", "f658n"))
    rows += [(f"empty{i}", str(10.0 * (i + 1)), "10", "", "", "") for i in range(4)]
    rows.append(("offsky", "12", "-95", "", "", ""))
    rows.append(("byname", "", "", "lmc", "2", "f160w"))
    assert len(rows) == 30
    table = Table(rows=rows, names=["id", "ra", "dec", "name", "size", "filters"], dtype=[str] * 6)
    return table


def _alone(tmp_path, row) -> "os.PathLike":
    """What ``mvmcut cut`` writes for one target on its own."""
    out = tmp_path / "alone" / row["id"]
    target = [row["name"]] if row["name"] else [row["ra"], row["dec"]]
    args = ["cut", *target, "--size", row["size"] or "4", "--out", str(out)]
    if row["filters"]:
        args += ["--filters", row["filters"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NoMVMDataWarning for the empty ones
        status = main(args)
    return out, status


def test_thirty_targets_equal_one_at_a_time_runs_and_the_manifest_says_so(mast, cache, tmp_path, monkeypatch):
    table = _thirty_targets()
    table.write(tmp_path / "targets.csv")
    mast.reset_stats()
    manifest = cutout_batch(tmp_path / "targets.csv", size=4, out_dir=tmp_path / "batch", workers=4)
    batch_bytes, batch_queries = mast.bytes_sent, len(mast.requests("Mast.Caom.Filtered.Position"))
    status = dict(zip(manifest["id"], manifest["status"], strict=True))
    assert status["offsky"] == "failed" and all(status[f"empty{i}"] == "no data" for i in range(4))
    assert sum(s == "done" for s in status.values()) == 25, [  # (what went wrong, if anything)
        (r["id"], r["status"], r["error"])
        for r in manifest
        if r["status"] != "done" and r["id"][:5] != "empty"
    ]
    offsky = manifest[manifest["id"] == "offsky"][0]
    assert offsky["error"].startswith("Not a valid sky position: ('12', '-95')")
    assert not (tmp_path / "batch" / "offsky").exists()
    mast.reset_stats()
    LAYER_HEADERS.clear()  # one at a time starts cold, as a new process on a new machine would
    monkeypatch.setenv("MVMCUT_CACHE_DIR", str(tmp_path / "alone-cache"))
    for row in table:
        alone, code = _alone(tmp_path, row)
        entry = manifest[manifest["id"] == row["id"]][0]
        if row["id"] == "offsky":
            assert code == 1
            continue
        files = sorted(p.name for p in alone.iterdir())
        assert entry["files"].split() == files and entry["n_files"] == len(files)
        assert sorted(p.name for p in (tmp_path / "batch" / row["id"]).iterdir()) == files
        match, mismatch, errors = filecmp.cmpfiles(
            alone, tmp_path / "batch" / row["id"], files, shallow=False
        )
        assert (mismatch, errors) == ([], []), row["id"]
        assert (entry["bytes"] > 0) == (entry["status"] == "done")
    # Nearby targets share MAST queries: at most one search per group of them (11), fewer when
    # a group finds its skycells' answers kept by another; one at a time, MAST is asked about
    # each skycell once (the answers kept for the next targets). Layer headers are read once
    # per batch, as a process that cuts one target after another reuses them too.
    assert 1 <= batch_queries <= 11
    assert len(mast.requests("Mast.Caom.Filtered.Position")) == 11  # for 29 targets
    assert batch_bytes < 1.05 * mast.bytes_sent
    assert manifest.meta["header_requests"] > 0 and manifest.meta["targets_run"] == 29
    assert not list((tmp_path / "batch").glob("*.part"))


def test_a_second_run_skips_what_verifies_and_redoes_a_damaged_target(mast, cache, tmp_path):
    targets = Table(
        rows=[("a", *LMC), ("b", *_offset(LMC, 15, 15)), ("c", 10.0, 10.0)], names=["id", "ra", "dec"]
    )
    out = tmp_path / "out"
    first = cutout_batch(targets, size=3, filters=["f814w"], out_dir=out, workers=2)
    assert list(first["status"]) == ["done", "done", "no data"]
    # Cut one file of target b short, as a crash in mid-write would (without our atomic writes).
    damaged = sorted((out / "b").glob("*.fits"))[0]
    damaged.write_bytes(damaged.read_bytes()[:5000])
    mast.reset_stats()
    seen = []
    second = cutout_batch(
        targets, size=3, filters=["f814w"], out_dir=out, progress=lambda d, t, m: seen.append(m)
    )
    assert seen == ["b: done"] and second.meta["targets_run"] == 1
    assert list(second["status"]) == ["done", "done", "no data"]
    assert list(second["bytes"][[0, 2]]) == list(first["bytes"][[0, 2]])  # kept from the first run
    assert fits_problem(damaged) is None and damaged.stat().st_size > 5000  # whole again
    # Nothing left to do: a third run does not talk to the archive at all.
    mast.reset_stats()
    third = cutout_batch(targets, size=3, filters=["f814w"], out_dir=out)
    assert third.meta["targets_run"] == 0 and mast.requests() == []
    # A larger box makes folders of the old box incomplete: all run again.
    fourth = cutout_batch(targets, size=8, filters=["f814w"], out_dir=out)
    assert fourth.meta["targets_run"] == 3 and list(fourth["status"]) == ["done", "done", "no data"]
    assert [p.name for p in (out / "c").iterdir()] == ["mvm_query-ra10d0000-decn10d0000_6_cutout.ecsv"]
    assert fourth["selection"][0] == "8x8 arcsec; instruments: all; filters: f814w"
    # Other filters, same box: the F814W folders do not count as done, every target runs again.
    fifth = cutout_batch(targets, size=8, filters=["f160w"], out_dir=out)
    assert fifth.meta["targets_run"] == 3 and list(fifth["status"]) == ["done", "done", "no data"]
    assert all("_f160w" in f and "f814w" not in f for f in fifth["files"][0].split() if f.endswith(".fits"))


@pytest.mark.parametrize("ranges", ["multipart", "no-range"])
def test_a_batch_downloading_whole_layers_into_a_fresh_cache_downloads_each_once(
    mast, cache, tmp_path, lmc_archive, ranges
):
    # Twelve targets around the LMC field share its F658N layers; "download", or "auto" against
    # a server without Range, fetches whole layers, several targets wanting each at once.
    mast.faults.ranges = ranges
    targets = Table(
        rows=[(f"t{i:02d}", *_offset(LMC, 3 * (i % 4) - 4, 3 * (i // 4) - 3)) for i in range(12)],
        names=["id", "ra", "dec"],
    )
    fetch = "download" if ranges == "multipart" else "auto"
    manifest = cutout_batch(
        targets, size=3, filters=["f658n"], out_dir=tmp_path / "out", workers=4, fetch=fetch
    )
    assert list(manifest["status"]) == ["done"] * 12, set(manifest["error"])
    gets = sorted(r.file for r in mast.requests("download") if r.method == "GET" and r.range is None)
    assert gets == sorted(r.filename for r in lmc_archive.layers if r.filter == "f658n")
    assert sorted(p.name for p in cache.iterdir() if p.is_file()) == gets


def test_a_manifest_behind_the_folders_loses_no_work(mast, cache, tmp_path):
    # While a batch runs its manifest is rewritten only now and then, so after a crash it may
    # still call finished targets pending: their folders verify, and a second run keeps them.
    targets = Table(rows=[("a", *LMC), ("b", *_offset(LMC, 15, 15))], names=["id", "ra", "dec"])
    out = tmp_path / "out"
    first = cutout_batch(targets, size=3, filters=["f814w"], out_dir=out, workers=2)
    stale = Table.read(out / MANIFEST)
    stale.replace_column("status", ["pending"] * len(stale))
    stale.write(out / MANIFEST, format="ascii.ecsv", overwrite=True)
    mast.reset_stats()
    again = cutout_batch(targets, size=3, filters=["f814w"], out_dir=out)
    assert again.meta["targets_run"] == 0 and mast.requests() == []
    assert list(again["status"]) == ["done", "done"] and list(again["files"]) == list(first["files"])


def test_failed_targets_are_retried_only_when_asked(mast, cache, tmp_path):
    targets = Table(rows=[("a", "lmc"), ("b", "Nowhere Nebula")], names=["id", "name"])
    out = tmp_path / "out"
    first = cutout_batch(targets, size=2, filters=["f658n"], out_dir=out)
    assert list(first["status"]) == ["done", "failed"]
    assert first["error"][1].startswith("'Nowhere Nebula' is neither a sky position nor a name")
    assert cutout_batch(targets, size=2, filters=["f658n"], out_dir=out).meta["targets_run"] == 0
    again = cutout_batch(targets, size=2, filters=["f658n"], out_dir=out, retry_failed=True)
    assert again.meta["targets_run"] == 1 and list(again["status"]) == ["done", "failed"]


def test_a_layer_that_cannot_be_read_fails_its_targets_only(lmc_archive, archives, cache, tmp_path):
    # Serve the two-cell field with one layer cut short: its targets fail, the LMC's do not.
    broken = tmp_path / "twocells"
    shutil.copytree(archives["twocells"].directory, broken)
    layer = next(broken.glob("*p1889*f814w*.fits"))
    layer.write_bytes(layer.read_bytes()[:40000])
    targets = Table(rows=[("lmc", *LMC), ("two", 182.2, 26.0)], names=["id", "ra", "dec"])
    with MastServer([lmc_archive, broken]) as server, using_server(server.url):
        manifest = cutout_batch(targets, size=3, filters=["f814w"], out_dir=tmp_path / "out")
    assert list(manifest["status"]) == ["done", "failed"]
    assert layer.name in manifest["error"][1]
    assert not (tmp_path / "out" / "two").exists() and not list((tmp_path / "out").glob("*.part"))


def test_cancel_then_rerun_processes_every_target_once(mast, cache, tmp_path):
    targets = Table(
        rows=[(f"t{i}", *_offset(LMC, 3 * i - 12, 0)) for i in range(9)], names=["id", "ra", "dec"]
    )
    out = tmp_path / "out"
    first_done = []

    def progress(done, total, message):
        first_done.append(message.split(":")[0])

    with pytest.raises(Cancelled, match="Batch cancelled after"):
        cutout_batch(
            targets,
            size=2,
            filters=["f814w"],
            out_dir=out,
            workers=2,
            progress=progress,
            cancel=lambda: len(first_done) >= 2,
        )
    manifest = Table.read(out / MANIFEST)
    finished = {str(i) for i, s in zip(manifest["id"], manifest["status"], strict=True) if s == "done"}
    assert finished == set(first_done) and len(finished) < 9
    assert set(manifest["status"]) == {"done", "pending"}
    # Whatever was running when cancelled either finished (its folder verifies) or left nothing.
    folders = {p.name for p in out.iterdir() if p.is_dir()}
    assert all(not name.endswith(".part") for name in folders)
    second_done = []
    cutout_batch(
        targets, size=2, filters=["f814w"], out_dir=out, progress=lambda d, t, m: second_done.append(m)
    )
    second = {m.split(":")[0] for m in second_done}
    assert not second & finished
    assert second | folders | finished == {f"t{i}" for i in range(9)}
    assert set(Table.read(out / MANIFEST)["status"]) == {"done"}


def test_a_cluster_of_processes_survives_a_killed_worker(mast, cache, tmp_path):
    targets = Table(
        rows=[(f"t{i}", *_offset(LMC, 2 * i - 10, 2 * i - 10)) for i in range(10)], names=["id", "ra", "dec"]
    )
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        pids = client.run(os.getpid)
        killed = []

        def progress(done, total, message):
            if not killed:  # the first target is back: kill a worker in the middle of the rest
                killed.append(next(iter(pids.values())))
                os.kill(killed[0], signal.SIGKILL)

        manifest = cutout_batch(  # by address, as --scheduler tcp://host:port does
            targets,
            size=2,
            filters=["f814w"],
            out_dir=tmp_path / "out",
            scheduler=cluster.scheduler_address,
            progress=progress,
        )
    assert killed
    missing = [str(i) for i, s in zip(manifest["id"], manifest["status"], strict=True) if s != "done"]
    if missing:  # a target the killed worker held too often: a re-run finishes exactly those
        seen = []
        cutout_batch(
            targets,
            size=2,
            filters=["f814w"],
            out_dir=tmp_path / "out",
            progress=lambda d, t, m: seen.append(m),
        )
        assert sorted(m.split(":")[0] for m in seen) == sorted(missing)
    final = Table.read(tmp_path / "out" / MANIFEST)
    assert set(final["status"]) == {"done"} and all(final["n_files"] >= 3)


def test_bad_tables_are_refused_with_the_reason(tmp_path):
    with pytest.raises(InvalidTargetsError, match="needs columns 'ra' and 'dec', or 'name'; it has x, y"):
        read_targets(Table(rows=[(1, 2)], names=["x", "y"]), size=3)
    with pytest.raises(InvalidTargetsError, match="The id 'a' is used by rows 0 and 1"):
        read_targets(Table(rows=[("a", 1, 2), ("a", 3, 4)], names=["id", "ra", "dec"]), size=3)
    (tmp_path / "bad.fits").write_bytes(b"not a table")
    with pytest.raises(InvalidTargetsError, match="Cannot read the target table .*bad.fits"):
        read_targets(tmp_path / "bad.fits", size=3)
    rows = read_targets(
        Table(rows=[("../escape", 1.0, 2.0, 3.0), ("ok", 1.0, 2.0, -1.0)], names=["id", "ra", "dec", "size"])
    )
    assert "../escape" in rows[0].error and "must be positive" in rows[1].error
    assert read_targets(Table(rows=[(1.0, 2.0)], names=["RA", "Dec"]))[0].error.startswith("no box size")


def test_mvmcut_batch_prints_a_summary_and_fails_when_a_target_failed(mast, cache, tmp_path, capsys):
    (tmp_path / "t.csv").write_text("id,ra,dec\nhere,84.9208,-69.1467\nnowhere,10,10\noff,1,-95\n")
    code = main(
        ["batch", str(tmp_path / "t.csv"), "--size", "2", "--filters", "f658n", "--out", str(tmp_path / "o")]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out.strip() == (
        f"3 targets: 1 done, 1 no data, 1 failed (2 run now, "
        f"{Table.read(tmp_path / 'o' / MANIFEST).meta['bytes_fetched'] / 1e6:.1f} MB fetched). "
        f"Manifest: {tmp_path / 'o' / MANIFEST}"
    )
    assert "off: Not a valid sky position" in captured.err
    assert "1 of 3 targets failed" in captured.err and "--retry-failed" in captured.err
    assert (
        main(
            ["batch", str(tmp_path / "t.csv"), "--size", "2", "--filters", "f658n"]
            + ["--out", str(tmp_path / "o"), "--json"]
        )
        == 1
    )
    report = json_line(capsys.readouterr().out)
    assert (report["targets"], report["done"], report["run_now"], report["bytes_fetched"]) == (3, 1, 0, 0)


@pytest.mark.parametrize(
    ("cores", "targets", "workers", "processes", "expected"),
    [
        (2, PROCESSES_ABOVE, None, None, (1, 8, False)),  # a small batch: threads start at once
        (2, PROCESSES_ABOVE + 1, None, None, (2, 4, True)),  # a process per core, 8 threads in all
        (1, 1000, None, None, (1, 4, False)),  # one core: nothing to win
        (2, 3, 3, True, (2, 1, True)),
        (8, 1000, 4, None, (4, 1, True)),  # no more processes than threads asked for
        (2, 1000, None, False, (1, 8, False)),
    ],
)
def test_the_local_cluster_runs_processes_for_large_batches(
    monkeypatch, cores, targets, workers, processes, expected
):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    options = local_cluster(targets, workers, processes)
    assert (options["n_workers"], options["threads_per_worker"], options["processes"]) == expected


def test_mvmcut_batch_on_processes_writes_what_it_writes_on_threads(
    mast, cache, tmp_path, capsys, monkeypatch
):
    from glue_mvmcut.core import batch

    clusters = []

    def chosen(*args):
        clusters.append(local_cluster(*args))
        return clusters[-1]

    monkeypatch.setattr(batch, "local_cluster", chosen)
    (tmp_path / "t.csv").write_text("id,ra,dec\na,84.9208,-69.1467\nb,84.9215,-69.1460\n")
    for where in ("--threads", "--processes"):
        args = ["batch", str(tmp_path / "t.csv"), "--size", "2", "--filters", "f658n", "--workers", "2"]
        assert main([*args, "--out", str(tmp_path / where.strip("-")), where]) == 0
    assert [c["processes"] for c in clusters] == [False, True]
    assert capsys.readouterr().out.startswith("2 targets: 2 done")
    for target in ("a", "b"):
        names = sorted(p.name for p in (tmp_path / "threads" / target).iterdir())
        assert names == sorted(p.name for p in (tmp_path / "processes" / target).iterdir())
        assert sum(name.endswith(".fits") for name in names) >= 2
        match, mismatch, errors = filecmp.cmpfiles(
            tmp_path / "threads" / target, tmp_path / "processes" / target, names, shallow=False
        )
        assert (mismatch, errors) == ([], [])


def json_line(text: str) -> dict:
    import json

    return json.loads(text.strip().splitlines()[-1])


def test_an_unreachable_archive_fails_every_target_with_the_reason(cache, tmp_path):
    targets = Table(rows=[("a", *LMC), ("b", 10.0, 10.0)], names=["id", "ra", "dec"])
    with using_server("http://127.0.0.1:9"):
        manifest = cutout_batch(targets, size=2, out_dir=tmp_path / "out")
    assert list(manifest["status"]) == ["failed", "failed"]
    assert all(e.startswith("MVM query: cannot reach MAST at http://127.0.0.1:9") for e in manifest["error"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MANIFEST]


def test_an_unreachable_scheduler_is_named(tmp_path):
    targets = Table(rows=[("a", *LMC)], names=["id", "ra", "dec"])
    with pytest.raises(
        MVMCutError, match=r"Cannot reach the Dask scheduler at tcp://127.0.0.1:9 .*--scheduler"
    ):
        cutout_batch(targets, size=2, out_dir=tmp_path / "out", scheduler="tcp://127.0.0.1:9")


def test_links_planted_in_a_batch_folder_never_redirect_its_writes(mast, cache, tmp_path):
    """Links at a target's folder, at its old temporary name and at the manifest's: the batch
    replaces or ignores them, and clears what a killed batch left of its targets."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("one", "one.part", "two.part"):
        os.symlink(elsewhere, out / name)
    for name in (MANIFEST, MANIFEST + ".part"):
        os.symlink(elsewhere / "precious.txt", out / name)
    stale = out / ".two.k1l2m3.part"
    stale.mkdir()
    targets = Table(rows=[("one", *LMC), ("two", *_offset(LMC, 3, 0))], names=["id", "ra", "dec"])
    manifest = cutout_batch(targets, size=2, filters=["f814w"], out_dir=out)
    assert list(manifest["status"]) == ["done", "done"]
    assert [p.name for p in elsewhere.iterdir()] == ["precious.txt"]
    assert (elsewhere / "precious.txt").read_text() == "keep me"
    for name in ("one", "two"):
        assert (out / name).is_dir() and not (out / name).is_symlink()
    for name, files in zip(manifest["id"], manifest["n_files"], strict=True):
        assert len(list((out / name).iterdir())) == files > 1
    assert not (out / MANIFEST).is_symlink() and not stale.exists()


def test_targets_are_grouped_as_by_asking_every_group():
    """The grid finds the groups that comparing each target with every group's first finds:
    clusters near the pole, across RA = 0 and at GROUP_RADIUS's edge, two selections mixed."""
    from astropy.coordinates import SkyCoord

    from glue_mvmcut.core.batch import GROUP_RADIUS, group_targets
    from glue_mvmcut.core.targets import Target

    rng = np.random.default_rng(7)
    centres = [(0.001, 10.0), (359.999, 10.0), (45.0, 89.99), (200.0, -89.95), (84.9, -69.1), (120.0, 0.0)]
    targets = []
    for n in range(400):
        ra, dec = centres[n % len(centres)]
        east, north = rng.uniform(-2.5, 2.5, 2) * GROUP_RADIUS
        ra, dec = _offset((ra, dec), east, north)
        filters = ("f814w",) if n % 3 else None
        targets.append(Target(n, f"t{n}", "", None, ra % 360, float(np.clip(dec, -90, 90)), filters=filters))
    groups, firsts = [], []
    for target in targets:  # the definition, pair by pair
        here = SkyCoord(target.ra, target.dec, unit="deg")
        for group, (key, first) in zip(groups, firsts, strict=True):
            if key == target.filters and here.separation(first).arcsec <= GROUP_RADIUS:
                group.append(target.id)
                break
        else:
            groups.append([target.id])
            firsts.append((target.filters, here))
    found = [[t.id for t in group] for group in group_targets(targets)]
    assert found == groups and 20 < len(groups) < 300


def test_two_batches_on_one_folder_take_turns(mast, cache, tmp_path):
    """Started together on one folder: one runs every target, the other waits, then finds them
    done; nothing fails and no temporary folder is left."""
    targets = Table(
        rows=[(f"t{i}", *_offset(LMC, 4 * i - 6, 0)) for i in range(4)], names=["id", "ra", "dec"]
    )
    out = tmp_path / "out"
    manifests, errors = at_once(
        lambda: cutout_batch(targets, size=2, filters=["f814w"], out_dir=out, workers=2), 2
    )
    assert errors == []
    assert sorted(m.meta["targets_run"] for m in manifests) == [0, 4]
    assert all(list(m["status"]) == ["done"] * 4 for m in manifests)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "t0", "t1", "t2", "t3"]


def test_a_batch_runs_when_dasks_usual_port_is_taken(mast, cache, tmp_path):
    """Dask's scheduler serves HTTP on 8787 unless told otherwise and fails if it is taken: the
    batch's cluster asks the OS for a free port, so a busy 8787 changes nothing."""
    holder = socket.socket()
    try:
        holder.bind(("", 8787))  # taken for the run (if something else has it, so much the better)
        holder.listen()
    except OSError:
        pass
    with holder:
        manifest = cutout_batch(
            Table(rows=[("one", *LMC)], names=["id", "ra", "dec"]),
            size=2,
            filters=["f814w"],
            out_dir=tmp_path / "out",
        )
    assert list(manifest["status"]) == ["done"]


def test_a_dashboard_only_when_asked_and_said_plainly_without_bokeh(mast, cache, tmp_path, capsys):
    """No port but the workers' unless asked; asked without bokeh, one line says what to do."""
    import importlib.util

    bokeh_missing = importlib.util.find_spec("bokeh") is None
    targets = tmp_path / "targets.csv"
    targets.write_text(f"id,ra,dec\none,{LMC[0]},{LMC[1]}\n")
    status = main(
        [
            "batch",
            str(targets),
            "--size",
            "2",
            "--filters",
            "f814w",
            "--out",
            str(tmp_path / "out"),
            "--dashboard",
        ]
    )
    if bokeh_missing:
        assert status == 1
        assert capsys.readouterr().err.strip() == (
            "mvmcut: error: The Dask dashboard needs bokeh: pip install bokeh, or leave --dashboard out."
        )
    else:
        assert status == 0 and "The batch's Dask dashboard: http://" in capsys.readouterr().err


def test_a_row_asking_for_an_unknown_filter_fails_before_any_work(mast, cache, tmp_path):
    """Its own row fails at once, with the valid filters named; the other rows run."""
    targets = Table(
        rows=[("good", *LMC, "f814w", ""), ("typo", *LMC, "f841w", ""), ("nicmos", *LMC, "", "nicmos")],
        names=["id", "ra", "dec", "filters", "instruments"],
    )
    manifest = cutout_batch(targets, size=2, out_dir=tmp_path / "out")
    status = dict(zip(manifest["id"], manifest["status"], strict=True))
    errors = dict(zip(manifest["id"], manifest["error"], strict=True))
    assert status == {"good": "done", "typo": "failed", "nicmos": "failed"}
    assert errors["typo"].startswith("Unknown filter 'f841w'") and "F814W" in errors["typo"]
    assert errors["nicmos"].startswith("Unknown instrument 'nicmos': MVM layers are made of ACS and WFC3")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good", MANIFEST]


def test_a_batch_writes_the_products_asked_for(mast, cache, tmp_path):
    targets = Table(rows=[("a", *LMC), ("b", *_offset(LMC, 15, 15))], names=["id", "ra", "dec"])
    with pytest.raises(ValueError, match="products must be one of both, mosaics, cutouts, not 'all'"):
        cutout_batch(targets, size=3, out_dir=tmp_path / "refused", products="all")
    assert mast.requests() == [] and not (tmp_path / "refused").exists()
    manifest = cutout_batch(targets, size=3, filters=["f814w"], out_dir=tmp_path / "out", products="mosaics")
    assert list(manifest["status"]) == ["done", "done"]
    for row in manifest:
        names = sorted(p.name for p in (tmp_path / "out" / row["id"]).iterdir())
        assert row["files"].split() == names
        assert names[-1].startswith("mvm_query-") and names[:-1]
        assert all(n.startswith("hst_combined_skycells-") and n.endswith(".fits") for n in names[:-1])
