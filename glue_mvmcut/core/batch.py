"""Many targets: the cutouts and mosaics of every row of a table, run on Dask.

`cutout_batch` reads a target table (`~glue_mvmcut.core.targets`), plans the work and runs it
on a ``dask.distributed`` cluster (a local one by default, or an existing one), in three
rounds of tasks:

1. one MAST query per group of nearby targets (`~glue_mvmcut.core.mast.query_layers_near`),
   after resolving object names;
2. one header read per layer that any target needs (`~glue_mvmcut.core.cutout.layer_hdus`), so
   neighbouring targets share it;
3. one task per target: `~glue_mvmcut.core.pipeline.cutout_mosaic` (whose layer reads run
   concurrently inside it) writing exactly what ``mvmcut cut`` writes, into a private folder
   that is renamed to ``<id>`` only once complete.

Tasks read from the archive, not from a local disk, and return small records. The batch
manifest (`~glue_mvmcut.core.manifest`) gets one row per target, with what it asked for (box,
instruments, filters); running the same batch again skips targets whose folder is complete and
verifies and that asked for the same.
"""

import logging
import os
import pickle
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from astropy.table import Table
from astroquery.mast import conf as mast_conf

from .config import conf
from .cutout import layer_hdus
from .endpoints import resolver_url, server_url
from .errors import Cancelled, MVMCutError
from .files import folder_lock, remove_path, remove_stale_parts, writable_folder, write_atomically
from .manifest import MANIFEST, STATUSES, Record, previous_records, write_manifest
from .mast import query_layers_near, resolve_name
from .names import checked_selection
from .pipeline import checked_combiner, cutout_mosaic
from .targets import Target, read_targets
from .transport import TransferStats

__all__ = [
    "MANIFEST",
    "PROCESSES_ABOVE",
    "STATUSES",
    "Target",
    "read_targets",
    "cutout_batch",
    "default_workers",
    "local_cluster",
]

log = logging.getLogger(__name__)

#: Targets within this many arcsec of a group's first target share its MAST query.
GROUP_RADIUS = 120.0
#: While a batch runs, its manifest is rewritten at least this many seconds apart.
_MANIFEST_EVERY = 1.0


#: The configuration items tasks run with: the batch's, wherever their worker is.
_TASK_CONF = ("timeout", "min_rate", "retries", "backoff", "query_timeout", "query_lifetime")


def _settings() -> dict:
    """Configuration the tasks need, captured where the batch starts (workers may be elsewhere)."""
    return {
        "server": server_url(),
        "resolver": resolver_url(),
        **{name: getattr(conf, name) for name in _TASK_CONF},
    }


def _apply(settings: dict) -> None:
    """Make a worker use the batch's configuration.

    Items are set only where they differ, so a worker in the caller's own process (the default
    cluster) changes nothing; a worker process elsewhere keeps them for the rest of its life.
    """
    if server_url() != settings["server"]:
        mast_conf.server = settings["server"]
    if resolver_url() != settings["resolver"]:
        conf.resolver = settings["resolver"]
    for name in _TASK_CONF:
        if getattr(conf, name) != settings[name]:
            setattr(conf, name, settings[name])


class _Throttled:
    """A cancel check that asks the cluster-wide event at most every ``every`` seconds (each ask
    is a round trip to the scheduler)."""

    def __init__(self, event, every: float = 0.5):
        self.event, self.every = event, every
        self.checked, self.value = 0.0, False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self.value and now - self.checked >= self.every:
            self.checked, self.value = now, self.event.is_set()
        return self.value


#: A worker's cancel check per batch (by event name), while a task of the batch holds it.
_CANCEL_CHECKS: weakref.WeakValueDictionary[str, _Throttled] = weakref.WeakValueDictionary()


def _cancel_check(name: str) -> _Throttled:
    """The cancel check of the batch whose event is ``name``, shared by this process's tasks (a
    check of each task's own asked the scheduler at the task's start: a round trip per target).
    Made with the worker's client, found in a task's own thread: the check is also called from
    the threads that fetch layers, where distributed cannot find it."""
    from distributed import Event, get_client

    check = _CANCEL_CHECKS.get(name)
    if check is None:
        check = _Throttled(Event(name, client=get_client()))
        _CANCEL_CHECKS[name] = check
    return check


