"""Whole-file downloads into a cache, verified before use.

A download goes to ``<name>.part``, resumes with ``Range`` where a broken transfer stopped, and is
renamed to its real name only once its size equals the server's and its FITS structure is whole
(`~glue_mvmcut.core.files.write_atomically`), so a file under its final name is always complete.
Product names from the server are untrusted: anything that is not a bare MVM layer file name is
refused before a byte is written.
"""

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import requests
from astropy.config import get_cache_dir_path

from .config import conf
from .endpoints import file_url
from .errors import ArchiveError, Cancelled
from .files import fits_problem, write_atomically
from .names import checked_product
from .transport import RETRYABLE, Retries, TransferStats, http_session, transport_errors

__all__ = ["cache_dir", "download_layer"]

log = logging.getLogger(__name__)

# Small enough that a broken transfer loses little: urllib3 drops a partly read chunk.
_CHUNK = 64 * 1024

Progress = Callable[[int, int, str], None]


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
    url = file_url(data_uri)
    stats = stats if stats is not None else TransferStats()

    def fetch_whole(partial: Path) -> None:
        _fetch(session, url, partial, expected, name, progress, cancel, stats)
        problem = fits_problem(partial)
        if problem:
            raise ArchiveError(
                f"Downloading {name}: the bytes received are not a whole FITS file ({problem})."
            )

    with http_session(timeout) as session, transport_errors(f"Downloading {name}"):
        head = session.head(url, allow_redirects=True)
        stats.add(requests=1)
        head.raise_for_status()
        expected = _length(head)  # MAST does not always say (astroquery #3290)
        if target.exists() and not overwrite and expected in (None, target.stat().st_size):
            log.info("%s is already in the cache (%d bytes).", name, target.stat().st_size)
            return target
        write_atomically(target, fetch_whole)
    log.info("Downloaded %s (%d bytes).", name, target.stat().st_size)
    return target


def _length(response: requests.Response) -> int | None:
    """The whole file's size a reply announces: a 206's Content-Range total, else Content-Length;
    None where it says neither."""
    total = response.headers.get("Content-Range", "").rpartition("/")[2]
    length = total if response.status_code == 206 else response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def _fetch(session, url, partial: Path, expected: int | None, name, progress, cancel, stats) -> None:
    """GET ``url`` into ``partial``; when the body breaks off, resume from the last byte with
    ``Range`` (or start again if the server ignores it), as `~glue_mvmcut.core.transport.Retries`
    allows. Where no reply says the file's size, a body that ends cleanly is complete once its FITS
    structure is whole; one that is not is resumed like a broken one."""
    done, retries = 0, Retries(f"Downloading {name}")
    partial.unlink(missing_ok=True)
    while expected is None or done < expected:
        headers = {"Range": f"bytes={done}-"} if done else {}
        try:
            with session.get(url, stream=True, headers=headers) as response:
                stats.add(requests=1)
                if done and response.status_code == 416 and expected is None:
                    return  # nothing past what came: fetch_whole says what is wrong with it
                response.raise_for_status()
                if done and response.status_code != 206:
                    log.info("%s: the server cannot resume; starting again.", name)
                    done = 0
                expected = expected if expected is not None else _length(response)
                with open(partial, "ab" if done else "wb") as out:
                    for block in response.iter_content(_CHUNK):
                        out.write(block)
                        done += len(block)
                        stats.add(len(block))
                        if progress:
                            progress(done, expected or 0, name)
                        if cancel and cancel():
                            raise Cancelled(f"Download of {name} cancelled.")
            if expected is None:
                if fits_problem(partial) is None:
                    return
                raise requests.exceptions.ChunkedEncodingError(f"the FITS file ends early, at byte {done}")
            if done > expected:
                raise ArchiveError(f"Downloading {name}: got {done} bytes where MAST announced {expected}.")
            if done < expected:
                raise requests.exceptions.ChunkedEncodingError(f"body ended at byte {done} of {expected}")
        except RETRYABLE as exc:
            wait = retries.failed(exc)
            if wait is None:
                raise ArchiveError(
                    f"Downloading {name}: the transfer broke off {retries.failures} times (last at byte "
                    f"{done} of {expected or 'an unknown size'}: {exc}); nothing was kept."
                ) from exc
            time.sleep(wait)
