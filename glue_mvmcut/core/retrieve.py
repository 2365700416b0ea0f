"""Getting bytes from the archive: whole-file downloads into a cache, verified before use.

A download goes to ``<name>.part``, resumes with ``Range`` where a broken transfer stopped, and is
renamed to its real name only once its size equals the server's and its FITS structure is whole,
so a file under its final name is always complete. Product names from the server are
untrusted: anything that is not a bare MVM layer file name is refused before a byte is written.
"""

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
from astropy.config import get_cache_dir_path
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning

from .archive import archive_errors, file_url, http_session
from .config import conf
from .errors import ArchiveError, Cancelled
from .products import checked_product
from .threadsafe import catch_warnings

__all__ = ["TransferStats", "cache_dir", "download_layer", "fits_problem"]

log = logging.getLogger(__name__)

# Small enough that a broken transfer loses little: urllib3 drops a partly read chunk.
_CHUNK = 64 * 1024

Progress = Callable[[int, int, str], None]


@dataclass
class TransferStats:
    """Bytes and HTTP requests spent on the archive (safe to share between threads)."""

    bytes: int = 0
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, nbytes: int = 0, requests: int = 0) -> None:
        """Count ``nbytes`` more body bytes and ``requests`` more requests."""
        with self._lock:
            self.bytes += nbytes
            self.requests += requests


def cache_dir(directory=None) -> Path:
    """The download cache: ``directory`` if given, else ``$MVMCUT_CACHE_DIR``, else
    ``glue_mvmcut.conf.cache_dir``, else ``glue_mvmcut`` in the astropy cache directory."""
    chosen = directory or os.environ.get("MVMCUT_CACHE_DIR") or conf.cache_dir
    path = Path(chosen) if chosen else get_cache_dir_path() / "glue_mvmcut"
    path.mkdir(parents=True, exist_ok=True)
    return path


def download_layer(
    filename: str,
    data_uri: str,
    *,
    cache=None,
    overwrite: bool = False,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
    stats: TransferStats | None = None,
    timeout: float | None = None,
) -> Path:
    """Download one layer file into the cache (or reuse a complete copy already there).

    Parameters
    ----------
    filename : str
        The product's file name (``productFilename``); must be a plain file name.
    data_uri : str
        The product's ``dataURI`` (``mast:HST/product/<file>``).
    cache : path-like, optional
        Directory to download into (default: `cache_dir`).
    overwrite : bool, optional
        Download again even if a complete copy is cached.
    progress : callable, optional
        ``progress(bytes_done, bytes_total, filename)``, called as bytes arrive.
    cancel : callable, optional
        Returns True to stop; the partial download is removed and `Cancelled` raised.
    stats : TransferStats, optional
        Incremented with the bytes and requests spent.
    timeout : float, optional
        Seconds of silence before giving up (default ``glue_mvmcut.conf.timeout``).

    Returns
    -------
    pathlib.Path
        The complete file in the cache.

    Raises
    ------
    UnsafeNameError, ArchiveError, Cancelled
    """
    name = checked_product(filename, data_uri)
    target = cache_dir(cache) / name
    partial = target.with_name(name + ".part")
    url = file_url(data_uri)
    stats = stats if stats is not None else TransferStats()
    with http_session(timeout) as session, archive_errors(f"Downloading {name}"):
        head = session.head(url, allow_redirects=True)
        stats.add(requests=1)
        head.raise_for_status()
        expected = int(head.headers["Content-Length"])
        if target.exists() and not overwrite and target.stat().st_size == expected:
            log.info("%s is already in the cache (%d bytes).", name, expected)
            return target
        try:
            _fetch(session, url, partial, expected, name, progress, cancel, stats)
            problem = fits_problem(partial)
            if problem:
                raise ArchiveError(
                    f"Downloading {name}: the bytes received are not a whole FITS file ({problem})."
                )
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    log.info("Downloaded %s (%d bytes).", name, expected)
    return target


BROKEN_TRANSFER = (
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
)


def _fetch(session, url, partial: Path, expected: int, name, progress, cancel, stats) -> None:
    """GET ``url`` into ``partial``; when the body breaks off, resume from the last byte with
    ``Range`` (or start again if the server ignores it), up to ``conf.retries`` times."""
    done, failures = 0, 0
    partial.unlink(missing_ok=True)
    while done < expected:
        headers = {"Range": f"bytes={done}-"} if done else {}
        try:
            with session.get(url, stream=True, headers=headers) as response:
                stats.add(requests=1)
                response.raise_for_status()
                if done and response.status_code != 206:
                    log.info("%s: the server cannot resume; starting again.", name)
                    done = 0
                with open(partial, "ab" if done else "wb") as out:
                    for block in response.iter_content(_CHUNK):
                        out.write(block)
                        done += len(block)
                        stats.add(len(block))
                        if progress:
                            progress(done, expected, name)
                        if cancel and cancel():
                            raise Cancelled(f"Download of {name} cancelled.")
            if done > expected:
                raise ArchiveError(f"Downloading {name}: got {done} bytes where MAST announced {expected}.")
            if done < expected:
                raise requests.exceptions.ChunkedEncodingError(f"body ended at byte {done} of {expected}")
        except BROKEN_TRANSFER as exc:
            failures += 1
            if failures > int(conf.retries):
                raise ArchiveError(
                    f"Downloading {name}: the transfer broke off {failures} times (last at byte {done} of "
                    f"{expected}: {exc}); nothing was kept."
                ) from exc
            wait = float(conf.backoff) * 2 ** (failures - 1)
            log.info("%s broke off at byte %d (%s); resuming in %.1f s.", name, done, exc, wait)
            time.sleep(wait)


def fits_problem(path: Path) -> str | None:
    """What is wrong with a FITS file's structure (truncated, unreadable), or None if it is whole."""
    size = path.stat().st_size
    try:
        with catch_warnings(record=True) as caught:
            warnings.simplefilter("always", AstropyWarning)
            with fits.open(path, memmap=True) as hdul:
                hdul.readall()
                ends = [hdul.fileinfo(i)["datLoc"] + hdul.fileinfo(i)["datSpan"] for i in range(len(hdul))]
    except Exception as exc:
        return f"unreadable: {exc}"
    for warning in caught:  # astropy only warns when a file is cut short
        if "truncated" in str(warning.message):
            return str(warning.message)
    # A whole FITS file ends exactly where its last HDU's padded data ends; astropy silently drops
    # an HDU whose data was cut short, so a shorter total means a truncated file.
    if max(ends) != size:
        return f"{size} bytes, but its complete HDUs end at byte {max(ends)}"
    return None