def _sealed(table: Table) -> bytes:
    """``table`` pickled, as a task's argument: the scheduler unpickles the tasks it is given to
    read their graph, and an astropy table of one row takes ~2 ms to unpickle (a fifth of the
    scheduler's process's CPU in a batch of 20" targets); as bytes it passes through, unpickled
    once, by the worker."""
    return pickle.dumps(table, protocol=pickle.HIGHEST_PROTOCOL)


# -- tasks (run on Dask workers) -----------------------------------------------------------------
def _resolve_task(name: str, settings: dict):
    _apply(settings)
    try:
        coord = resolve_name(name)
    except Exception as exc:  # the target fails, with the reason in the manifest; others go on
        return _reason(exc)
    return coord.ra.deg, coord.dec.deg


def _query_task(boxes, instruments, filters, refresh, settings):
    _apply(settings)
    return query_layers_near(boxes, instruments=instruments, filters=filters, refresh=refresh)


def _hdus_task(data_uri: str, settings: dict):
    """Headers of one layer, or None (the target then reads them itself and reports any error)."""
    _apply(settings)
    stats = TransferStats()
    try:
        hdus = layer_hdus(data_uri, stats=stats)
    except MVMCutError as exc:
        log.info("Headers of %s: %s", data_uri, exc)
        hdus = None
    return hdus, stats.bytes, stats.requests


def _target_task(target: Target, sealed: bytes, hdus: dict, out_dir: str, options: dict, settings: dict):
    """Run one target (its layers: a `_sealed` table) into a private folder and rename it
    ``<id>`` when complete; return its record."""
    _apply(settings)
    layers = pickle.loads(sealed)
    record = Record(target)
    final = Path(out_dir) / target.id
    remove_path(final)  # it did not verify, or it would not run again
    started = time.perf_counter()
    cancel = _cancel_check(options["cancel_event"])

    def run_into(partial: Path) -> None:
        partial.mkdir()
        result = cutout_mosaic(
            *target.box,
            layers=layers,
            hdus={name: found[0] for name, found in hdus.items() if found[0] is not None},
            out_dir=partial,
            combine=options["combine"],
            resample=options["resample"],
            fetch=options["fetch"],
            products=options["products"],
            cancel=cancel,
        )
        record.files = sorted(path.name for path in result.files())
        record.status = "done" if result.cutouts else "no data"
        record.bytes, record.requests = result.stats.bytes, result.stats.requests

    try:
        write_atomically(final, run_into)
    except Cancelled:
        record.status, record.files = "pending", []
    except Exception as exc:  # one bad target never stops the others: its error goes in the manifest
        record.status, record.files = "failed", []
        record.error = _reason(exc)
    record.seconds = time.perf_counter() - started
    return record


def _reason(exc: BaseException) -> str:
    """An error as the manifest records it: our own messages as they are, others with their type."""
    return str(exc) if isinstance(exc, MVMCutError) else f"{type(exc).__name__}: {exc}"


# -- the driver -----------------------------------------------------------------------------------
#: Batches of more targets than this run on a process per core by default. Threads in one process
#: share its GIL; two processes take ~2.5-3 s to start. Targets of 20" per second here (2 cores,
#: stand-in at 20 ms, start counted; benchmarks/README.md): 100 targets, threads 9.9-10.6 and
#: processes 8.8-9.2; 200 targets, threads 9.0-9.8 and processes 12.3-12.8.
PROCESSES_ABOVE = 128


def default_workers() -> int:
    """Threads of the default local cluster, all processes together: the work mostly waits on
    the network."""
    return min(16, 4 * (os.cpu_count() or 1))


