"""Reading parts of a FITS file over HTTP with ``Range`` requests.

A cutout of a multi-GB layer needs its headers and, in SCI and WHT, one short span of bytes per
row of the box. `RemoteFITS` reads the headers with a few small requests and then fetches the row
spans: neighbouring spans are merged when the gap between them is small, many spans go into one
multi-range request (``Range: bytes=a-b,c-d,...``, answered ``multipart/byteranges``), and those
requests run concurrently over the kept-alive connections of one ``requests`` session.

Hand-written because the libraries nearly do it but not quite: astropy's ``fits.open(url,
use_fsspec=True)`` + ``.section`` reads one row per sequential request (or whole read-ahead
blocks), fsspec's ``cat_ranges`` sends one request per span, and neither requests nor urllib3 parse
``multipart/byteranges`` replies. Servers that ignore extra ranges are detected and served one
span per request; servers that ignore ``Range`` altogether raise `RangeNotSupported` so callers can
fall back to a whole-file download.
"""

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import requests
import urllib3
from astropy.io import fits
from astropy.io.fits.hdu.base import BITPIX2DTYPE

from .archive import archive_errors, http_session
from .config import conf
from .errors import ArchiveError, Cancelled, NotMVMFileError
from .retrieve import BROKEN_TRANSFER, TransferStats

__all__ = ["RangeNotSupported", "HDUInfo", "RemoteFITS", "HeaderCache", "LAYER_HEADERS"]

log = logging.getLogger(__name__)

