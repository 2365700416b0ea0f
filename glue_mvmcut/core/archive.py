"""MAST through ``astroquery.mast``: which MVM layers overlap a box on the sky.

This is the only module that imports astroquery. The server is astroquery's own ``[mast] server``
configuration item (in `astroquery_config_file`, or ``astroquery.mast.conf.set_temp``), read at
every call, so one setting points every request this package makes — queries and downloads — at
MAST or at a stand-in.
"""

import logging
import math
import re
import warnings
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.parse import quote

import numpy as np
import requests
import urllib3
from astropy.config import get_config_dir
from astropy.coordinates import SkyCoord
from astropy.table import Table, vstack
from astroquery.exceptions import NoResultsWarning, RemoteServiceError
from astroquery.mast import ObservationsClass
from astroquery.mast import conf as mast_conf
from urllib3.util.retry import Retry

from .config import conf
from .coords import box_radius, parse_coord, parse_size
from .errors import ArchiveError, InvalidCoordinateError, InvalidNameError, NoMVMDataWarning, UnsafeNameError
from .footprints import region_hits_cone, region_polygon
from .products import LayerName, safe_filename
from .skycells import skycells_covering
from .threadsafe import catch_warnings

__all__ = [
    "LAYER_COLUMNS",
    "server_url",
    "astroquery_config_file",
    "using_server",
    "file_url",
    "http_session",
    "archive_errors",
    "observations",
    "query_layers",
    "query_layers_near",
    "resolver_url",
    "resolve_name",
    "resolve_target",
]

log = logging.getLogger(__name__)

#: Columns of the table `query_layers` returns, in order.
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
_PORTAL_PATHS = {
    "MAST_REQUEST_URL": "/api/v0/invoke",
    "COLUMNS_CONFIG_URL": "/portal/Mashup/Mashup.asmx/columnsconfig",
    "MAST_DOWNLOAD_URL": "/api/v0.1/Download/file",
    "MAST_BUNDLE_URL": "/api/v0.1/Download/bundle",
}
_INSTRUMENTS = ("ACS", "WFC3")
#: The public MAST server and its name resolver.
MAST_SERVER = "https://mast.stsci.edu"
MAST_RESOLVER_URL = "https://mastresolver.stsci.edu/Santa-war/query"
#: Where a mirror or stand-in of MAST answers name resolution.
RESOLVER_PATH = "/Santa-war/query"
# Text made of numbers, separators and sexagesimal units is a (bad) position, never a name.
_POSITION_LIKE = re.compile(r"^\s*[-+]?\d[\d\s+\-.:,°'\"hdms]*$", re.IGNORECASE)


def server_url() -> str:
    """The MAST server astroquery is configured to use now (``[mast] server``), without a trailing /."""
    return str(mast_conf.server).rstrip("/")


def astroquery_config_file() -> Path:
    """Where astroquery reads its settings (``[mast] server`` among them): ``astroquery.cfg`` in
    astropy's configuration directory (``~/.config/astropy``; ``$XDG_CONFIG_HOME/astropy`` where
    that variable names a directory; ``~/.astropy/config`` where an older astropy made it)."""
    return Path(get_config_dir("astropy")) / "astroquery.cfg"


@contextmanager
def using_server(url: str):
    """Point astroquery, and so glue-mvmcut, at ``url`` for the duration of a ``with`` block."""
    with mast_conf.set_temp("server", url):
        yield


def file_url(data_uri: str) -> str:
    """Download URL of a product ``dataURI`` (``mast:HST/product/<file>``) on the current server."""
    return f"{server_url()}{_PORTAL_PATHS['MAST_DOWNLOAD_URL']}?uri={quote(data_uri, safe=':/')}"


