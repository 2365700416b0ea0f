"""Files on disk: written so that none ever looks finished before it is, and checked before use.

Whoever can write to an output or cache folder must not be able to make a run write elsewhere:
temporary files live in private folders of unpredictable names (`write_atomically`), files kept
under a known name across runs are opened without following links (`open_regular`), and a
folder is written by one run at a time (`folder_lock`).
"""

import errno
import glob
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from astropy.config import get_cache_dir_path
from astropy.io import fits
from filelock import FileLock, Timeout

from .config import conf
from .errors import Cancelled, NotMVMFileError, OutputFolderError, UnsafePathError
from .fitsheaders import BLOCK, CARD, END_CARD, MAX_HEADER, HDUInfo, find_card

__all__ = [
    "cache_dir",
    "writable_folder",
    "write_atomically",
    "atomic_target",
    "remove_path",
    "remove_stale_parts",
    "open_regular",
    "held_lock",
    "folder_lock",
    "folder_lock_path",
    "locks_folder",
    "checked_fits",
    "fits_problem",
    "structure_problem",
]

log = logging.getLogger(__name__)

#: Suffix of the private folders `write_atomically` writes in.
PART = ".part"


def cache_dir(directory=None) -> Path:
    """The download cache: ``directory`` if given, else ``$MVMCUT_CACHE_DIR``, else
    ``glue_mvmcut.conf.cache_dir``, else ``glue_mvmcut`` in the astropy cache directory."""
    chosen = directory or os.environ.get("MVMCUT_CACHE_DIR") or conf.cache_dir
    path = Path(chosen) if chosen else get_cache_dir_path() / "glue_mvmcut"
    path.mkdir(parents=True, exist_ok=True)
    return path


def writable_folder(folder) -> Path:
    """``folder``, made if need be, once a file can be written in it: checked before any work,
    so a run never fetches and cuts everything to fail at its last step.

    Raises
    ------
    OutputFolderError
        Naming the folder and why (a file in its way, no permission, a read-only file system).
    """
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise OutputFolderError(f"Cannot write to the output folder {path}: {exc.strerror or exc}.") from exc
    return path


def write_atomically(target, write: Callable[[Path], None]) -> Path:
    """Write ``target`` with ``write(temporary_path)`` and rename it into place, so an interrupted
    write never leaves a file (or folder) that looks finished (see `atomic_target`)."""
    with atomic_target(target) as partial:
        write(partial)
    return Path(target)


#: The errors of a disk that has no room left for what is written.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT}


@contextmanager
def atomic_target(target) -> Iterator[Path]:
    """The temporary path to write ``target`` at, renamed into place when the block ends
    without an error: an interrupted write never leaves a file (or folder) that looks finished.

    The temporary path has ``target``'s name, in a private folder made beside it
    (``.<name>.<random>.part``, mode 0700, `tempfile.mkdtemp`): nobody can plant a link where
    the block writes, and two runs writing one name never meet. The block may make a file or a
    folder there. The private folder goes, whatever happens; one left by a killed run is removed
    by `remove_stale_parts`.

    Raises
    ------
    OutputFolderError
        If the disk is full or the user's quota spent while the block writes, naming the file
        and its folder.
    """
    target = Path(target)
    private = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=PART, dir=target.parent))
    try:
        partial = private / target.name
        yield partial
        if partial.is_dir():  # a folder replaces only an empty one: whatever is there goes
            remove_path(target)
        os.replace(partial, target)  # a link planted at ``target`` is replaced, not followed
    except OSError as exc:
        if exc.errno not in _NO_ROOM:
            raise
        raise OutputFolderError(f"Cannot write {target.name} in {target.parent}: {exc.strerror}.") from exc
    finally:
        shutil.rmtree(private, ignore_errors=True)


