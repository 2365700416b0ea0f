"""One entry point for the whole job: query → fetch → cut → combine → (write).

Used alike by the Python API, the seed-compatible functions, the CLI and the Glue plugin.
Progress goes to a callable ``progress(done, total, message)``; a callable ``cancel()`` that
returns True stops the work between units, leaving no partial file behind.
"""

import asyncio
import functools
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path

import astropy.units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table

from .bands import group_by_band
from .combine import spilled_mosaics
from .combiners import Combiner, combiner_name
from .coords import box_radius, parse_size
from .cutout import cut_local, cut_remote, has_data
from .download import download_layer
from .ecsvfile import write_ecsv
from .errors import Cancelled, CompressedLayerError, OutsideFootprintError
from .files import PART, folder_lock, remove_stale_parts, writable_folder, write_atomically
from .fitsfile import file_of, write_fits
from .mast import query_layers, resolve_target
from .names import Band, QueryName, checked_product, checked_selection, safe_filename
from .remote import RangeNotSupported
from .transport import TransferStats, run, submit

__all__ = [
    "FETCH_MODES",
    "PRODUCTS",
    "CutoutResult",
    "Mosaics",
    "cutout_mosaic",
    "checked_combiner",
    "write_fits",
    "write_products",
    "query_table_name",
    "write_query_table",
]

#: How `cutout_mosaic` may fetch pixels.
FETCH_MODES = ("auto", "ranged", "download")
#: What `cutout_mosaic` may write beside the query table.
PRODUCTS = ("both", "mosaics", "cutouts")
#: Layers cut concurrently by `cutout_mosaic`.
LAYERS_AT_ONCE = 4

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


@dataclass
class CutoutResult:
    """What `cutout_mosaic` produced.

    Attributes
    ----------
    coord, size
        The box: centre (ICRS) and ``(ny, nx)`` size in arcsec.
    layers : `~astropy.table.Table`
        The layers the archive reported (see `~glue_mvmcut.core.mast.query_layers`).
    cutouts : list of `~astropy.io.fits.HDUList`
        One per layer that has data in the box: held in memory, or, with an output folder,
        memory-mapped from its file when larger than ``conf.block_mb`` per array (written a
        block of rows at a time; with ``products="mosaics"`` in a private folder removed at the
        end, still readable through its memory maps).
    mosaics : `Mosaics` or dict
        `~glue_mvmcut.core.names.Band` → mosaic HDUList, held or memory-mapped as the cutouts.
        With ``products="both"`` a band of one cutout has that cutout for mosaic if it is
        memory-mapped, else a mosaic made when first asked for.
    skipped : list of str
        Layers reported by the archive but with no data in the box.
    paths : dict
        Files written, under ``"query"``, ``"cutouts"`` and ``"mosaics"`` (empty without
        out_dir), the mosaics in the order of ``mosaics``. A band's mosaic made of a single
        cutout is that cutout's file when both were written (``products="both"``).
    stats : `~glue_mvmcut.core.transport.TransferStats`
        Bytes and requests spent fetching layers.
    seconds : dict
        Wall-clock seconds per step: ``query``, ``cut`` (fetching included), ``combine``,
        ``write``.
    """

    coord: SkyCoord
    size: u.Quantity
    layers: Table
    cutouts: list[fits.HDUList] = field(default_factory=list)
    mosaics: Mapping[Band, fits.HDUList] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    paths: dict[str, list[Path]] = field(default_factory=lambda: {"query": [], "cutouts": [], "mosaics": []})
    stats: TransferStats = field(default_factory=TransferStats)
    seconds: dict[str, float] = field(default_factory=dict)

    def files(self) -> list[Path]:
        """Every file written, once each: the query table, the cutouts, then the mosaics."""
        return list(dict.fromkeys(path for paths in self.paths.values() for path in paths))


def checked_combiner(combine, products: str = "both") -> Combiner | bool:
    """The combiner a run with ``combine`` and ``products`` (as `cutout_mosaic` takes them)
    uses, False when it makes no mosaics; checked before any work.

    Raises
    ------
    ValueError
        For an unknown combiner or ``products``, or mosaics asked for with ``combine=False``.
    """
    combiner = "wmean" if combine is True else combine
    if combiner is not False:
        combiner_name(combiner)
    if products not in PRODUCTS:
        raise ValueError(f"products must be one of {', '.join(PRODUCTS)}, not {products!r}.")
    if products == "mosaics" and combiner is False:
        raise ValueError("products='mosaics' asks for mosaics, and combine=False makes none.")
    return False if products == "cutouts" else combiner


