"""MAST through ``astroquery.mast``: which MVM layers overlap a box on the sky, and where named
objects are.

Queries go through astroquery's ``ObservationsClass`` (`observations`), aimed at the server in
force now (`~glue_mvmcut.core.endpoints.server_url`) and given the transport's timeouts and
retries. The few astroquery internals this needs are touched in one section below, each with
the astroquery behaviour it works around.
"""

import functools
import logging
import math
import re
import warnings
from contextlib import closing, contextmanager

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table, vstack
from astroquery.exceptions import RemoteServiceError
from astroquery.mast import ObservationsClass

from .config import conf
from .coords import box_radius, parse_coord, parse_size
from .endpoints import PORTAL_PATHS, resolver_url, server_url
from .errors import ArchiveError, InvalidCoordinateError, InvalidNameError, NoMVMDataWarning, UnsafeNameError
from .footprints import Footprint, parse_region
from .limits import query_deadline
from .names import LayerName, checked_selection, safe_filename
from .querycache import cached_layers, keep_layers
from .skycells import SkyCell, skycells_covering
from .transport import http_session, transport_errors, with_timeouts

__all__ = [
    "LAYER_COLUMNS",
    "forget_column_configs",
    "observations",
    "query_layers",
    "query_layers_near",
    "resolve_name",
    "resolve_target",
]

log = logging.getLogger(__name__)

#: Columns of the table `query_layers` returns, in order; MAST's product columns follow.
LAYER_COLUMNS = (
    "productFilename",
    "dataURI",
    "obs_id",
    "obsid",
    "size",
    "skycell",
    "instrument",
    "detector",
    "filter",
    "scale",
    "level",
    "s_ra",
    "s_dec",
    "s_region",
)
_INSTRUMENTS = ("ACS", "WFC3")
# The columns of MAST's replies this module reads.
_OBSERVATION_COLUMNS = ("obsid", "obs_id", "s_ra", "s_dec", "s_region")
_PRODUCT_COLUMNS = ("obsID", "parent_obsid", "productFilename", "dataURI", "size")
# Text made of numbers, separators and sexagesimal units is a (bad) position, never a name.
_POSITION_LIKE = re.compile(r"^\s*[-+]?\d[\d\s+\-.:,°'\"hdms]*$", re.IGNORECASE)


#: Server URL -> astroquery's column configs for it (service -> config), filled as it fetches them.
_COLUMN_CONFIGS: dict[str, dict] = {}


def forget_column_configs() -> None:
    """Fetch MAST's column configs afresh (e.g. after the server's columns changed)."""
    _COLUMN_CONFIGS.clear()


# -- astroquery's internals: every use of them is in this section ---------------------------------
def observations(timeout: float | None = None) -> ObservationsClass:
    """A fresh astroquery ``ObservationsClass`` aimed at the configured server, with timeouts.

    astroquery computes its portal URLs once, from ``conf.server`` at import (class attributes
    of ``PortalAPI`` since astroquery PR #2193); this instance gets them from the value in force
    now, so ``using_server`` and a config file written after import both take effect. Its
    column-config cache is the process's for that server (`forget_column_configs`), so a change
    of server never reuses another server's columns. A fresh instance per call keeps threads
    apart (astroquery keeps per-query state on the instance).

    Parameters
    ----------
    timeout : float, optional
        Seconds for connecting and for each read; default ``glue_mvmcut.conf.timeout``.
    """
    client = ObservationsClass()
    portal = client._portal_api_connection  # astroquery exposes no other handle on its URLs
    base = server_url()
    for attribute, path in PORTAL_PATHS.items():
        setattr(portal, attribute, base + path)
    # astroquery fetches a service's column config once per instance and keeps it there: shared
    # per server, each is fetched once per process (two requests fewer per query).
    portal._column_configs = _COLUMN_CONFIGS.setdefault(base, {})
    portal.TIMEOUT = float(conf.query_timeout)  # bounds astroquery's EXECUTING polling loop
    # astroquery 0.4.11 sends every request with timeout=None: a silent server hangs it forever.
    with_timeouts(client._session, timeout)
    return client


def _session(client: ObservationsClass):
    """The requests session of ``client``, to close when done: left to the garbage collector,
    its kept-alive socket would be closed by a finalizer at whatever point a collection runs."""
    return client._session