def remove_path(path: Path) -> None:
    """Remove the file, folder (with what it holds) or link ``path`` (the link, never what it
    points to), if there is one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_stale_parts(folder: Path, names: Iterable[str]) -> None:
    """Remove what killed runs left of their `write_atomically` of ``names`` in ``folder``.

    Call it holding `folder_lock`, which every run writing there holds while it writes.
    """
    for name in names:
        for private in folder.glob(f".{glob.escape(name)}.*{PART}"):
            if stat.S_ISDIR(private.lstat().st_mode):  # never a planted link's target
                shutil.rmtree(private, ignore_errors=True)


def open_regular(path: Path, mode: str = "r+b"):
    """Open the regular file ``path`` (made, empty, if missing and ``mode`` writes) without
    following a link: for files kept under a known name across runs (a download's part).

    Raises
    ------
    UnsafePathError
        If ``path`` is a link, a FIFO, a device or a folder.
    """
    flags = os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block the open
    flags |= os.O_RDONLY if mode == "rb" else os.O_RDWR | os.O_CREAT
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if os.path.islink(path):
            raise UnsafePathError(f"{path} is a symbolic link: refused.") from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePathError(f"{path} is not a regular file: refused.")
    os.set_blocking(fd, True)
    return os.fdopen(fd, mode)


@contextmanager
def held_lock(
    path: Path, waiting: str, cancel: Callable[[], bool] | None = None, level: int = logging.INFO
) -> Iterator[None]:
    """Hold the file lock ``path`` (`filelock`: across threads and processes); if another holds
    it, log ``waiting`` (at ``level``) and wait, checking ``cancel`` (`Cancelled` if it returns True).

    Raises
    ------
    UnsafePathError
        If ``path`` is a link (filelock ≥ 4 opens lock files without following links; older
        ones truncated what a planted link pointed to).
    """
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.log(level, "%s", waiting)
        while True:
            if cancel and cancel():
                raise Cancelled(f"Cancelled while {waiting[0].lower()}{waiting[1:]}") from None
            try:
                lock.acquire(timeout=0.2)
                break
            except Timeout:
                continue
    except OSError as exc:
        if os.path.islink(path):
            raise UnsafePathError(f"The lock file {path} is a symbolic link: refused.") from exc
        raise
    try:
        yield
    finally:
        lock.release()


def folder_lock_path(folder) -> Path:
    """The lock of the output ``folder``: in the download cache's ``.locks``, named by the
    folder's real path, so that the folder holds only what runs write there."""
    key = hashlib.sha256(os.fsencode(os.path.realpath(folder))).hexdigest()[:32]
    return locks_folder(cache_dir()) / f"folder-{key}"


def locks_folder(cache: Path) -> Path:
    """The hidden folder of the cache ``cache`` where its lock files are (`held_lock`)."""
    locks = cache / ".locks"
    locks.mkdir(exist_ok=True)
    return locks


@contextmanager
def folder_lock(folder, cancel: Callable[[], bool] | None = None) -> Iterator[None]:
    """Write in the output ``folder`` as its only writer (among the runs of one download cache):
    a second run writing there waits (saying so) until the first is done, so neither sees the
    other's work half done."""
    with held_lock(
        folder_lock_path(folder),
        f"Waiting for another mvmcut run writing in {folder} to finish.",
        cancel,
        logging.WARNING,
    ):
        yield


def checked_fits(path) -> Path:
    """``path``, once `fits_problem` finds nothing wrong with it.

    Raises
    ------
    NotMVMFileError
        Naming the file and what is wrong with it.
    """
    path = Path(path)
    if not os.path.lexists(path):
        raise NotMVMFileError(f"{path} does not exist.")
    problem = fits_problem(path)
    if problem:
        raise NotMVMFileError(f"{path.name} is not a readable, complete FITS file ({problem}).")
    return path


def fits_problem(path: Path) -> str | None:
    """What is wrong with a FITS file's structure (not a regular file, an impossible or endless
    header, truncated, unreadable), or None if it is whole.

    The headers are walked here first (`structure_problem`): astropy loops for ever on some
    (a negative NAXISn), and blocks on a FIFO.
    """
    problem = structure_problem(path)
    if problem:  # a truncated file among them: astropy only warns of one
        return problem
    try:
        with fits.open(path) as hdul:
            hdul.readall()
    except Exception as exc:  # astropy raises many kinds for what it cannot read
        return f"unreadable: {exc}"
    return None


def structure_problem(path: Path) -> str | None:
    """What is wrong with the HDU layout of the file ``path``, walked header by header (never
    more than `~glue_mvmcut.core.fitsheaders.MAX_HEADER` bytes each), or None: not a regular
    file, a header without END or with an impossible layout, an HDU cut short, bytes after the
    last HDU that are no header."""
    try:
        with open_regular(Path(path), "rb") as file:
            size = os.fstat(file.fileno()).st_size
            offset = 0
            while offset < size:
                file.seek(offset)
                if not file.read(9).startswith((b"SIMPLE  =", b"XTENSION=")):
                    return f"no FITS header at byte {offset}" if offset else "not a FITS file"
                file.seek(offset)
                cards = _header_cards(file)
                if isinstance(cards, str):
                    return f"the header at byte {offset} {cards}"
                length = -(-len(cards) // BLOCK) * BLOCK
                info = HDUInfo.read(cards, offset, length, Path(path).name)
                if info.end > size:  # a whole file ends where its last HDU's padded data ends
                    return f"truncated: {size} bytes, but its HDU at byte {offset} ends at byte {info.end}"
                offset = info.end
    except (OSError, NotMVMFileError) as exc:
        return str(exc)
    return None


def _header_cards(file) -> bytes | str:
    """The cards of the header at ``file``'s position, up to its END card; or why there are
    none (the file ends first, or no END within `~glue_mvmcut.core.fitsheaders.MAX_HEADER`)."""
    data = bytearray()
    while len(data) < MAX_HEADER:
        block = file.read(BLOCK)
        if len(block) < BLOCK:
            return "is cut short: the file ends before its END card"
        data += block
        end = find_card(data[-BLOCK:], END_CARD)
        if end >= 0:
            return bytes(data[: len(data) - BLOCK + end + CARD])
    return f"has no END card in its first {MAX_HEADER >> 20} MB"
