"""FITS image files written a block of rows at a time: outputs larger than memory.

The mosaic of a 3600" box is 90000 px square, 32 GB per array. Such a file is laid out first —
every header where it goes, the data left as a hole that reads as zeros (MVM's "no data", and
FITS's padding) — as astropy's FAQ makes a FITS file larger than memory ("How can I create a
very large FITS file from scratch?"); its pixels are then written a block of rows at a time
through memory-mapped windows that are unmapped after each block, or, where the caller writes
every pixel of the columns it fills (a cutout's rows, read from its layer), through a window in
memory written with ``pwrite``; so neither the process's memory nor its resident set grows with
the file. Rows and columns never written stay holes: a cutout's padding beyond its layer takes
no disk.

The headers are those astropy writes for the same HDUs (`~astropy.io.fits.HDUList.writeto`
of the same headers and pixels gives the same bytes). Files are read back a block at a time
(`read_rows`).
"""

import mmap
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
from astropy.io import fits

from .config import conf
from .files import write_atomically
from .fitsheaders import BLOCK, hdu_with_header, stored_dtype
from .names import safe_filename

__all__ = [
    "block_bytes",
    "LaidOutFITS",
    "row_blocks",
    "placeholder",
    "mapped_rows",
    "written_rows",
    "read_rows",
    "stored_rows",
    "open_mapped",
    "file_of",
    "SCALING",
    "is_scaled",
    "write_fits",
]


def block_bytes() -> int:
    """Bytes of one array's rows handled at a time (``conf.block_mb``)."""
    return int(float(conf.block_mb) * (1 << 20))