def _parse_quietly(client: ObservationsClass, responses) -> Table:
    """The table of a query's replies; an empty one without astroquery's warning for it.

    ``query_criteria`` is ``query_criteria_async`` + ``_parse_result`` (astroquery's
    ``async_to_sync``); the parse warns (``NoResultsWarning``) when no rows came. An empty answer
    is no error here (callers say so once), and silencing the warning would mean changing the
    process-wide warning filters, which other threads (a batch's, Dask's) change meanwhile: a
    reply without rows is not handed to the parse at all.
    """
    if not any(response.json().get("data") for response in responses):
        return Table()
    return client._parse_result(responses)


# -- errors ------------------------------------------------------------------------------------------
@contextmanager
def _from_mast(what: str, service: str | None = None):
    """Turn what can go wrong in a call to MAST (through astroquery, or the resolver) into
    `ArchiveError`: transport failures (`~glue_mvmcut.core.transport.transport_errors`), MAST's
    own errors, a query still running after ``conf.query_timeout``, and replies that cannot be
    read (astroquery parses them inside its calls). Wrap only calls to MAST and the reading of
    their replies: a failure in anything else is a bug, not the archive's.
    """
    service = service or _mast()
    try:
        with transport_errors(what, service):
            yield
    except TimeoutError as exc:  # astroquery's own, when EXECUTING replies outlast TIMEOUT
        raise ArchiveError(
            f"{what}: {service} was still working on the query after "
            f"{conf.query_timeout} s. Try again later, or raise glue_mvmcut.conf.query_timeout."
        ) from exc
    except RemoteServiceError as exc:
        raise ArchiveError(f"{what}: {service} reported an error: {exc}. Try again later.") from exc
    except (ValueError, KeyError, TypeError) as exc:  # a body that is not the JSON expected
        raise _unreadable(what, service, exc) from exc


def _mast() -> str:
    return f"MAST at {server_url()}"


def _unreadable(what: str, service: str, problem) -> ArchiveError:
    return ArchiveError(
        f"{what}: {service} sent an unreadable reply ({problem}). Check that the [mast] server "
        "setting points at MAST or a mirror of it, then try again."
    )


def _check_columns(table: Table, columns, what: str) -> None:
    """Refuse a reply table that lacks a column this module reads."""
    missing = [name for name in columns if name not in table.colnames]
    if missing:
        raise _unreadable(what, _mast(), f"no column {missing[0]!r}")


# -- name resolution ---------------------------------------------------------------------------------
def resolve_name(name: str, *, timeout: float | None = None) -> SkyCoord:
    """Resolve an object name to an ICRS position with MAST's name resolver (SANTA).

    Hand-written rather than ``astroquery.mast.utils.resolve_object`` because astroquery 0.4.11
    sends that request to a fixed URL with ``requests.get`` and no timeout: a mirror or stand-in
    cannot answer it and a silent resolver hangs the caller forever. The request and the choice
    of answer (the first resolver that knows the name) are astroquery's.

    Parameters
    ----------
    name : str
        An object name SIMBAD or NED knows, e.g. ``"NGC 1850"``.
    timeout : float, optional
        Seconds for connecting and for each read; default ``glue_mvmcut.conf.timeout``.

    Raises
    ------
    InvalidCoordinateError
        If the resolver does not know the name.
    ArchiveError
        If the resolver cannot be reached or answers garbage.
    """
    url = resolver_url()
    params = {"name": name, "outputFormat": "json", "resolveAll": "false"}
    with (
        http_session(timeout) as session,
        _from_mast(f"Resolving {name!r}", f"the name resolver at {url}"),
        query_deadline(float(conf.query_timeout)),
    ):
        reply = session.get(url, params=params)
        reply.raise_for_status()
        found = reply.json().get("resolvedCoordinate") or []
        wanted = name.strip().lower()
        match = next((entry for entry in found if entry.get("searchString", "").lower() == wanted), None)
        coord = None if match is None else SkyCoord(float(match["ra"]), float(match["decl"]), unit="deg")
    if coord is None:
        raise InvalidCoordinateError(
            f"{name!r} is neither a sky position nor a name the resolver knows. Give 'RA Dec' in "
            "degrees (84.9208 -69.1467) or sexagesimal (05:39:41.0 -69:08:48), or an object name "
            "SIMBAD or NED know."
        )
    log.info(
        "Resolved %r to %s with %s", name, coord.to_string("decimal", precision=6), match.get("resolver")
    )
    return coord


