"""Whole-file downloads into a cache shared by every process, verified before use.

A layer downloads to ``<name>.part``, beside ``<name>.part.json``: the validators of the file
it is part of (size, ``Last-Modified``, ``ETag``). It is renamed to its real name only once its
size equals the server's and its FITS structure is whole, so a file under its final name is
always complete. A download that stops for any reason (a broken link, Ctrl-C, a killed process)
leaves its part; the next one resumes it with ``Range`` and ``If-Range`` and starts over only
when the file changed. Within a run, a transfer that breaks is resumed at once, as long as the
attempts in a row that brought nothing stay within ``conf.retries``.

Processes and threads share the cache through one lock per layer (``.locks/<name>``, `filelock`):
whoever comes second waits, then finds the file complete or resumes the part. The cache stays
within ``conf.cache_limit`` GB, least recently used files going first. Product names from the
server are untrusted: anything that is not a bare MVM layer file name is refused before a byte
is written.
"""

import json
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import requests
from filelock import FileLock, Timeout

from .config import conf
from .endpoints import file_url
from .errors import ArchiveError, Cancelled
from .files import cache_dir, fits_problem, held_lock, locks_folder, open_regular, write_atomically
from .limits import Pace, ReplyRefused, TooSlowError, read_body
from .names import checked_product
from .transport import RETRYABLE, Retries, TransferStats, http_session, transport_errors

__all__ = ["cache_dir", "download_layer"]

log = logging.getLogger(__name__)

# Small enough that a broken transfer loses little: urllib3 drops a partly read chunk.
_CHUNK = 64 * 1024
#: Suffixes of a download in progress and of its validators, beside the layer's name in the cache.
_PART, _VALIDATORS = ".part", ".part.json"

Progress = Callable[[int, int, str], None]


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
    folder = cache_dir(cache)
    target = folder / name
    url = file_url(data_uri)
    stats = stats if stats is not None else TransferStats()
    what = f"Downloading {name}"
    with _layer_lock(folder, name, cancel):
        with http_session(timeout) as session, transport_errors(what):
            head = session.head(url, allow_redirects=True)
            stats.add(requests=1)
            head.raise_for_status()
            version = _Version.of(head)  # MAST does not always say the size (astroquery #3290)
            if target.exists() and not overwrite and version.size in (None, target.stat().st_size):
                log.info("%s is already in the cache (%d bytes).", name, target.stat().st_size)
                os.utime(target)  # recently used: the cache limit removes it last
                return target
            partial = _Part(folder / (name + _PART), version)
            _fetch(session, url, partial, name, progress, cancel, stats)
        problem = fits_problem(partial.path)
        if problem:
            partial.discard()
            raise ArchiveError(f"{what}: the bytes received are not a whole FITS file ({problem}).")
        partial.finish(target)
    log.info("Downloaded %s (%d bytes).", name, target.stat().st_size)
    _keep_within_limit(folder, target)
    return target


def _lock_file(folder: Path, name: str) -> Path:
    """The lock file of layer ``name`` in the cache ``folder``."""
    return locks_folder(folder) / name


def _layer_lock(folder: Path, name: str, cancel):
    """The layer's lock, held while it downloads: another process or thread downloading it is
    waited for."""
    return held_lock(_lock_file(folder, name), f"Waiting for another download of {name} to finish.", cancel)