def local_cluster(targets: int, workers: int | None = None, processes: bool | None = None) -> dict:
    """`distributed.LocalCluster`'s arguments for a batch of ``targets`` targets: ``workers``
    threads in all (default `default_workers`), on a process per core if ``processes`` (default:
    with more than one core, for more than `PROCESSES_ABOVE` targets), else in this process."""
    cores = os.cpu_count() or 1
    threads = workers or default_workers()
    if processes is None:
        processes = cores > 1 and targets > PROCESSES_ABOVE
    if not processes:
        return {"n_workers": 1, "threads_per_worker": threads, "processes": False}
    n_workers = min(cores, threads)
    return {"n_workers": n_workers, "threads_per_worker": max(1, threads // n_workers), "processes": True}


def _client(scheduler, cluster_options: dict, dashboard: bool = False):
    """(client, cluster): a client of ``scheduler``, or of a new local cluster of
    ``cluster_options`` (`local_cluster`; with a dashboard on a free port if asked), and the
    cluster this function started (None for an existing one)."""
    import dask
    from distributed import Client, LocalCluster

    if isinstance(scheduler, Client):
        return scheduler, None
    if scheduler is None and dashboard:
        try:
            import bokeh  # noqa: F401  (what Dask draws its dashboard with)
        except ImportError:
            raise MVMCutError(
                "The Dask dashboard needs bokeh: pip install bokeh, or leave --dashboard out."
            ) from None
    if scheduler is None:
        # No worker profiler: it samples every thread with sys._current_frames every 10 ms, and on
        # Python 3.11 a garbage collection inside that call whose finalizer releases the GIL (a
        # socket closed) deadlocks the process if another thread is starting a thread meanwhile
        # (seen in a test run: every thread waiting for the GIL). Nothing here reads its profiles.
        with dask.config.set({"distributed.worker.profile.enabled": False}):
            cluster = LocalCluster(
                **cluster_options,
                # The scheduler serves HTTP (health, metrics) even without a dashboard, on 8787
                # unless told otherwise, and fails to start if that port is taken: a free one.
                dashboard_address=":0",
                scheduler_kwargs={"dashboard": dashboard},
            )
        client = Client(cluster)
        if dashboard:
            log.warning("The batch's Dask dashboard: %s", client.dashboard_link)
        return client, cluster
    try:
        return Client(str(scheduler), timeout="10s"), None
    except (OSError, TimeoutError) as exc:
        raise MVMCutError(
            f"Cannot reach the Dask scheduler at {scheduler} ({exc}). Start it (dask scheduler) "
            "or leave --scheduler out to run on this machine."
        ) from exc


def group_targets(targets: list[Target]) -> list[list[Target]]:
    """Targets with the same instruments and filters, each in the first group (in the order
    groups were made) whose first target is within `GROUP_RADIUS`, else first of a new one.

    Near-linear: group leaders are kept in cubes of a 3-D grid over the unit sphere as wide as
    `GROUP_RADIUS`'s chord, so a target is compared with the leaders of the 27 cubes around it
    only (asking every leader took 164 s for 1,000 targets spread over the sky).
    """
    chord = 2 * np.sin(np.radians(GROUP_RADIUS / 3600) / 2)
    ra, dec = (np.radians([getattr(t, axis) for t in targets]) for axis in ("ra", "dec"))
    points = np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
    cells = np.floor(points / chord).astype(np.int64)
    groups: list[list[Target]] = []
    leaders: dict[tuple, list[tuple[int, np.ndarray]]] = {}  # (key, cell) -> (group, leader's point)
    near = [(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)]
    for target, point, cell in zip(targets, points, cells.tolist(), strict=True):
        key = (target.instruments, target.filters)
        found = [
            group
            for di, dj, dk in near
            for group, leader in leaders.get((key, cell[0] + di, cell[1] + dj, cell[2] + dk), ())
            if np.linalg.norm(point - leader) <= chord
        ]
        if found:
            groups[min(found)].append(target)
        else:
            leaders.setdefault((key, *cell), []).append((len(groups), point))
            groups.append([target])
    return groups


def cutout_batch(
    targets,
    *,
    out_dir,
    size=None,
    size_y=None,
    instruments: Sequence[str] | None = None,
    filters: Sequence[str] | None = None,
    scheduler=None,
    workers: int | None = None,
    processes: bool | None = None,
    retry_failed: bool = False,
    combine: bool = True,
    resample: str = "exact",
    fetch: str = "auto",
    refresh: bool = False,
    products: str = "both",
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    dashboard: bool = False,
) -> Table:
    """The cutouts and mosaics of every target of a table, one folder per target, on Dask.

    Parameters
    ----------
    targets : `~astropy.table.Table` or path
        The targets; see `read_targets` for the columns.
    out_dir : path-like
        Output folder: ``<out_dir>/<id>/`` holds exactly what ``mvmcut cut`` writes for that
        target, and ``<out_dir>/manifest.ecsv`` the outcome of every target.
    size, size_y : float, optional
        Default box width and height, arcsec.
    instruments, filters : sequence of str, optional
        Defaults for rows without their own.
    scheduler : str or `distributed.Client`, optional
        An existing Dask cluster (``"tcp://host:8786"`` or a client). Its workers must be able
        to reach the archive and write to ``out_dir`` (a shared file system). Default: a local
        cluster (`local_cluster`) of ``workers`` threads.
    workers : int, optional
        Threads of the default cluster, all its processes together (default `default_workers`).
    processes : bool, optional
        Whether the default cluster runs a process per core (True) or threads in this process
        only (False); default: processes for more than `PROCESSES_ABOVE` targets to run.
    retry_failed : bool, optional
        Run the targets that failed before again. Targets whose folder is complete and verifies
        never run again unless they now ask for another box, instruments or filters; targets
        that have not finished (a crash, a cancel) always do.
    combine, resample, fetch, refresh, products
        As for `~glue_mvmcut.core.pipeline.cutout_mosaic`; MAST's answers are kept in the
        download cache, shared by every worker that sees it.
    progress : callable, optional
        ``progress(done, total, "<id>: <status>")`` after each target.
    cancel : callable, optional
        Checked while waiting; returning True stops the batch (running targets stop at their
        next check, leaving no partial folder under a final name), writes the manifest (those
        targets ``pending``) and raises `~glue_mvmcut.core.errors.Cancelled`.
    dashboard : bool, optional
        Give the default cluster Dask's dashboard, on a free port (its address is logged);
        needs bokeh. None by default: a batch opens no port but its workers'.

    Returns
    -------
    `~astropy.table.Table`
        The manifest: one row per target with ``status`` (``done``, ``no data``, ``failed`` or
        ``pending``), the files written, bytes and requests fetched, seconds and any error.
        ``meta`` holds figures of this run: ``targets_run``, ``bytes_fetched`` (all of it), and
        ``header_bytes`` and ``header_requests`` (layer headers, read once and shared).
    """
    checked_selection(instruments, filters)  # once, before any work: not a failure per target
    checked_combiner(combine, products)
    out = writable_folder(out_dir)
    with folder_lock(out, cancel):  # a second batch here waits: no target runs twice at once
        plan = read_targets(targets, size=size, size_y=size_y, instruments=instruments, filters=filters)
        records = {t.id: Record(t) for t in plan}
        previous = previous_records(out, plan)
        records.update(previous)
        todo = [
            t for t in plan if t.id not in previous or (retry_failed and previous[t.id].status == "failed")
        ]
        for target in todo:
            if target.error:
                records[target.id] = Record(target, status="failed", error=target.error)
        todo = [t for t in todo if not t.error]
        meta = {"targets_run": len(todo), "bytes_fetched": 0, "header_bytes": 0, "header_requests": 0}
        log.info("%d targets, %d to run.", len(plan), len(todo))
        remove_stale_parts(out, [MANIFEST, *(t.id for t in todo)])

        if not todo:
            return Table.read(write_manifest(out, records, meta), format="ascii.ecsv")
        from distributed import Client, Event

        client, cluster = _client(scheduler, local_cluster(len(todo), workers, processes), dashboard)
        stop = Event(f"mvmcut-cancel-{uuid.uuid4().hex}", client=client)
        options = {
            "combine": combine,
            "resample": resample,
            "fetch": fetch,
            "refresh": refresh,
            "products": products,
            "cancel_event": stop.name,
        }
        try:
            _run(client, todo, records, out, options, meta, stop, progress, cancel)
        finally:
            meta["bytes_fetched"] = meta["header_bytes"] + sum(records[t.id].bytes for t in todo)
            path = write_manifest(out, records, meta)
            if not isinstance(scheduler, Client):
                client.close()
            if cluster is not None:
                cluster.close()  # waits for its threads: nothing keeps writing after we return
        return Table.read(path, format="ascii.ecsv")


def _run(client, todo, records, out: Path, options, meta, stop, progress, cancel) -> None:
    """Submit the rounds of tasks and collect the targets' records as they finish."""
    from distributed import as_completed

    settings = _settings()
    # 1. Object names to positions.
    named = [t for t in todo if t.ra is None]
    resolved = client.gather(
        client.map(_resolve_task, [t.name for t in named], settings=settings, pure=False)
    )
    for target, found in zip(named, resolved, strict=True):
        if isinstance(found, str):
            records[target.id] = Record(target, status="failed", error=found)
        else:
            target.ra, target.dec = found
    todo = [t for t in todo if t.ra is not None]
    # 2. One MAST query per group of nearby targets.
    groups = group_targets(todo)
    queries = client.map(
        _query_task,
        [[t.box for t in group] for group in groups],
        [group[0].instruments for group in groups],
        [group[0].filters for group in groups],
        refresh=options["refresh"],
        settings=settings,
        pure=False,
    )
    layers: dict[str, Table] = {}
    for group, future in zip(groups, queries, strict=True):
        try:
            layers.update(zip((t.id for t in group), future.result(), strict=True))
        except Exception as exc:  # e.g. MAST unreachable: this group's targets fail, others go on
            records.update({t.id: Record(t, status="failed", error=_reason(exc)) for t in group})
    todo = [t for t in todo if t.id in layers]
    # 3. The headers of every layer once (for ranged reads); 4. one task per target.
    uris = {str(r["productFilename"]): str(r["dataURI"]) for t in todo for r in layers[t.id]}
    headers = {}
    if options["fetch"] != "download":
        found = client.map(_hdus_task, list(uris.values()), settings=settings, pure=False)
        headers = dict(zip(uris, found, strict=True))
    futures = [
        client.submit(
            _target_task,
            target,
            _sealed(layers[target.id]),
            {str(name): headers[name] for name in layers[target.id]["productFilename"] if name in headers},
            str(out),
            options,
            settings,
            pure=False,
        )
        for target in todo
    ]
    target_of = {future.key: target for future, target in zip(futures, todo, strict=True)}
    total = len(records)
    done = total - len(todo)
    next_write = 0.0
    try:
        # On our client's event loop: by default as_completed uses the process's default client,
        # and a result lost with a killed worker was then awaited on two loops (RuntimeError).
        waiting = as_completed(futures, loop=client.loop)
        while not waiting.is_empty():
            if cancel is not None and cancel():
                raise Cancelled(f"Batch cancelled after {done} of {total} targets; run it again to finish.")
            batch = waiting.next_batch(block=False)
            for future in batch:
                record = _collect(future, target_of[future.key])
                records[record.target.id] = record
                done += 1
                if progress is not None:
                    progress(done, total, f"{record.target.id}: {record.status}")
            if batch and time.monotonic() >= next_write:
                started = time.monotonic()
                write_manifest(out, records, meta)
                # A rewrite costs more as the table grows (5 ms at 100 rows, 80-90 ms at 5000:
                # once per target, 5000 targets spent ~7 min on it): spaced to take ~5 % of the run.
                # The last one comes when the run ends; a crash in between loses no work, as
                # finished targets are known by their folders.
                next_write = started + max(_MANIFEST_EVERY, 20 * (time.monotonic() - started))
            if not batch:
                time.sleep(0.05)
    except (Cancelled, KeyboardInterrupt):
        stop.set()
        client.cancel(futures)
        raise
    for future in headers.values():
        _, nbytes, nrequests = future.result()
        meta["header_bytes"] += nbytes
        meta["header_requests"] += nrequests


def _collect(future, target: Target) -> Record:
    """The record a target task returned, or a failed one if the task itself was lost."""
    try:
        return future.result()
    except Exception as exc:  # e.g. KilledWorker, when workers kept dying while running it
        return Record(target, status="failed", error=_reason(exc))