def resolve_target(target, *, frame: str = "icrs") -> SkyCoord:
    """A position from a coordinate (anything `parse_coord` reads, in ``frame``) or, failing
    that, an object name.

    Raises
    ------
    InvalidCoordinateError
        If ``target`` is neither a position nor a name the resolver knows (or is off the sky).
    ArchiveError
        If a name had to be resolved and the resolver cannot be reached.
    """
    try:
        return parse_coord(target, frame=frame)
    except InvalidCoordinateError:
        if not isinstance(target, str) or not target.strip() or _POSITION_LIKE.match(target):
            raise
    return resolve_name(target.strip())


def _layer_table(rows=()) -> Table:
    """A table of `LAYER_COLUMNS` holding ``rows`` (dicts)."""
    types = {"size": np.int64, "s_ra": float, "s_dec": float}
    return Table(
        rows=list(rows) or None, names=LAYER_COLUMNS, dtype=[types.get(n, str) for n in LAYER_COLUMNS]
    )


def query_layers(coord, size, *, instruments=None, filters=None, refresh=False, cache=None) -> Table:
    """Every MVM layer file whose skycell overlaps a box on the sky.

    The skycells come from the tessellation (`~glue_mvmcut.core.skycells.skycells_covering`),
    at any declination and across RA = 0; their layers from MAST, asked as the seed asks
    (``project="HAP"``, ``obs_collection="HST"``, image products, skycell observations only,
    then their drizzled FITS products, DRZ/DRC) in a cone holding the skycells, or from its
    answer kept on disk for ``glue_mvmcut.conf.query_lifetime`` hours
    (`~glue_mvmcut.core.querycache`). A layer is kept when its observation's footprint touches
    the cone circumscribing the box, as MAST's own cone search decides.

    Parameters
    ----------
    coord : `~astropy.coordinates.SkyCoord`, str or (ra, dec)
        Centre of the box: anything `~glue_mvmcut.core.coords.parse_coord` reads, or an object
        name for MAST's resolver (see `resolve_target`).
    size : float, (ny, nx) pair or angular `~astropy.units.Quantity`
        Box size; plain numbers are arcseconds.
    instruments : sequence of str, optional
        Instrument names, case-insensitive (default: ``"ACS"`` and ``"WFC3"``).
    filters : sequence of str, optional
        Keep only these filters (e.g. ``["F814W", "f658n"]``).
    refresh : bool, optional
        Ask MAST even when its answer for these skycells is on disk.
    cache : path-like, optional
        Download cache whose ``queries`` folder keeps MAST's answers (default
        `~glue_mvmcut.core.files.cache_dir`).

    Returns
    -------
    `~astropy.table.Table`
        One row per layer file, sorted by file name: columns `LAYER_COLUMNS`, then MAST's own
        product columns (so astroquery's ``Observations.download_products`` and drizzlepac's
        ``hapcut_utils.mvm_retrieve_files`` take it as they take MAST's product table). Empty
        (with `LAYER_COLUMNS` only, and a `~glue_mvmcut.core.errors.NoMVMDataWarning`) when
        nothing covers the box.

    Raises
    ------
    ArchiveError
        When MAST cannot be reached, times out or answers something unusable.
    InvalidNameError
        For an instrument or filter no MVM layer is made of (before MAST is asked).
    """
    coord = resolve_target(coord)
    size = parse_size(size)
    table = query_layers_near(
        [(coord, size)], instruments=instruments, filters=filters, refresh=refresh, cache=cache
    )[0]
    if not len(table):
        searched = [
            f"{label} {', '.join(names).upper()}"
            for label, names in (("instruments", instruments), ("filters", filters))
            if names
        ]
        warnings.warn(
            f'No MVM layer covers a {size[1].value:g}" x {size[0].value:g}" box at '
            f"{coord.to_string('decimal', precision=6)}"
            + (f" ({'; '.join(searched)})." if searched else "."),
            NoMVMDataWarning,
            stacklevel=2,
        )
    return table