class _Version:
    """What identifies one version of a file on the server: size, Last-Modified, ETag."""

    def __init__(self, size: int | None, last_modified: str | None, etag: str | None):
        self.size, self.last_modified, self.etag = size, last_modified, etag

    @classmethod
    def of(cls, response: requests.Response) -> "_Version":
        headers = response.headers
        return cls(_length(response), headers.get("Last-Modified"), headers.get("ETag"))

    def as_dict(self) -> dict:
        return {"size": self.size, "last_modified": self.last_modified, "etag": self.etag}

    def same_as(self, other: dict) -> bool:
        """Whether ``other`` (`as_dict` of a version seen before) is this version: every
        validator both know agrees, and they share at least one."""
        mine = self.as_dict()
        shared = [key for key, value in mine.items() if value is not None and other.get(key) is not None]
        return bool(shared) and all(mine[key] == other[key] for key in shared)

    @property
    def if_range(self) -> str | None:
        """The ``If-Range`` value that resumes this version only (a strong ETag, else the date)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


class _Part:
    """A download in progress: ``<name>.part`` and the validators of the file it is part of."""

    def __init__(self, path: Path, version: _Version):
        self.path, self.version = path, version
        self.validators = path.with_name(path.name.removesuffix(_PART) + _VALIDATORS)

    def resumable(self) -> int:
        """Bytes already here of this very version of the file (0 if none, or of another)."""
        try:
            with open_regular(self.validators, "rb") as validators:
                seen = json.loads(validators.read())
            with open_regular(self.path, "rb") as part:
                held = os.fstat(part.fileno()).st_size
        except (OSError, ValueError):  # UnsafePathError too: `start` replaces what is there
            return 0
        fits = self.version.size is None or held <= self.version.size
        return held if fits and self.version.same_as(seen) else 0

    def start(self, version: _Version) -> None:
        """Begin anew (for ``version`` of the file): an empty part beside its validators."""
        self.version = version
        write_atomically(self.validators, lambda part: part.write_text(json.dumps(version.as_dict())))
        self.path.unlink(missing_ok=True)  # a link planted here goes, never what it points to
        open_regular(self.path).close()

    def finish(self, target: Path) -> None:
        os.replace(self.path, target)
        self.validators.unlink(missing_ok=True)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.validators.unlink(missing_ok=True)


def _keep_within_limit(folder: Path, keep: Path) -> None:
    """Remove the least recently used files of the cache ``folder`` (never ``keep``, nor a layer
    another process is downloading) until it holds at most ``conf.cache_limit`` GB; say so."""
    limit = float(conf.cache_limit) * 1e9
    sizes = _files(folder)
    total = sum(info.st_size for info in sizes.values())
    if total <= limit:
        return
    removed = freed = 0
    for path in sorted(sizes, key=lambda path: sizes[path].st_mtime):
        if total - freed <= limit:
            break
        name = path.name.removesuffix(_VALIDATORS).removesuffix(_PART)
        if path == keep or name == keep.name:
            continue
        lock = FileLock(_lock_file(folder, name))
        try:
            lock.acquire(timeout=0)
        except Timeout:  # being downloaded
            continue
        try:
            path.unlink(missing_ok=True)
        finally:
            lock.release()
        removed, freed = removed + 1, freed + sizes[path].st_size
    log.warning(
        "The download cache %s held %.2f GB, over its limit of %.2f GB (glue_mvmcut.conf.cache_limit): "
        "removed %d least recently used files (%.2f GB).",
        folder,
        total / 1e9,
        limit / 1e9,
        removed,
        freed / 1e9,
    )


def _files(folder: Path) -> dict[Path, os.stat_result]:
    """The files in ``folder`` and what stat says of each (those other threads remove meanwhile
    left out)."""
    found = {}
    for path in folder.iterdir():
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if stat.S_ISREG(info.st_mode):
            found[path] = info
    return found


def _length(response: requests.Response) -> int | None:
    """The whole file's size a reply announces: a 206's Content-Range total, else Content-Length;
    None where it says neither."""
    total = response.headers.get("Content-Range", "").rpartition("/")[2]
    length = total if response.status_code == 206 else response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def _fetch(session, url, partial: _Part, name, progress, cancel, stats) -> None:
    """GET ``url`` into ``partial``, resuming the bytes it holds of the same version of the file;
    when the body breaks off, resume from the last byte (`_attempt`), as long as the attempts in
    a row that brought nothing stay within `~glue_mvmcut.core.transport.Retries`."""
    what = f"Downloading {name}"
    done, retries = partial.resumable(), Retries(what)
    if done and done == partial.version.size:
        return  # all of it came before: the caller checks it
    if done:
        log.info("%s: resuming the %d bytes kept from before.", name, done)
    else:
        partial.start(partial.version)
    while True:
        before = done
        try:
            _attempt(session, url, partial, done, name, progress, cancel, stats)
            return
        except _Broken as broken:
            done, exc = broken.done, broken.__cause__
        if done > before:  # it moved bytes: the budget is for attempts in a row that did not
            retries = Retries(what)
        wait = retries.failed(exc)
        if wait is None:
            if not done:
                partial.discard()
            kept = f"the {done} bytes received are kept for the next run" if done else "nothing was kept"
            size = partial.version.size or "an unknown size"
            raise ArchiveError(
                f"{what}: the transfer broke off {retries.failures} times in a row without progress "
                f"(last at byte {done} of {size}: {exc}); {kept}."
            ) from exc
        time.sleep(wait)


class _Broken(Exception):
    """An attempt broke off (its cause says how) with ``done`` bytes of the file in the part."""

    def __init__(self, done: int):
        self.done = done


def _attempt(session, url, partial: _Part, done: int, name, progress, cancel, stats) -> int:
    """One GET of the file from byte ``done`` on (``If-Range``: of the same version only, else
    the whole file anew) into ``partial``; returns the bytes held once the file is whole.

    Where no reply says the file's size, a body that ends cleanly is complete once its FITS
    structure is whole; one that is not is taken for a broken one. Raises `_Broken` from a
    failure worth resuming after.
    """
    headers = {"Range": f"bytes={done}-", "If-Range": partial.version.if_range} if done else {}
    try:
        with session.get(url, stream=True, headers={k: v for k, v in headers.items() if v}) as response:
            stats.add(requests=1)
            if done and response.status_code == 416 and partial.version.size is None:
                return done  # nothing past what came: the caller says what is wrong with it
            response.raise_for_status()
            if done and response.status_code != 206:
                log.info("%s: the file changed on the server, or it cannot resume; starting again.", name)
                done = 0
            if not done and response.status_code == 200:
                fresh = _Version.of(response)
                fresh.size = fresh.size if fresh.size is not None else partial.version.size  # HEAD's
                partial.start(fresh)
            done = _receive(response, partial, done, name, progress, cancel, stats)
        expected = partial.version.size
        if expected is None and fits_problem(partial.path) is not None:
            raise requests.exceptions.ChunkedEncodingError(f"the FITS file ends early, at byte {done}")
        if expected is not None and done < expected:
            raise requests.exceptions.ChunkedEncodingError(f"body ended at byte {done} of {expected}")
        return done
    except RETRYABLE as exc:
        raise _Broken(partial.path.stat().st_size) from exc


def _receive(response, partial: _Part, done: int, name, progress, cancel, stats) -> int:
    """Write the body of ``response`` into ``partial`` from byte ``done`` on, never past the
    size the server announced, at the pace `~glue_mvmcut.core.limits.Pace` allows; returns
    the bytes held."""
    expected = partial.version.size
    with open_regular(partial.path) as out:
        out.seek(done)
        out.truncate()
        try:
            for block in read_body(response, Pace(), _CHUNK):
                if expected is not None and done + len(block) > expected:
                    out.write(block[: expected - done])  # what fits is the file's, as announced
                    raise ArchiveError(
                        f"Downloading {name}: MAST sent more than the {expected} bytes it announced."
                    )
                out.write(block)
                done += len(block)
                stats.add(len(block))
                if progress:
                    progress(done, expected or 0, name)
                if cancel and cancel():
                    raise Cancelled(
                        f"Download of {name} cancelled; its {done} bytes are kept for the next run."
                    )
        except (TooSlowError, ReplyRefused) as exc:
            kept = f"the {done} bytes received are kept for the next run" if done else "nothing was kept"
            raise type(exc)(f"{exc}; {kept}") from exc
    return done