def _fits_name(hdul: fits.HDUList) -> str:
    return safe_filename(hdul[0].header["FILENAME"])


def query_table_name(coord: SkyCoord, size: u.Quantity) -> str:
    """``mvm_query-ra…-dec…_<radius>_cutout.ecsv`` for a box (radius in whole arcsec)."""
    radius = math.ceil(box_radius(size).to_value(u.arcsec))
    return QueryName(coord.ra.deg, coord.dec.deg, radius).filename


def write_query_table(table: Table, coord: SkyCoord, size: u.Quantity, out_dir) -> Path:
    """Write the query table under `query_table_name` (as astropy writes ECSV), atomically."""
    target = Path(out_dir) / query_table_name(coord, size)
    return write_atomically(target, lambda path: write_ecsv(table, path))


def _check_cancel(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("Cancelled; files already written are complete, nothing partial was left.")


class _Steps:
    """Progress, cancel and per-step timing for one run."""

    def __init__(self, progress: Progress | None, cancel: Callable[[], bool] | None):
        self.progress, self.cancel = progress, cancel
        self.done, self.total = 0, 1
        self.seconds: dict[str, float] = {}

    def check(self) -> None:
        _check_cancel(self.cancel)

    def report(self, message: str, advance: int = 1) -> None:
        self.done += advance
        if self.progress is not None:
            self.progress(self.done, self.total, message)

    def timed(self, step: str, started: float) -> None:
        self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - started


def cutout_mosaic(
    coord,
    size,
    *,
    instruments: Sequence[str] | None = None,
    filters: Sequence[str] | None = None,
    layers: Table | None = None,
    hdus: Mapping[str, dict] | None = None,
    out_dir=None,
    combine: "bool | Combiner" = True,
    cache=None,
    resample: str = "exact",
    fetch: str = "auto",
    refresh: bool = False,
    products: str = "both",
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
) -> CutoutResult:
    """Cut every MVM layer over a box and combine the cutouts into one mosaic per band.

    Parameters
    ----------
    coord : `~astropy.coordinates.SkyCoord`, str or (ra, dec)
        Centre of the box: anything `~glue_mvmcut.core.coords.parse_coord` reads, or an object
        name for MAST's resolver (see `~glue_mvmcut.core.mast.resolve_target`).
    size : float, (ny, nx) pair, or angular `~astropy.units.Quantity`
        Box size; plain numbers are arcseconds.
    instruments, filters : sequence of str, optional
        Restrict the query (default: ACS and WFC3, every filter).
    layers : `~astropy.table.Table`, optional
        Use these rows of a previous `~glue_mvmcut.core.mast.query_layers` result instead of
        querying (e.g. after a user unticked some).
    hdus : mapping, optional
        Layer file name → `~glue_mvmcut.core.cutout.layer_hdus` of that layer: headers already
        read (e.g. once for a whole batch), used by ranged reads instead of reading them again.
    out_dir : path-like, optional
        Write the query table, the cutouts and the mosaics here with the seed's names. The
        folder is made, and checked writable, before any work
        (`~glue_mvmcut.core.errors.OutputFolderError` if it cannot be).
    combine : bool, str or callable, optional
        Make mosaics, combining overlapping cutouts with this combiner: ``"wmean"`` (True, the
        default), ``"median"``, ``"mean"``, ``"min"``, ``"max"``, ``"first"``, ``"last"`` or
        ``f(sci, wht) -> (sci, wht)`` (see `~glue_mvmcut.core.combiners`); False: cutouts only.
    cache : path-like, optional
        Download cache, which also keeps MAST's answers (default
        `~glue_mvmcut.core.files.cache_dir`).
    resample : {'exact', 'interp'}, optional
        Resampler for cutouts that are not on the mosaic's pixel grid (default: flux-conserving
        ``exact``; see `~glue_mvmcut.core.combine.combine_band`).
    fetch : {'auto', 'ranged', 'download'}, optional
        How layer pixels are fetched: ``ranged`` reads only the box's rows from the archive's
        files (HTTP ``Range``); ``download`` caches whole layer files first; ``auto`` (default)
        uses ranged reads and falls back to downloads if the server ignores ``Range``.
    refresh : bool, optional
        Ask MAST for the layers even when its answer is kept in the cache (see
        `~glue_mvmcut.core.mast.query_layers`).
    products : {'both', 'mosaics', 'cutouts'}, optional
        What ``out_dir`` receives beside the query table (see `write_products`): cutouts and
        mosaics (default; a mosaic of a single cutout is not written again), the mosaics only,
        or the cutouts only (then no mosaics are made, as with ``combine=False``).
    progress : callable, optional
        ``progress(done, total, message)`` after each unit of work.
    cancel : callable, optional
        Checked between units; returning True raises `~glue_mvmcut.core.errors.Cancelled`.

    Returns
    -------
    CutoutResult
    """
    checked_selection(instruments, filters)  # inputs first, before any work
    combiner = checked_combiner(combine, products)
    coord = resolve_target(coord)
    size = parse_size(size)
    out_dir = writable_folder(out_dir) if out_dir is not None else None
    steps = _Steps(progress, cancel)
    steps.check()
    started = time.perf_counter()
    if layers is None:
        layers = query_layers(
            coord, size, instruments=instruments, filters=filters, refresh=refresh, cache=cache
        )
    steps.timed("query", started)
    result = CutoutResult(coord=coord, size=size, layers=layers)
    steps.total = 1 + len(layers) + int(combiner is not False) + int(out_dir is not None)
    steps.report(f"{len(layers)} layers found")
    named = [
        (checked_product(str(r["productFilename"]), str(r["dataURI"])), str(r["dataURI"])) for r in layers
    ]
    with ExitStack() as run_files:
        if out_dir is not None:  # cutouts and mosaics larger than a block are written as made
            run_files.enter_context(folder_lock(out_dir, cancel))
        spill = _spill(run_files, out_dir, products)
        started = time.perf_counter()
        # Closed however this loop ends: the cuts still under way are cancelled then.
        fetcher = _Fetcher(fetch, cache, cancel, hdus, spill)
        with closing(fetcher.cutouts(named, coord, size, result.stats)) as cutouts:
            for name, cutout in cutouts:
                if cutout is None or not has_data(cutout):
                    log.info("%s has no data in the box; skipped.", name)
                    result.skipped.append(name)
                    _discard(cutout)
                else:
                    result.cutouts.append(cutout)
                steps.report(f"cut {name}")
                steps.check()
        steps.timed("cut", started)
        if combiner is not False:
            steps.check()
            started = time.perf_counter()
            result.mosaics = _mosaics(result.cutouts, resample, combiner, products, out_dir)
            steps.timed("combine", started)
            steps.report(f"{len(result.mosaics)} mosaics")
        if out_dir is not None:
            started = time.perf_counter()
            write_products(result, out_dir, cancel, products=products)
            steps.timed("write", started)
            steps.report(f"wrote {len(result.files())} files")
    result.seconds = steps.seconds
    return result


#: What the private folder of a run's cutouts is called (`_spill`).
SCRATCH = "mvmcut-cutouts"


def _spill(run_files: ExitStack, out_dir: Path | None, products: str) -> Path | None:
    """Where a run writes cutouts and mosaics larger than a block, a block of rows at a time:
    ``out_dir``, or for ``products="mosaics"`` a private folder in it for the cutouts, removed
    when the run ends (their memory maps still read them: their disk is freed once the result
    goes); None without ``out_dir`` (all is held in memory)."""
    if out_dir is None or products != "mosaics":
        return out_dir
    remove_stale_parts(out_dir, [SCRATCH])  # a killed run's
    scratch = tempfile.TemporaryDirectory(
        prefix=f".{SCRATCH}.", suffix=PART, dir=out_dir, ignore_cleanup_errors=True
    )
    return Path(run_files.enter_context(scratch))


def _discard(cutout: fits.HDUList | None) -> None:
    """Remove the file of a cutout with no data in the box, if it was written."""
    path = file_of(cutout) if cutout is not None else None
    if path is not None:
        path.unlink(missing_ok=True)


class Mosaics(Mapping):
    """Band → mosaic HDUList, where the mosaic of a band whose single cutout stands for it on
    disk (``products="both"``) is made when first asked for: ``mvmcut cut`` and batches never
    ask, and it took ~12 ms of a 20" target's ~75 ms of CPU."""

    def __init__(self, bands: list[Band], made: dict, later: dict[Band, Callable[[], fits.HDUList]]):
        self._bands, self._made, self._later = bands, made, later

    def __getitem__(self, band: Band) -> fits.HDUList:
        if band in self._later:
            self._made[band] = self._later[band]()
            del self._later[band]
        return self._made[band]

    def __iter__(self) -> Iterator[Band]:
        return iter(self._bands)

    def __len__(self) -> int:
        return len(self._bands)


def _mosaics(cutouts, resample: str, combiner: Combiner, products: str, out_dir: Path | None) -> Mosaics:
    """The mosaic of each band, those larger than a block written into ``out_dir`` as they are
    made (`~glue_mvmcut.core.combine.spilled_mosaics`). With ``products="both"`` a band's single
    cutout stands for its mosaic on disk: the cutout itself if it was written to its file (one
    larger than a block: not copied), else a mosaic made when asked for (held in memory)."""
    spill = out_dir if products in ("both", "mosaics") else None
    groups = group_by_band(cutouts)
    alone = {band: members[0] for band, members in groups.items() if products == "both" and len(members) == 1}
    in_file = {band: cutout for band, cutout in alone.items() if file_of(cutout) is not None}
    others = [cutout for band, members in groups.items() if band not in alone for cutout in members]
    made = spilled_mosaics(others, resample=resample, combine=combiner, spill=spill) if others else {}
    later = {
        band: functools.partial(_mosaic_of, cutout, resample, combiner)
        for band, cutout in alone.items()
        if band not in in_file
    }
    made.update(in_file)
    return Mosaics(list(groups), made, later)


def _mosaic_of(cutout: fits.HDUList, resample: str, combiner: Combiner) -> fits.HDUList:
    """The mosaic of a band of one cutout held in memory (so is the mosaic)."""
    (mosaic,) = spilled_mosaics([cutout], resample=resample, combine=combiner).values()
    return mosaic


class _Fetcher:
    """Cuts layers by ranged reads while they work, else from cached whole files.

    In ``auto`` mode, a server that ignores ``Range`` switches the rest of the run to whole-file
    downloads; in ``ranged`` mode it is an error.
    """

    def __init__(self, fetch: str, cache, cancel, hdus: Mapping[str, dict] | None = None, spill=None):
        if fetch not in FETCH_MODES:
            raise ValueError(f"fetch must be one of {FETCH_MODES}, not {fetch!r}.")
        self.fetch, self.cache, self.cancel, self.spill = fetch, cache, cancel, spill
        self.hdus = hdus or {}
        self.ranged = fetch != "download"

    def cutouts(
        self, products: Sequence[tuple[str, str]], coord: SkyCoord, size: u.Quantity, stats: TransferStats
    ) -> Iterator[tuple[str, fits.HDUList | None]]:
        """(name, cutout) of every (name, dataURI) layer in turn, the cutout None when the box
        misses the layer.

        Ranged cuts all start at once as coroutines on the I/O loop (no thread each: the first
        requests leave within a millisecond), at most `LAYERS_AT_ONCE` reading at a time;
        downloads run `LAYERS_AT_ONCE` at a time in threads.
        """
        gate = asyncio.Semaphore(LAYERS_AT_ONCE)
        started: list[asyncio.Task] = []  # the ranged cuts that began on the I/O loop
        with ThreadPoolExecutor(max_workers=LAYERS_AT_ONCE) as pool:
            jobs = [self._start(pool, gate, started, name, uri, coord, size, stats) for name, uri in products]
            try:
                for k, (name, _) in enumerate(products):
                    try:
                        try:
                            cutout = jobs[k].result()
                        except RangeNotSupported:
                            if self.fetch == "ranged":
                                raise
                            self._to_downloads(pool, jobs, k, products, coord, size, stats)
                            cutout = jobs[k].result()
                        except CompressedLayerError:
                            if self.fetch == "ranged":
                                raise
                            log.info("%s is tile-compressed: downloading it whole.", name)
                            cutout = self._downloaded(*products[k], coord, size, stats)
                    except OutsideFootprintError:
                        cutout = None
                    yield name, cutout
            finally:
                for job in jobs:
                    job.cancel()
                # Cancelling a job only asks its task to stop: wait until the cuts have, so
                # none sends a request once this run is over (the pool waits for downloads).
                run(_stopped(started))

    def _start(self, pool, gate, started, name, data_uri, coord, size, stats) -> Future:
        _check_cancel(self.cancel)
        if not self.ranged:
            return pool.submit(self._downloaded, name, data_uri, coord, size, stats)

        async def cut():
            started.append(asyncio.current_task())
            async with gate:
                return await cut_remote(
                    data_uri,
                    coord,
                    size,
                    stats=stats,
                    cancel=self.cancel,
                    hdus=self.hdus.get(name),
                    spill=self.spill,
                )

        return submit(cut())

    def _to_downloads(self, pool, jobs: list[Future], first: int, products, coord, size, stats) -> None:
        """Cut the layers from ``first`` on from whole files, but those already cut by ranges."""
        if self.ranged:
            log.info("The archive ignores Range requests: downloading whole layers from now on.")
            self.ranged = False
        for k in range(first, len(jobs)):
            if k == first or not jobs[k].done() or isinstance(jobs[k].exception(), RangeNotSupported):
                jobs[k].cancel()
                jobs[k] = pool.submit(self._downloaded, *products[k], coord, size, stats)

    def _downloaded(self, name: str, data_uri: str, coord, size, stats: TransferStats) -> fits.HDUList:
        path = download_layer(name, data_uri, cache=self.cache, cancel=self.cancel, stats=stats)
        return cut_local(path, coord, size, spill=self.spill)


async def _stopped(tasks: list[asyncio.Task]) -> None:
    """Cancel ``tasks`` and wait until every one has stopped."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _file_in(hdul: fits.HDUList, folder: Path) -> Path | None:
    """The file of ``hdul`` if it is one in ``folder`` (written there a block at a time)."""
    path = file_of(hdul)
    if path is not None and path.parent.resolve() == Path(folder).resolve():
        return Path(folder) / path.name
    return None


def write_products(
    result: CutoutResult, out_dir: Path, cancel: Callable[[], bool] | None = None, *, products: str = "both"
) -> None:
    """Write the query table and the ``products`` of ``result`` into ``out_dir`` (each file
    atomically), recording them in ``result.paths``; what killed runs left of them goes first.
    ``cancel`` is checked between files.

    ``products`` is ``"both"`` (cutouts and mosaics: a band's mosaic made of a single cutout is
    not written, the cutout's file standing for it in ``result.paths["mosaics"]``),
    ``"mosaics"`` (one per band, however many cutouts) or ``"cutouts"``.

    `cutout_mosaic` calls it holding the folder's lock
    (`~glue_mvmcut.core.files.folder_lock`); a folder of one's own needs none.
    """
    cutouts = result.cutouts if products in ("both", "cutouts") else []
    bands = list(result.mosaics) if products in ("both", "mosaics") else []
    # A band of a single cutout, when that cutout is written: the cutout (its mosaic, if made
    # only when asked for, `Mosaics`, is not asked for).
    groups = group_by_band(result.cutouts) if products == "both" else {}
    alone = {band: members[0] for band, members in groups.items() if len(members) == 1}
    mosaics = {band: alone[band] if band in alone else result.mosaics[band] for band in bands}
    query_name = query_table_name(result.coord, result.size)
    written = [*cutouts, *(hdul for band, hdul in mosaics.items() if band not in alone)]
    remove_stale_parts(out_dir, [query_name, *(_fits_name(hdul) for hdul in written)])
    result.paths["query"].append(write_query_table(result.layers, result.coord, result.size, out_dir))
    paths = {}
    for hdul in written:
        _check_cancel(cancel)
        paths[id(hdul)] = _file_in(hdul, out_dir) or write_fits(hdul, out_dir)
    result.paths["cutouts"] += [paths[id(hdul)] for hdul in cutouts]
    result.paths["mosaics"] += [paths[id(hdul)] for hdul in mosaics.values()]