class _TimeoutAdapter(requests.adapters.HTTPAdapter):
    """Gives every request a timeout and retries (urllib3 ``Retry``) with backoff.

    astroquery 0.4.11 passes ``timeout=None`` to requests for portal queries and downloads, so a
    server that stops answering hangs the caller forever; its ``conf.timeout`` only bounds the
    total time spent polling ``EXECUTING`` replies. Retries cover HTTP 5xx and connections that
    fail before a reply; a body cut off mid-transfer is retried by the callers that stream it.
    """

    def __init__(self, timeout: float):
        retry = Retry(
            total=int(conf.retries),
            backoff_factor=float(conf.backoff) / 2,  # urllib3 waits 0, 2f, 4f, ...
            status_forcelist=(500, 502, 503, 504),
            allowed_methods=frozenset({"GET", "HEAD", "POST"}),
            raise_on_status=False,
        )
        super().__init__(max_retries=retry)
        self.timeout = timeout

    def send(self, request, **kwargs):
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().send(request, **kwargs)


def _timeout(timeout: float | None) -> float:
    return float(conf.timeout if timeout is None else timeout)


def http_session(timeout: float | None = None) -> requests.Session:
    """A requests session whose every request times out after ``timeout`` s (default
    ``glue_mvmcut.conf.timeout``) of silence."""
    session = requests.Session()
    adapter = _TimeoutAdapter(_timeout(timeout))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def observations(timeout: float | None = None) -> ObservationsClass:
    """A fresh astroquery ``ObservationsClass`` aimed at the configured server, with timeouts.

    astroquery computes its portal URLs once, from ``conf.server`` at import; this instance gets
    them from the value in force now, so ``using_server`` and a config file written after import
    both take effect. Its column-config cache is per instance, so a change of server never reuses
    another server's columns. A fresh instance per call also keeps threads apart (astroquery keeps
    per-query state on the instance).

    Parameters
    ----------
    timeout : float, optional
        Seconds for connecting and for each read; default ``glue_mvmcut.conf.timeout``.
    """
    client = ObservationsClass()
    portal = client._portal_api_connection
    base = server_url()
    for attribute, path in _PORTAL_PATHS.items():
        setattr(portal, attribute, base + path)
    portal._column_configs = {}
    portal.TIMEOUT = float(conf.query_timeout)  # bounds astroquery's EXECUTING polling loop
    adapter = _TimeoutAdapter(_timeout(timeout))
    client._session.mount("http://", adapter)
    client._session.mount("https://", adapter)
    return client


def _timed_out(exc: BaseException) -> bool:
    """Whether a requests error is, underneath urllib3's retry wrapping, a timeout."""
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # MaxRetryError -> the last error
    if isinstance(reason, urllib3.exceptions.NewConnectionError):  # a subclass of ConnectTimeoutError
        return False
    return isinstance(exc, requests.exceptions.Timeout) or isinstance(reason, urllib3.exceptions.TimeoutError)


@contextmanager
def archive_errors(what: str, service: str | None = None):
    """Turn transport and protocol failures into `ArchiveError` naming the service.

    ``service`` names who was asked (default: "MAST at <server>").
    """
    service = service or f"MAST at {server_url()}"
    too_slow = (
        f"{what}: {service} did not answer within {conf.timeout} s. "
        "Try again later, or raise glue_mvmcut.conf.timeout."
    )
    try:
        yield
    except requests.exceptions.ConnectionError as exc:
        if _timed_out(exc):
            raise ArchiveError(too_slow) from exc
        raise ArchiveError(
            f"{what}: cannot reach {service} ({exc.__class__.__name__}). "
            f"Check the network and the [mast] server setting in {astroquery_config_file()}."
        ) from exc
    except requests.exceptions.Timeout as exc:
        raise ArchiveError(too_slow) from exc
    except requests.exceptions.HTTPError as exc:
        raise ArchiveError(
            f"{what}: {service} answered {exc}. Try again later; if it keeps failing, check the "
            f"[mast] server setting in {astroquery_config_file()}."
        ) from exc
    except requests.exceptions.RequestException as exc:  # e.g. a body cut off mid-transfer
        raise ArchiveError(f"{what}: the transfer from {service} failed ({exc}). Try again.") from exc
    except TimeoutError as exc:
        raise ArchiveError(
            f"{what}: {service} was still working on the query after "
            f"{conf.query_timeout} s. Try again later, or raise glue_mvmcut.conf.query_timeout."
        ) from exc
    except RemoteServiceError as exc:
        raise ArchiveError(f"{what}: {service} reported an error: {exc}. Try again later.") from exc
    except (ValueError, KeyError, TypeError) as exc:  # a body that is not the JSON expected
        raise ArchiveError(
            f"{what}: {service} sent an unreadable reply ({exc}). Check that the [mast] server "
            "setting points at MAST or a mirror of it, then try again."
        ) from exc


