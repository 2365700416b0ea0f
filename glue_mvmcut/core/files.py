"""Files on disk: written so that none ever looks finished before it is, and checked before use."""

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning

from .errors import OutputFolderError
from .threadsafe import catch_warnings

__all__ = ["writable_folder", "write_atomically", "fits_problem"]


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
    write never leaves a file (or folder) that looks finished.

    The temporary path is ``<target>.part`` beside it; ``write`` may make a file or a folder
    there, and may write it in several steps (a download resuming a broken transfer). Whatever
    is left there when ``write`` fails is removed.
    """
    target = Path(target)
    partial = target.with_name(target.name + ".part")
    try:
        write(partial)
        os.replace(partial, target)
    finally:
        if partial.is_dir() and not partial.is_symlink():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
    return target


def fits_problem(path: Path) -> str | None:
    """What is wrong with a FITS file's structure (truncated, unreadable), or None if it is whole."""
    size = path.stat().st_size
    try:
        with catch_warnings(record=True) as caught:
            warnings.simplefilter("always", AstropyWarning)
            with fits.open(path, memmap=True) as hdul:
                hdul.readall()
                ends = [hdul.fileinfo(i)["datLoc"] + hdul.fileinfo(i)["datSpan"] for i in range(len(hdul))]
    except Exception as exc:  # astropy raises many kinds for files that are not FITS
        return f"unreadable: {exc}"
    for warning in caught:  # astropy only warns when a file is cut short
        if "truncated" in str(warning.message):
            return str(warning.message)
    # A whole FITS file ends exactly where its last HDU's padded data ends; astropy silently drops
    # an HDU whose data was cut short, so a shorter total means a truncated file.
    if max(ends) != size:
        return f"{size} bytes, but its complete HDUs end at byte {max(ends)}"
    return None