def query_layers_near(boxes, *, instruments=None, filters=None, refresh=False, cache=None) -> list[Table]:
    """`query_layers` for several boxes, with one set of MAST requests (or none).

    The skycells covering the boxes come from the tessellation
    (`~glue_mvmcut.core.skycells.skycells_covering`); MAST is asked once for every layer of
    those whose list is not on disk (`~glue_mvmcut.core.querycache`): one search in a cone
    holding all of them, one request for their products. Each box then keeps the layers of its
    own skycells whose observation's footprint (``s_region``, read by
    `~glue_mvmcut.core.footprints`) touches the cone circumscribing the box, the test MAST
    applies to a cone search.

    Parameters
    ----------
    boxes : sequence of (coord, size)
        Box centres and sizes, as `query_layers` takes them.
    instruments, filters : sequence of str, optional
        As in `query_layers`, for every box.
    refresh, cache : optional
        As in `query_layers`.

    Returns
    -------
    list of `~astropy.table.Table`
        One table per box, in order, as `query_layers` returns it (without the warning for
        empty ones).

    Raises
    ------
    ArchiveError
        When MAST cannot be reached, times out or answers something unusable (a footprint that
        cannot be read is named with its observation).
    InvalidNameError
        For an instrument or filter no MVM layer is made of (before MAST is asked).
    """
    instruments, wanted_filters = checked_selection(instruments, filters)  # before MAST is asked
    boxes = [(parse_coord(coord), parse_size(size)) for coord, size in boxes]
    covering = [skycells_covering(coord, size) for coord, size in boxes]
    layers = _skycell_layers(sorted({cell for cells in covering for cell in cells}), refresh, cache)
    wanted_instruments = {name.lower() for name in instruments or _INSTRUMENTS}
    # The layers of each set of skycells, stacked and sorted once (the boxes of a batch's group
    # mostly share one set: ~5 ms a box when each stacked, sorted and walked row by row its own),
    # with those of the instruments and filters wanted and their footprints.
    stacked: dict[tuple[str, ...], tuple[Table, list]] = {}
    tables = []
    for (coord, size), cells in zip(boxes, covering, strict=True):
        names = tuple(cell.name for cell in cells if len(layers[cell.name]))
        if not names:
            tables.append(_layer_table())
            continue
        if names not in stacked:
            table = vstack([layers[name] for name in names], metadata_conflicts="silent")
            table.meta.clear()
            table.sort("productFilename")
            footprints = [
                _footprint(row["s_region"])
                if row["instrument"] in wanted_instruments
                and (not wanted_filters or row["filter"] in wanted_filters)
                else None
                for row in table
            ]
            stacked[names] = table, footprints
        table, footprints = stacked[names]
        ra, dec, radius = coord.ra.deg, coord.dec.deg, math.ceil(box_radius(size).value) / 3600
        keep = [footprint is not None and footprint.hits_cone(ra, dec, radius) for footprint in footprints]
        tables.append(table[keep])  # a table of its own: those kept in memory stay as they are
    return tables


@functools.lru_cache(maxsize=4096)
def _footprint(s_region: str) -> Footprint:
    return parse_region(s_region)


def _skycell_layers(cells: list[SkyCell], refresh: bool, cache) -> dict[str, Table]:
    """Every MVM layer of each of ``cells``, by skycell name: from the answers kept in
    ``cache``, and from MAST for those without one (or all, with ``refresh``)."""
    server = server_url()
    layers = {} if refresh else cached_layers(server, [cell.name for cell in cells], cache)
    missing = [cell for cell in cells if cell.name not in layers]
    if missing:
        asked = _ask_mast(missing)
        keep_layers(server, asked, cache)
        layers.update(asked)
    return layers


def _cone_around(cells: list[SkyCell]) -> tuple[SkyCoord, int]:
    """A cone (centre, radius in whole arcsec) holding every one of ``cells``."""
    cones = [cell.cone() for cell in cells]
    centre = cones[0][0] if len(cones) == 1 else _mean_position([c for c, _ in cones])
    radius = max(centre.separation(c).deg + r for c, r in cones) * 3600
    return centre, math.ceil(radius)