def row_blocks(start: int, stop: int, width: int, itemsize: int = 4) -> Iterator[slice]:
    """Rows ``start:stop`` of an image ``width`` pixels wide, in blocks of about `block_bytes`."""
    step = max(1, block_bytes() // max(1, width * itemsize))
    for y in range(start, stop, step):
        yield slice(y, min(stop, y + step))


def placeholder(shape: tuple[int, ...], dtype=">f4") -> np.ndarray:
    """Pixels of ``shape`` that take no memory (one zero, broadcast): what an HDU is given so
    that astropy writes its header for that shape and type, its pixels written by blocks."""
    return np.broadcast_to(np.zeros((), dtype), shape)


#: Linux's madvise advice (5.14 on) that faults a mapping's pages in, for reading or for writing,
#: in one call: faulting them in one by one as they are first touched took about as long as
#: copying the pixels (a 600" cut: 5.1-5.7 s without, 3.7-4.8 s with). Python 3.11's mmap module
#: does not name them.
_POPULATE = {"r": 22, "r+": 23}


@contextmanager
def mapped_rows(
    path,
    offset: int,
    shape: tuple[int, int],
    dtype,
    rows: slice,
    mode: str = "r",
    touched: slice | None = None,
) -> Iterator[np.ndarray]:
    """A memory-mapped window on rows ``rows`` of the 2-D array of ``shape`` and ``dtype`` at
    byte ``offset`` of the file ``path`` (``mode`` ``"r"`` or ``"r+"``), unmapped when the block
    ends and nothing refers to it any more: the pages it touched leave the process's resident
    set then, which those of astropy's whole-file memory map never do while the file is open.

    The pages of the columns ``touched`` (read or written) of each row are faulted in at once,
    and only those: a page written takes disk where a hole takes none, and filling a hole's
    pages with zeros to read them takes time."""
    start, stop, _ = rows.indices(shape[0])
    dtype = np.dtype(dtype)
    count = max(0, stop - start) * shape[1]
    if not count:
        yield np.zeros((max(0, stop - start), shape[1]), dtype)
        return
    first = offset + start * shape[1] * dtype.itemsize
    aligned = first - first % mmap.ALLOCATIONGRANULARITY
    access = mmap.ACCESS_READ if mode == "r" else mmap.ACCESS_WRITE
    with open(path, "rb" if mode == "r" else "r+b") as file:
        mapping = mmap.mmap(
            file.fileno(), first - aligned + count * dtype.itemsize, access=access, offset=aligned
        )
    with suppress(AttributeError, OSError):  # no madvise (Windows), or a kernel without the advice
        if touched is not None and 2 * len(range(*touched.indices(shape[1]))) < shape[1]:
            # No read-ahead where less than half of each row is touched: it zero-filled the
            # holes between (three quarters of a 1800" cut's CPU: 27-30 s, without 8 s). Where
            # most is, it fills pages about to be used (a 600" cut 4.0-4.6 s, without 5.9-6.8).
            mapping.madvise(mmap.MADV_RANDOM)
        for start_byte, length in _populated(first - aligned, shape[1], dtype.itemsize, count, touched):
            mapping.madvise(_POPULATE[mode], start_byte, length)
    # Unmapped, not flushed: msync would wait for the disk at every block; the kernel writes
    # the pages back in its own time, as it does a write's.
    yield np.frombuffer(mapping, dtype, count, first - aligned).reshape(-1, shape[1])


def _populated(first: int, width: int, itemsize: int, count: int, touched: slice | None):
    """(start, length) of the bytes of a mapping to fault in (see `mapped_rows`): the columns
    ``touched`` of each row (all at once where they are whole rows), page-aligned."""
    if touched is None:
        return []
    begin, end, _ = touched.indices(width)
    if (begin, end) == (0, width):
        return [(0, first + count * itemsize)]
    page = mmap.PAGESIZE
    row_bytes = width * itemsize
    spans = []
    for row_start in range(first, first + count * itemsize, row_bytes):
        start_byte = row_start + begin * itemsize
        aligned = start_byte - start_byte % page
        spans.append((aligned, row_start + end * itemsize - aligned))
    return spans


class _Buffers:
    """The memory of `written_rows`'s windows, kept for the next windows while any file is being
    written (a `LaidOutFITS` is alive), at most `KEPT` buffers: a new buffer's pages are
    zero-filled by the system when first touched, as a memory map's are (a 600" cut with new
    buffers for each file: 0.2-0.3 s more user time, two runs). All are let go once no file is
    being written: a Glue session does not hold them between loads."""

    KEPT = 4

    def __init__(self):
        self._free: list[bytearray] = []
        self._files = 0
        self._lock = threading.Lock()

    def file_opened(self, file) -> None:
        """``file`` (a `LaidOutFITS`) is being written until it is freed."""
        with self._lock:
            self._files += 1
        weakref.finalize(file, self._file_closed)

    def _file_closed(self) -> None:
        with self._lock:
            self._files -= 1
            if not self._files:
                self._free.clear()

    def take(self, nbytes: int) -> bytearray:
        with self._lock:
            for index, buffer in enumerate(self._free):
                if nbytes <= len(buffer) <= 2 * nbytes:
                    return self._free.pop(index)
        return bytearray(nbytes)

    def give(self, buffer: bytearray) -> None:
        with self._lock:
            if self._files:
                self._free.append(buffer)
                del self._free[: len(self._free) - self.KEPT]


_BUFFERS = _Buffers()


@contextmanager
def written_rows(
    path,
    offset: int,
    shape: tuple[int, int],
    dtype,
    rows: slice,
    columns: slice = slice(None),
) -> Iterator[np.ndarray]:
    """A window on rows ``rows`` of the 2-D array of ``shape`` and ``dtype`` at byte ``offset`` of
    the file ``path``, whose every pixel in ``columns`` the caller writes, in memory; those
    pixels are written to the file with ``pwrite`` (once for whole rows, else once per row)
    when the block ends without an error. The window's contents are undefined until written,
    and it is not to be kept after the block (its memory serves the next window: `_Buffers`).
    A write that fails (a full disk) raises its ``OSError``, where a memory map's would have
    been a SIGBUS.

    This spares what a memory map costs (`mapped_rows`): the system zero-filling each page of
    the file as it is faulted in, only to be overwritten. A 600" cut into files spent ~44 % of
    its writing thread in that (the kernel's ``memset``).
    """
    start, stop, _ = rows.indices(shape[0])
    begin, end, _ = columns.indices(shape[1])
    dtype = np.dtype(dtype)
    count = max(0, stop - start) * shape[1]
    row_bytes = shape[1] * dtype.itemsize
    buffer = _BUFFERS.take(count * dtype.itemsize)
    try:
        window = memoryview(buffer)[: count * dtype.itemsize]
        yield np.frombuffer(window, dtype, count).reshape(-1, shape[1])
        first = offset + start * row_bytes
        if (begin, end) == (0, shape[1]):
            spans = [(window, first)]
        else:
            spans = [
                (
                    window[at + begin * dtype.itemsize : at + end * dtype.itemsize],
                    first + at + begin * dtype.itemsize,
                )
                for at in range(0, len(window), row_bytes)
            ]
        fd = os.open(path, os.O_WRONLY)
        try:
            for span, position in spans:
                while span:
                    written = os.pwrite(fd, span, position)
                    span, position = span[written:], position + written
        finally:
            os.close(fd)
    finally:
        _BUFFERS.give(buffer)


def read_rows(hdu: fits.ImageHDU, rows: slice, cols: slice = slice(None)) -> np.ndarray:
    """``hdu.data[rows, cols]``: a view where the pixels are in memory, else read from their
    file (through `mapped_rows` where they are stored as they are, `open_mapped`'s pixels too),
    never the whole array."""
    stored = _storage(hdu)
    if stored is not None:
        with mapped_rows(*stored, rows, touched=cols) as window:
            return np.array(window[:, cols])
    in_memory = hdu.fileinfo() is None or hdu._data_loaded
    return hdu.data[rows, cols] if in_memory else hdu.section[rows, cols]


def stored_rows(hdu: fits.ImageHDU) -> slice:
    """The rows of ``hdu`` beyond which its file holds only holes (found with ``SEEK_DATA``
    and ``SEEK_HOLE``, to within a page) and zeros: a cutout or mosaic of a box wider than its
    layers need not be read there. All the rows where the pixels are in memory, or the system
    cannot tell."""
    ny, nx = hdu.shape
    stored = _storage(hdu)
    if stored is None or not hasattr(os, "SEEK_DATA"):
        return slice(0, ny)
    path, offset, _, dtype = stored
    row_bytes, page = nx * dtype.itemsize, mmap.PAGESIZE
    end = offset + ny * row_bytes
    # Pages wholly the pixels' are told by the file system; the first and last, which they may
    # share with the headers around them, by their bytes.
    inner = (min(end, -(-offset // page) * page), max(offset, end // page * page))
    found = []
    with open(path, "rb") as file:
        fd = file.fileno()
        position = inner[0]
        while position < inner[1]:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError:  # ENXIO: nothing but holes to the end of the file
                break
            if start >= inner[1]:
                break
            position = os.lseek(fd, start, os.SEEK_HOLE)
            found.append((start, min(position, inner[1])))
        for lo, hi in ((offset, inner[0]), (max(inner), end)):
            if hi > lo and any(os.pread(fd, hi - lo, lo)):
                found.append((lo, hi))
    if not found:
        return slice(0, 0)
    first, last = min(lo for lo, _ in found), max(hi for _, hi in found)
    return slice((first - offset) // row_bytes, -(-(last - offset) // row_bytes))


def _storage(hdu: fits.ImageHDU) -> tuple | None:
    """(path, offset, shape, dtype) of the pixels of ``hdu`` in its file where they are stored
    as they are and not in memory (an `open_mapped` image's memory map counts as its file);
    None where they are in memory or must be decoded (scaled, compressed)."""
    info = hdu.fileinfo()
    # ``_data_loaded``: pixels in memory (a user may have changed them) are what counts.
    if info is None or hdu._data_loaded:
        data = hdu.data
        if isinstance(data, np.memmap) and isinstance(data.base, mmap.mmap) and data.mode == "r":
            return data.filename, data.offset, data.shape, data.dtype
        return None
    if info["file"].compression or isinstance(hdu, fits.CompImageHDU) or is_scaled(hdu.header):
        return None
    return info["file"].name, info["datLoc"], hdu.shape, stored_dtype(hdu.header["BITPIX"])


#: The keywords that turn stored integers into physical values (FITS 4.0 §5.3).
SCALING = ("BSCALE", "BZERO", "BLANK")


def is_scaled(header) -> bool:
    """Whether the header (astropy's, or an `~glue_mvmcut.core.fitsheaders.HDUInfo`) scales its
    stored values."""
    return any(header.get(keyword) is not None for keyword in SCALING)


def open_mapped(path) -> fits.HDUList:
    """The FITS file ``path``, its images' pixels each a read-only `numpy.memmap` of its own:
    nothing is read until used, no file stays open (a memory map needs none), and `read_rows`
    reads them a window at a time. For files written here, of unscaled images."""
    hdus = []
    with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
        for hdu in hdul:
            data = None
            if hdu.header.get("NAXIS"):
                dtype = stored_dtype(hdu.header["BITPIX"])
                data = np.memmap(path, dtype, "r", offset=hdu.fileinfo()["datLoc"], shape=hdu.shape)
            hdus.append(hdu_with_header(type(hdu), hdu.header, data))
    return fits.HDUList(hdus)


def file_of(hdul: fits.HDUList) -> Path | None:
    """The file ``hdul`` was opened from (by `open_mapped` or astropy), None if it is in memory."""
    if hdul.filename() is not None:
        return Path(hdul.filename())
    for hdu in hdul:
        data = hdu.data if hdu._data_loaded else None
        if isinstance(data, np.memmap) and data.filename:
            return Path(data.filename)
    return None


def write_fits(hdul: fits.HDUList, out_dir) -> Path:
    """Write ``hdul`` to ``out_dir`` under its primary FILENAME, atomically.

    Its cards are not verified again: they are a layer's as astropy read them, and cards
    astropy made; verifying each card once more took a quarter of a 20" cut's CPU.
    """
    target = Path(out_dir) / safe_filename(hdul[0].header["FILENAME"])
    return write_atomically(target, lambda path: hdul.writeto(path, overwrite=True, output_verify="ignore"))


class LaidOutFITS:
    """A FITS file laid out for ``hdus`` (a PRIMARY then images, each with its final header and
    pixels or a `placeholder` of their shape) at ``path``, its pixels written by `rows`.

    Made by `create`; the pixels the HDUs hold (not placeholders) are written at once.
    """

    def __init__(self, path: Path, hdus: fits.HDUList, offsets: list[int]):
        self.path, self.hdus, self.offsets = path, hdus, offsets
        _BUFFERS.file_opened(self)

    @classmethod
    def create(cls, path, hdus: Sequence[fits.PrimaryHDU | fits.ImageHDU]) -> "LaidOutFITS":
        """Write the headers of ``hdus`` into a new file at ``path``, its size that of the whole
        file; the data regions read as zeros until written."""
        hdul = fits.HDUList(list(hdus))
        hdul.update_extend()  # as writeto does: EXTEND = T in a primary followed by extensions
        offsets, position = [], 0
        with open(path, "wb") as file:
            for hdu in hdul:
                header = hdu.header.tostring().encode("ascii")
                os.pwrite(file.fileno(), header, position)
                position += len(header)
                offsets.append(position)
                size = hdu.size  # bytes of data, from the header
                position += -(-size // BLOCK) * BLOCK
            file.truncate(position)
        laid = cls(Path(path), hdul, offsets)
        for index, hdu in enumerate(hdul):
            data = hdu.data
            if data is not None and data.size and data.strides != (0,) * data.ndim:
                for rows in row_blocks(0, data.shape[0], data.shape[1], data.itemsize):
                    with laid.rows(index, rows, filled=slice(None), overwritten=True) as window:
                        window[...] = data[rows]
        return laid

    def rows(self, index: int, rows: slice, filled: slice | None = None, *, overwritten: bool = False):
        """A writable window on rows ``rows`` of HDU ``index``'s pixels (big-endian, C order), a
        context manager: what is written into it is in the file when it ends. ``filled``: the
        columns that will be written; ``overwritten``: every pixel of them will be (not added
        to). The window reads as zeros where it is not written (`mapped_rows`, ``filled`` as
        its ``touched``), unless ``filled`` is overwritten (`written_rows`)."""
        hdu = self.hdus[index]
        dtype = np.dtype(hdu.data.dtype).newbyteorder(">")
        if overwritten and filled is not None:
            return written_rows(self.path, self.offsets[index], hdu.shape, dtype, rows, filled)
        return mapped_rows(self.path, self.offsets[index], hdu.shape, dtype, rows, "r+", touched=filled)
