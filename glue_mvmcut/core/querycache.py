"""MAST's answers kept on disk, one file per skycell, so that re-running a box, or cutting a
neighbouring one, asks MAST nothing new.

A file holds every MVM layer MAST listed for one skycell (all instruments and filters: a later
query for another selection finds them too) as astropy's ECSV, under
``<download cache>/queries/<server>/<skycell>.ecsv``, with the time MAST was asked. It is used
for ``glue_mvmcut.conf.query_lifetime`` hours. Files are written atomically, so processes
sharing the cache (a batch's, several runs) read whole files only; two of them asking MAST for
one skycell at once both write it, the last one staying.
"""

import functools
import logging
import re
import time
import warnings
from pathlib import Path

from astropy.table import Table
from astropy.utils.exceptions import AstropyWarning

from .config import conf
from .files import cache_dir, write_atomically

__all__ = ["cached_layers", "keep_layers", "query_folder"]

log = logging.getLogger(__name__)


def query_folder(server: str, cache=None) -> Path:
    """The folder of ``server``'s answers (a URL: its host and port name it) in the download
    cache ``cache`` (default `~glue_mvmcut.core.files.cache_dir`)."""
    name = re.sub(r"[^A-Za-z0-9.-]+", "_", server.split("://", 1)[-1]).strip("_.") or "server"
    return cache_dir(cache) / "queries" / name


def cached_layers(server: str, skycells, cache=None) -> dict[str, Table]:
    """The layer tables of the ``skycells`` (names) that ``server``'s answers in ``cache``
    still cover; the others (never asked, too old, unreadable) are missing from the result."""
    lifetime = float(conf.query_lifetime) * 3600.0
    if lifetime <= 0:
        return {}
    folder, now, found = query_folder(server, cache), time.time(), {}
    for name in skycells:
        path = folder / f"{name}.ecsv"
        try:
            info = path.stat()
            table = _read(str(path), info.st_mtime_ns, info.st_size)
            asked = float(table.meta["asked"])
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.debug("Asking MAST again for %s: its answer on disk (%s) is unreadable: %s", name, path, exc)
            continue
        if 0 <= now - asked < lifetime:
            found[name] = table
    return found


@functools.lru_cache(maxsize=256)
def _read(path: str, mtime_ns: int, size: int) -> Table:
    """The table of an answer file as it is now (its time and size name the version): parsing
    ECSV's YAML header took a sixth of a 20" cut's CPU when done for every box."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        return Table.read(path, format="ascii.ecsv")


def keep_layers(server: str, tables: dict[str, Table], cache=None) -> None:
    """Keep ``server``'s answers (skycell name -> layer table) in ``cache``, with the time now."""
    if float(conf.query_lifetime) <= 0:
        return
    folder = query_folder(server, cache)
    folder.mkdir(parents=True, exist_ok=True)
    asked = time.time()
    for name, table in tables.items():
        table = table.copy(copy_data=False)
        table.meta = {"server": server, "skycell": name, "asked": asked}
        write_atomically(folder / f"{name}.ecsv", lambda path, t=table: t.write(path, format="ascii.ecsv"))