BLOCK = 2880
_CARD = 80
_END_CARD = b"END" + b" " * 77
_CONTENT_RANGE = re.compile(rb"bytes (\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)


class RangeNotSupported(ArchiveError):
    """The server answered a ``Range`` request with the whole file."""


class _RangeHeaderTooLong(Exception):
    """The server refused a multi-range request, likely for the length of its Range header."""


#: Replies of servers to a request header longer than they accept: 400 (Apache, nginx),
#: 413/414, 431 (Request Header Fields Too Large).
_HEADER_TOO_LONG = (400, 413, 414, 431)


_ADVICE = " The archive's server misbehaved: try again, or fetch whole files (--fetch download)."


@dataclass
class HDUInfo:
    """Where one HDU lives in the file.

    A ``guessed`` HDU has not been read yet: it is assumed to be laid out like the HDU before it
    (same header length, BITPIX and shape); `RemoteFITS.read_windows` reads its header along
    with its pixels and corrects both if the guess was wrong.
    """

    header: fits.Header
    header_offset: int
    data_offset: int
    data_size: int  # bytes of data, without the padding to 2880
    guessed: bool = False

    @property
    def end(self) -> int:
        """Offset of the next HDU."""
        return self.data_offset + -(-self.data_size // BLOCK) * BLOCK


def _data_size(header: fits.Header) -> int:
    naxis = header.get("NAXIS", 0)
    if naxis == 0:
        return 0
    elements = 1
    for axis in range(1, naxis + 1):
        elements *= header[f"NAXIS{axis}"]
    return abs(header["BITPIX"]) // 8 * header.get("GCOUNT", 1) * (header.get("PCOUNT", 0) + elements)


class RemoteFITS:
    """Ranged access to a FITS file at ``url``.

    Parameters
    ----------
    url : str
        HTTP(S) address of the file.
    session : `requests.Session`, optional
        Session to use (default: `~glue_mvmcut.core.archive.http_session`, with timeouts).
    stats : `~glue_mvmcut.core.retrieve.TransferStats`, optional
        Incremented with every body byte and request.
    workers : int, optional
        Requests in flight at once.
    ranges_per_request : int, optional
        Spans per multi-range request. 300 keeps the ``Range`` header under ~6.6 KB, inside the
        8 KB that Apache and nginx accept by default; a server that refuses a request of many
        spans (HTTP 400, 413, 414 or 431) is asked again with half as many per request.
    merge_gap : int, optional
        Neighbouring spans closer than this many bytes are fetched as one.
    cancel : callable, optional
        Checked between requests; returning True raises `~glue_mvmcut.core.errors.Cancelled`.
    """

    def __init__(
        self,
        url: str,
        *,
        session: requests.Session | None = None,
        stats: TransferStats | None = None,
        workers: int = 8,
        ranges_per_request: int = 300,
        merge_gap: int = 16 * 1024,
        cancel: Callable[[], bool] | None = None,
    ):
        self.url = url
        self.session = session if session is not None else http_session(pool_size=workers)
        self.stats = stats if stats is not None else TransferStats()
        self.workers = workers
        self.ranges_per_request = ranges_per_request
        self.merge_gap = merge_gap
        self.cancel = cancel
        self.multirange = True  # until the server shows otherwise
        self.size: int | None = None
        self.last_modified: str | None = None
        self._last_read: tuple[int, bytes] = (0, b"")
        self.name = url.rsplit("/", 1)[-1].rsplit("=", 1)[-1]

    # -- transport -----------------------------------------------------------------------------
    def _request(self, spans: list[tuple[int, int]]) -> dict[int, bytes]:
        """One GET for ``spans`` (start, stop) → {start: bytes} for the spans the reply covers.

        A reply cut off mid-body is asked for again, up to ``conf.retries`` times with backoff
        (HTTP 5xx and failed connections are retried by the session itself).
        """
        failures = 0
        while True:
            try:
                return self._request_once(spans)
            except BROKEN_TRANSFER as exc:
                failures += 1
                if failures > int(conf.retries):
                    with archive_errors(f"Reading {self.name}"):
                        raise
                wait = float(conf.backoff) * 2 ** (failures - 1)
                log.info("Reading %s broke off (%s); trying again in %.1f s.", self.name, exc, wait)
                time.sleep(wait)
            except requests.exceptions.RequestException:
                with archive_errors(f"Reading {self.name}"):
                    raise

    def _request_once(self, spans: list[tuple[int, int]]) -> dict[int, bytes]:
        if self.cancel is not None and self.cancel():
            raise Cancelled(f"Reading {self.name} cancelled.")
        header = "bytes=" + ",".join(f"{start}-{stop - 1}" for start, stop in spans)
        with self.session.get(self.url, headers={"Range": header}, stream=True) as response:
            self.stats.add(requests=1)
            if response.status_code in _HEADER_TOO_LONG and len(spans) > 1:
                raise _RangeHeaderTooLong(response.status_code)
            if response.status_code == 200:
                raise RangeNotSupported(
                    f"Reading {self.name}: MAST at {self.url.split('/api')[0]} ignores Range requests: "
                    "use --fetch auto or download."
                )
            response.raise_for_status()
            content_type = response.headers.get("Content-Type", "")
            if response.status_code != 206:
                raise ArchiveError(f"Reading {self.name}: unexpected HTTP {response.status_code}." + _ADVICE)
            body = _body(response)
            self.last_modified = response.headers.get("Last-Modified", self.last_modified)
        self.stats.add(len(body))
        if content_type.startswith("multipart/byteranges"):
            parts = self._multipart(body, content_type)
        else:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").encode())
            if match is None:
                raise ArchiveError(
                    f"Reading {self.name}: a 206 reply without a valid Content-Range." + _ADVICE
                )
            start, stop, total = int(match[1]), int(match[2]) + 1, match[3]
            if stop - start != len(body):
                raise ArchiveError(
                    f"Reading {self.name}: got {len(body)} bytes for a {stop - start}-byte range." + _ADVICE
                )
            if total != b"*":
                self.size = int(total)
            parts = {start: body}
        return self._cover(spans, parts)

    def _multipart(self, body: bytes, content_type: str) -> dict[int, bytes]:
        boundary = re.search(r'boundary="?([^";]+)"?', content_type)
        if boundary is None:
            raise ArchiveError(f"Reading {self.name}: a multipart reply without a boundary." + _ADVICE)
        delimiter = b"--" + boundary[1].encode()
        parts = {}
        at = body.find(delimiter)
        while at >= 0 and not body.startswith(b"--", at + len(delimiter)):  # "--boundary--" ends it
            head_end = body.find(b"\r\n\r\n", at)
            match = _CONTENT_RANGE.search(body, at, head_end) if head_end >= 0 else None
            if match is None:
                raise ArchiveError(f"Reading {self.name}: a multipart part without Content-Range." + _ADVICE)
            start, stop = int(match[1]), int(match[2]) + 1
            if match[3] != b"*":
                self.size = int(match[3])
            first = head_end + 4
            if first + stop - start > len(body):
                raise ArchiveError(f"Reading {self.name}: a multipart part was cut short." + _ADVICE)
            parts[start] = body[first : first + stop - start]  # a copy: the body is freed sooner
            at = first + stop - start + 2  # after the part: CRLF, then the next delimiter
            if not body.startswith(b"\r\n" + delimiter, at - 2):
                raise ArchiveError(
                    f"Reading {self.name}: a multipart part is not as long as its Content-Range says."
                    + _ADVICE
                )
        return parts

    @staticmethod
    def _cover(spans, parts: dict[int, bytes]) -> dict[int, bytes]:
        """Cut the asked spans out of the parts the server sent (it may merge or drop some)."""
        got = {}
        for start, stop in spans:
            exact = parts.get(start)
            if exact is not None and len(exact) >= stop - start:
                got[start] = exact[: stop - start]
                continue
            for part_start, data in parts.items():
                if part_start <= start and stop <= part_start + len(data):
                    got[start] = data[start - part_start : stop - part_start]
                    break
        return got

    @property
    def version(self) -> tuple[int | None, str | None]:
        """(size, Last-Modified) of the file as the server's replies so far describe it."""
        return self.size, self.last_modified

    # -- public reads --------------------------------------------------------------------------
    def read_spans(self, spans) -> list[bytes]:
        """Bytes of every (start, stop) span, fetched with as few round trips as the server allows.

        ``spans`` is a sequence of pairs or an (n, 2) integer array.
        """
        spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        fetched: dict[int, bytes] = {}
        todo = self._merge(spans)
        while todo:
            size = self.ranges_per_request if self.multirange else 1
            batches = [todo[i : i + size] for i in range(0, len(todo), size)]
            with ThreadPoolExecutor(max_workers=min(self.workers, len(batches))) as pool:
                futures = [pool.submit(self._request, batch) for batch in batches]
            refused = None
            for future in futures:
                try:
                    fetched.update(future.result())
                except _RangeHeaderTooLong as exc:
                    refused = exc
            missing = [span for span in todo if span[0] not in fetched]
            if refused is not None:
                self.ranges_per_request = max(1, size // 2)
                log.info(
                    "%s: the server refused %d ranges in one request (HTTP %s); asking for %d.",
                    self.name,
                    size,
                    refused,
                    self.ranges_per_request,
                )
            elif missing and not self.multirange:
                raise ArchiveError(
                    f"Reading {self.name}: the server did not return bytes {missing[0]}." + _ADVICE
                )
            elif missing:
                log.info("%s: the server answers one range per request; switching.", self.name)
                self.multirange = False
            todo = missing
        block_starts = np.array(sorted(fetched), dtype=np.int64)
        blocks = block_starts[np.searchsorted(block_starts, spans[:, 0], side="right") - 1]
        return [
            fetched[block][start - block : stop - block]
            for block, start, stop in zip(
                blocks.tolist(), spans[:, 0].tolist(), spans[:, 1].tolist(), strict=True
            )
        ]

    def _merge(self, spans: np.ndarray) -> list[tuple[int, int]]:
        """The spans sorted, with overlapping ones and those less than ``merge_gap`` apart joined."""
        spans = spans[np.lexsort((spans[:, 1], spans[:, 0]))]
        if not len(spans):
            return []
        reach = np.maximum.accumulate(spans[:, 1])  # furthest byte of any span so far
        first = np.flatnonzero(np.r_[True, spans[1:, 0] - reach[:-1] > self.merge_gap])
        stops = np.maximum.reduceat(spans[:, 1], first)
        return list(zip(spans[first, 0].tolist(), stops.tolist(), strict=True))

    def read(self, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end of the file)."""
        if self.size is not None:
            length = min(length, self.size - start)
        return self.read_spans([(start, start + length)])[0] if length > 0 else b""

    def _header_at(self, offset: int, first_read: int = 16 * 1024) -> tuple[fits.Header, int]:
        """The header starting at ``offset`` and its length in bytes (a multiple of 2880)."""
        start, buffered = self._last_read
        if start <= offset < start + len(buffered):  # the previous read often holds this header too
            found = self._parse_header(buffered[offset - start :], offset)
            if found:
                return found
        want = first_read
        while True:
            data = self.read(offset, want)
            self._last_read = (offset, data)
            found = self._parse_header(data, offset)
            if found:
                return found
            if len(data) < want:
                raise NotMVMFileError(f"{self.name}: a header at byte {offset} has no END card.")
            want *= 4

    def _parse_header(self, data: bytes, offset: int) -> tuple[fits.Header, int] | None:
        """(header, length) if ``data`` holds a whole header, None if its END card is further on."""
        if not data or data[:8].strip() not in (b"SIMPLE", b"XTENSION"):
            raise NotMVMFileError(f"{self.name}: no FITS header at byte {offset}.")
        for card in range(0, len(data) - _CARD + 1, _CARD):
            if data[card : card + _CARD] == _END_CARD:
                length = -(-(card + _CARD) // BLOCK) * BLOCK
                return fits.Header.fromstring(data[: card + _CARD].decode("ascii")), length
        return None

    def hdus(
        self, extnames: tuple[str, ...] = ("SCI", "WHT"), *, guess_last: bool = False
    ) -> dict[str, HDUInfo]:
        """PRIMARY and the named extensions, reading headers only (walks HDU by HDU).

        With ``guess_last``, the last extension is not read but guessed to follow the one
        before, laid out like it (MVM's WHT after SCI): `read_windows` then fetches its header
        with its pixels, saving a round trip per layer.
        """
        found: dict[str, HDUInfo] = {}
        offset = 0
        while True:
            if guess_last and len(extnames) > 1 and all(ext in found for ext in extnames[:-1]):
                before = found[extnames[-2]]
                if before.end == offset:  # the last one wanted is next
                    found[extnames[-1]] = _guess_next(before, extnames[-1])
                    return found
            header, length = self._header_at(offset)
            info = HDUInfo(header, offset, offset + length, _data_size(header))
            name = "PRIMARY" if offset == 0 else str(header.get("EXTNAME", "")).strip().upper()
            found.setdefault(name, info)
            if all(ext in found for ext in extnames):
                return found
            offset = info.end
            if self.size is not None and offset >= self.size:
                missing = [ext for ext in extnames if ext not in found]
                raise NotMVMFileError(f"{self.name} is not an MVM layer: it has no {missing[0]} extension.")

    def _confirm(self, info: HDUInfo, extname: str, block: bytes) -> bool:
        """Check a guessed HDU against its header bytes; fix ``info`` in place. True if the guess held."""
        found = self._parse_header(block, info.header_offset) if block else None
        if found is not None:
            header, length = found
            same = (
                str(header.get("EXTNAME", "")).strip().upper() == extname
                and info.header_offset + length == info.data_offset
                and all(
                    header.get(key) == info.header.get(key) for key in ("BITPIX", "NAXIS", "NAXIS1", "NAXIS2")
                )
            )
            if same:
                info.header, info.guessed = header, False
                return True
        log.info("%s: %s is not laid out like the HDU before it; reading its header.", self.name, extname)
        real = self.hdus((extname,))[extname]
        info.header, info.data_offset, info.data_size = real.header, real.data_offset, real.data_size
        info.header_offset, info.guessed = real.header_offset, False
        return False

    def read_windows(self, windows: list[tuple[HDUInfo, slice, slice]]) -> list[np.ndarray]:
        """``data[rows, cols]`` of 2-D image HDUs, one row span each, all fetched together.

        The header of a guessed HDU (see `hdus`) comes in the same requests; if the guess was
        wrong, its rows are fetched again where they really are. Returns big-endian arrays of
        each HDU's BITPIX type.
        """
        guessed = {id(info): info for info, _, _ in windows if info.guessed}
        header_spans = [(info.header_offset, info.data_offset) for info in guessed.values()]
        spans = [self._row_spans(info, rows, cols) for info, rows, cols in windows]
        data = self.read_spans(np.concatenate([np.reshape(header_spans, (-1, 2)), *spans]))
        blocks, data = data[: len(header_spans)], data[len(header_spans) :]
        wrong = {
            key
            for (key, info), block in zip(guessed.items(), blocks, strict=True)
            if not self._confirm(info, str(info.header.get("EXTNAME", "")).strip().upper(), block)
        }
        out, first = [], 0
        for (info, rows, cols), group in zip(windows, spans, strict=True):
            chunk = data[first : first + len(group)]
            first += len(group)
            if id(info) in wrong:
                chunk = self.read_spans(self._row_spans(info, rows, cols))
            dtype = np.dtype(BITPIX2DTYPE[info.header["BITPIX"]]).newbyteorder(">")
            shape = (rows.stop - rows.start, cols.stop - cols.start)
            out.append(np.frombuffer(b"".join(chunk), dtype=dtype).reshape(shape))
        return out

    @staticmethod
    def _row_spans(info: HDUInfo, rows: slice, cols: slice) -> np.ndarray:
        """Byte spans of ``data[rows, cols]`` of a 2-D image HDU, one per row: an (n, 2) array."""
        item = abs(info.header["BITPIX"]) // 8
        starts = (
            info.data_offset
            + (np.arange(rows.start, rows.stop, dtype=np.int64) * info.header["NAXIS1"] + cols.start) * item
        )
        return np.column_stack([starts, starts + (cols.stop - cols.start) * item])


def _body(response: requests.Response) -> bytes:
    """The whole body of a streamed response in one read.

    requests' ``.content`` reads 10 KB at a time (8000 reads for 80 MB of row spans); the errors
    of urllib3's own read are translated as requests translates them.
    """
    try:
        return response.raw.read(decode_content=True)
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.exceptions.ConnectionError(exc) from exc
    except urllib3.exceptions.ProtocolError as exc:  # IncompleteRead included: a body cut short
        raise requests.exceptions.ChunkedEncodingError(exc) from exc


class HeaderCache:
    """Layer headers (`RemoteFITS.hdus`) by URL, with the file version they were read from, so
    that a second cutout of a layer needs one round trip instead of two.

    Whoever uses an entry checks the version the server reports while reading pixels (every
    ranged reply carries the file size, and Last-Modified where the server sends it) against the
    entry's, and drops the entry if they differ. Thread-safe; keeps the ``capacity`` most
    recently used entries (each a few tens of KB).
    """

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[dict[str, HDUInfo], tuple]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, url: str) -> tuple[dict[str, HDUInfo], tuple] | None:
        """(hdus, version) for ``url``, or None."""
        with self._lock:
            entry = self._entries.get(url)
            if entry is not None:
                self._entries.move_to_end(url)
            return entry

    def put(self, url: str, hdus: dict[str, HDUInfo], version: tuple) -> None:
        """Remember fully read ``hdus`` of ``url`` at file ``version``."""
        with self._lock:
            self._entries[url] = (hdus, version)
            self._entries.move_to_end(url)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def drop(self, url: str) -> None:
        """Forget ``url``."""
        with self._lock:
            self._entries.pop(url, None)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()


#: The headers of the layers this process has cut from, used by `~glue_mvmcut.core.cutout.cut_layer`.
LAYER_HEADERS = HeaderCache()


def _guess_next(before: HDUInfo, extname: str) -> HDUInfo:
    """The HDU after ``before``, guessed to be laid out like it (header length, BITPIX, shape)."""
    header = before.header.copy()
    header["EXTNAME"] = extname
    start = before.end
    return HDUInfo(
        header, start, start + (before.data_offset - before.header_offset), before.data_size, guessed=True
    )