def resolver_url() -> str:
    """URL of the name resolver in force now (``glue_mvmcut.conf.resolver``, see there)."""
    if conf.resolver:
        return str(conf.resolver)
    server = server_url()
    return MAST_RESOLVER_URL if server == MAST_SERVER else server + RESOLVER_PATH


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
        archive_errors(f"Resolving {name!r}", f"the name resolver at {url}"),
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


def resolve_target(target) -> SkyCoord:
    """A position from a coordinate (anything `parse_coord` reads) or, failing that, an object name.

    Raises
    ------
    InvalidCoordinateError
        If ``target`` is neither a position nor a name the resolver knows (or is off the sky).
    ArchiveError
        If a name had to be resolved and the resolver cannot be reached.
    """
    try:
        return parse_coord(target)
    except InvalidCoordinateError:
        if not isinstance(target, str) or not target.strip() or _POSITION_LIKE.match(target):
            raise
    return resolve_name(target.strip())


def _empty_layer_table() -> Table:
    types = {"size": np.int64, "s_ra": float, "s_dec": float}
    return Table(names=LAYER_COLUMNS, dtype=[types.get(name, str) for name in LAYER_COLUMNS])


def query_layers(coord, size, *, instruments=None, filters=None) -> Table:
    """Every MVM layer file whose skycell overlaps a box on the sky.

    Queries MAST like the seed (``project="HAP"``, ``obs_collection="HST"``, image products, one
    wildcard query per instrument) with a cone circumscribing the box, keeps only skycell
    drizzled FITS layers (DRZ/DRC) and then decides overlap geometrically: a layer is kept when
    its skycell's footprint (`~glue_mvmcut.core.skycells.skycells_covering`) overlaps the box, at
    any declination and across RA = 0.

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

    Returns
    -------
    `~astropy.table.Table`
        One row per layer file, columns `LAYER_COLUMNS`, sorted by file name. Empty (with a
        `~glue_mvmcut.core.errors.NoMVMDataWarning`) when nothing covers the box.

    Raises
    ------
    ArchiveError
        When MAST cannot be reached, times out or answers something unusable.
    """
    coord = resolve_target(coord)
    size = parse_size(size)
    table = query_layers_near([(coord, size)], instruments=instruments, filters=filters)[0]
    if not len(table):
        warnings.warn(
            f'No MVM layer covers a {size[1].value:g}" x {size[0].value:g}" box at '
            f"{coord.to_string('decimal', precision=6)}.",
            NoMVMDataWarning,
            stacklevel=2,
        )
    return table