def _mean_position(coords: list[SkyCoord]) -> SkyCoord:
    """The direction of the sum of the positions' unit vectors (their centre on the sphere)."""
    xyz = np.sum([c.cartesian.xyz.value for c in coords], axis=0)
    ra, dec = (
        np.degrees(np.arctan2(xyz[1], xyz[0])) % 360.0,
        np.degrees(np.arctan2(xyz[2], np.hypot(*xyz[:2]))),
    )
    return SkyCoord(ra, dec, unit="deg", frame="icrs")


def _ask_mast(cells: list[SkyCell]) -> dict[str, Table]:
    """Every MVM layer of each of ``cells``, by skycell name, as MAST lists them now: two
    requests, one search for the skycell observations in a cone holding the cells (whose
    footprints lie inside their skycells, so none is missed) and one for their products."""
    centre, radius = _cone_around(cells)
    names = {cell.name for cell in cells}
    client = observations()
    with closing(_session(client)), query_deadline(float(conf.query_timeout)):
        with _from_mast("MVM query"):
            found = _parse_quietly(
                client,
                client.query_criteria_async(
                    coordinates=centre,
                    radius=f"{radius} arcsec",
                    dataproduct_type="IMAGE",
                    project="HAP",
                    obs_collection="HST",
                    obs_id="hst_skycell*",  # the skycell layers only, of every instrument
                ),
            )
        if len(found):
            _check_columns(found, _OBSERVATION_COLUMNS, "MVM query")
            found = found[[_skycell_of(str(obs_id)) in names for obs_id in found["obs_id"]]]
        for row in found:  # a footprint that cannot be read is MAST's fault, and never kept
            try:
                _footprint(str(row["s_region"]))
            except ValueError as exc:
                raise _unreadable("MVM query", _mast(), f"the footprint of {row['obs_id']}: {exc}") from exc
        products = Table()
        if len(found):
            with _from_mast("MVM query"):
                products = client.filter_products(
                    _parse_quietly(client, client.get_product_list_async(found)),
                    productSubGroupDescription=["DRZ", "DRC"],
                    extension="fits",
                )
            if len(products):
                _check_columns(products, _PRODUCT_COLUMNS, "MVM query")
    layers = _layer_rows(products, found)
    return {
        name: layers[[str(cell) == name for cell in layers["skycell"]]] if len(layers) else _layer_table()
        for name in names
    }


def _skycell_of(obs_id: str) -> str | None:
    """The skycell name in a skycell observation's ``obs_id``; None for anything else."""
    try:
        return SkyCell.from_name(obs_id).name
    except InvalidNameError:
        return None


def _layer_rows(products, observations_table) -> Table:
    """The MVM layers among MAST's ``products``: `LAYER_COLUMNS`, then MAST's own product
    columns (``obsID``, ``obs_collection``, ... as astroquery's ``download_products`` and
    drizzlepac's ``hapcut_utils`` take them)."""
    by_obsid = {str(row["obsid"]): row for row in observations_table}
    seen, keep, rows = set(), [], []
    for index, product in enumerate(products):
        filename = str(product["productFilename"])
        try:
            safe_filename(filename)
        except UnsafeNameError as exc:
            log.warning("%s", exc)
            continue
        if filename in seen or not filename.startswith("hst_skycell"):
            continue
        try:
            layer = LayerName.parse(filename)
        except InvalidNameError:
            log.warning("Skipping %s: not an MVM layer name.", filename)
            continue
        obs = by_obsid.get(str(product["parent_obsid"])) or by_obsid.get(str(product["obsID"]))
        seen.add(filename)
        keep.append(index)
        rows.append(
            {
                "productFilename": filename,
                "dataURI": str(product["dataURI"]),
                "obs_id": layer.obs_id,
                "obsid": str(product["obsID"]),
                "size": int(product["size"]),
                "skycell": layer.skycell.name,
                "instrument": layer.instrument,
                "detector": layer.detector,
                "filter": layer.filter,
                "scale": layer.scale,
                "level": "exposure" if layer.exposure else "filter",
                "s_ra": float(obs["s_ra"]) if obs is not None else np.nan,
                "s_dec": float(obs["s_dec"]) if obs is not None else np.nan,
                "s_region": str(obs["s_region"]) if obs is not None else "",
            }
        )
    table = _layer_table(rows)
    if not rows:
        return table
    theirs = products[keep]
    for name in theirs.colnames:
        if name not in table.colnames:
            table[name] = theirs[name]
    table.sort("productFilename")
    return table