def query_layers_near(boxes, *, instruments=None, filters=None) -> list[Table]:
    """`query_layers` for several boxes near each other, with one set of MAST requests.

    MAST is asked once, with a cone that holds every box's own cone; each box then keeps the
    observations whose footprint touches its own cone (`~glue_mvmcut.core.footprints`, the test
    MAST applies) and the layers whose skycell overlaps it. Each table equals what `query_layers`
    returns for that box alone (without the warning for empty ones).

    Parameters
    ----------
    boxes : sequence of (coord, size)
        Box centres and sizes, as `query_layers` takes them.
    instruments, filters : sequence of str, optional
        As in `query_layers`, for every box.

    Returns
    -------
    list of `~astropy.table.Table`
        One table per box, in order.
    """
    boxes = [(parse_coord(coord), parse_size(size)) for coord, size in boxes]
    if not boxes:
        return []
    cones = [(coord, math.ceil(box_radius(size).value)) for coord, size in boxes]
    centre = boxes[0][0] if len(boxes) == 1 else _mean_position([coord for coord, _ in boxes])
    radius = max(
        math.ceil(centre.separation(coord).arcsec + cone_radius - 1e-9) for coord, cone_radius in cones
    )
    wanted_filters = {f.lower() for f in filters} if filters else None
    observations_table, products = _query_skycell_layers(centre, radius, instruments, wanted_filters)
    tables = []
    for (coord, size), (_, cone_radius) in zip(boxes, cones, strict=True):
        if observations_table is None:
            tables.append(_empty_layer_table())
            continue
        hit = [
            region_hits_cone(region_polygon(str(region)), coord.ra.deg, coord.dec.deg, cone_radius / 3600)
            for region in observations_table["s_region"]
        ]
        mine = observations_table[hit]
        obsids = {str(o) for o in mine["obsid"]}
        own = [str(p["parent_obsid"]) in obsids or str(p["obsID"]) in obsids for p in products]
        tables.append(_layer_rows(products[own], mine, coord, size, wanted_filters))
    return tables


def _mean_position(coords: list[SkyCoord]) -> SkyCoord:
    """The direction of the sum of the positions' unit vectors (their centre on the sphere)."""
    xyz = np.sum([c.cartesian.xyz.value for c in coords], axis=0)
    ra, dec = (
        np.degrees(np.arctan2(xyz[1], xyz[0])) % 360.0,
        np.degrees(np.arctan2(xyz[2], np.hypot(*xyz[:2]))),
    )
    return SkyCoord(ra, dec, unit="deg", frame="icrs")


def _query_skycell_layers(centre: SkyCoord, radius: int, instruments, wanted_filters):
    """The skycell observations touching a cone (radius in arcsec) and their DRZ/DRC FITS products,
    or (None, None) when there are none."""
    criteria = {"dataproduct_type": "IMAGE", "project": "HAP", "obs_collection": "HST"}
    if wanted_filters:
        criteria["filters"] = sorted(f.upper() for f in wanted_filters)
    client = observations()
    found = []
    # Its session is closed when done: left to the garbage collector, its kept-alive socket
    # would be closed by a finalizer at whatever point a collection runs.
    with closing(client._session), archive_errors("MVM query"):
        for instrument in instruments or _INSTRUMENTS:
            # query_criteria is query_criteria_async + _parse_result (astroquery's async_to_sync);
            # split, so that only the parse, which warns on an empty answer, holds the warnings lock.
            responses = client.query_criteria_async(
                coordinates=centre,
                radius=f"{radius} arcsec",
                instrument_name=f"{instrument.upper()}*",
                **criteria,
            )
            with catch_warnings():
                # An empty answer is not an error here; callers say so once.
                warnings.simplefilter("ignore", NoResultsWarning)
                table = client._parse_result(responses)
            if len(table):
                found.append(table)
        if not found:
            return None, None
        observations_table = vstack(found)
        observations_table = observations_table[
            [str(o).startswith("hst_skycell") for o in observations_table["obs_id"]]
        ]
        if not len(observations_table):
            return None, None
        products = client.filter_products(
            client.get_product_list(observations_table),
            productSubGroupDescription=["DRZ", "DRC"],
            extension="fits",
        )
    return observations_table, products


def _layer_rows(products, observations_table, coord, size, wanted_filters) -> Table:
    table = _empty_layer_table()
    if not len(products):
        return table
    by_obsid = {str(row["obsid"]): row for row in observations_table}
    covering = {cell.name for cell in skycells_covering(coord, size)}
    seen = set()
    for product in products:
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
        if layer.skycell.name not in covering:
            continue
        if wanted_filters and layer.filter not in wanted_filters:
            continue
        obs = by_obsid.get(str(product["parent_obsid"])) or by_obsid.get(str(product["obsID"]))
        seen.add(filename)
        table.add_row(
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
    table.sort("productFilename")
    return table
