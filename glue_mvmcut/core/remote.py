"""Reading parts of a FITS file over HTTP with ``Range`` requests.

A cutout of a multi-GB layer needs its headers and, in SCI and WHT, one short span of bytes per
row of the box. `RemoteFITS` reads the headers with a few small requests and then fetches the row
spans: neighbouring spans are merged when the gap between them is small, many spans go into one
multi-range request (``Range: bytes=a-b,c-d,...``, answered ``multipart/byteranges``) as long as
its header and its reply stay within bounds, and those requests run concurrently over the
kept-alive connections of the process's aiohttp session, on one event loop thread for the whole
process. Each reply is written straight into the rows it holds.

Why aiohttp rather than requests here: a cold cutout is two round trips in sequence (headers,
then rows), and everything between them and after them is Python competing for one GIL. With
requests, each request costs ~1 ms of CPU (``http.client`` parses reply headers with the
``email`` package) and the replies of concurrent requests arrive on as many threads, which then
take turns for the GIL; aiohttp parses HTTP in C and one thread handles every reply as it comes.
Measured for the network pattern alone (two layers: headers, then three multi-range requests
each, stand-in with 20 ms latency): 51-52 ms with requests and threads, 46-47 ms with aiohttp.

Hand-written because the libraries nearly do it but not quite: astropy's ``fits.open(url,
use_fsspec=True)`` + ``.section`` reads one row per sequential request (or whole read-ahead
blocks), fsspec's ``cat_ranges`` sends one request per span, and neither requests nor urllib3 parse
``multipart/byteranges`` replies. Servers that ignore extra ranges are detected and asked for one
span per request, spans up to 1 MB apart joined; servers that ignore ``Range`` altogether raise
`RangeNotSupported` so callers can fall back to a whole-file download.
"""

import asyncio
import atexit
import concurrent.futures
import functools
import logging
import os
import re
import threading
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import requests
from astropy.io import fits
from astropy.io.fits.hdu.base import BITPIX2DTYPE

from .archive import archive_errors
from .config import conf
from .errors import ArchiveError, Cancelled, NotMVMFileError
from .retrieve import BROKEN_TRANSFER, TransferStats

__all__ = ["RangeNotSupported", "HDUInfo", "RemoteFITS", "HeaderCache", "LAYER_HEADERS"]

log = logging.getLogger(__name__)

BLOCK = 2880
_CARD = 80
_END_CARD = b"END" + b" " * 77
_CONTENT_RANGE = re.compile(rb"bytes (\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
# A multipart part's delimiter line and head up to its blank line, Content-Range among the lines.
_PART_HEAD = re.compile(
    rb"--([^\r\n]*)\r\n(?:[^\r\n]+\r\n)*?Content-Range:[ \t]*bytes (\d+)-(\d+)/(\d+|\*)[ \t]*\r\n"
    rb"(?:[^\r\n]+\r\n)*\r\n",
    re.IGNORECASE,
)


class RangeNotSupported(ArchiveError):
    """The server answered a ``Range`` request with the whole file."""


class _RangeHeaderTooLong(Exception):
    """The server refused a multi-range request, likely for the length of its Range header."""


#: Replies of servers to a request header longer than they accept: 400 (Apache, nginx),
#: 413/414, 431 (Request Header Fields Too Large).
_HEADER_TOO_LONG = (400, 413, 414, 431)
#: Where a window's pixels go: an array and the (rows, cols) slices of it that hold them.
_Into = tuple[np.ndarray, tuple[slice, slice]]


_ADVICE = " The archive's server misbehaved: try again, or fetch whole files (--fetch download)."


@dataclass
class HDUInfo:
    """Where one HDU lives in the file, and its header.

    The header is kept as read (``cards``, up to its END card) and parsed by astropy when first
    asked for (`header`): that takes ~0.5 ms for an MVM primary header of ~250 cards, and a cold
    cutout asks for its rows before. Single keywords come without it: ``info["NAXIS1"]``,
    ``info.get("EXTNAME")``.

    A ``guessed`` HDU has not been read yet: it is assumed to be laid out like the HDU before it
    (same header length, BITPIX and shape; its ``cards`` are that HDU's, its ``name`` its own);
    `RemoteFITS.read_windows` reads its header along with its pixels and corrects both if the
    guess was wrong.
    """

    cards: bytes
    header_offset: int
    data_offset: int
    data_size: int  # bytes of data, without the padding to 2880
    name: str  # PRIMARY, or the extension's EXTNAME
    guessed: bool = False
    _values: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def read(cls, cards: bytes, header_offset: int, length: int) -> "HDUInfo":
        """The HDU whose header ``cards``, ``length`` bytes with their padding, begin at
        ``header_offset``."""
        info = cls(cards, header_offset, header_offset + length, 0, "PRIMARY")
        info.data_size = _data_size(info)
        if header_offset:
            info.name = str(info.get("EXTNAME", "")).strip().upper()
        return info

    @functools.cached_property
    def header(self) -> fits.Header:
        """The header, parsed when first asked for."""
        return fits.Header.fromstring(self.cards.decode("ascii"))

    def __getitem__(self, keyword: str):
        """The value of ``keyword`` (the first card of that name), found without parsing the
        rest of the header; KeyError if there is none."""
        if "header" in self.__dict__:
            return self.header[keyword]
        if keyword not in self._values:
            at = _find_card(self.cards, f"{keyword:8}= ".encode())
            if at < 0:
                raise KeyError(keyword)
            self._values[keyword] = _card_value(self.cards[at : at + _CARD])
        return self._values[keyword]

    def get(self, keyword: str, default=None):
        """The value of ``keyword``, ``default`` if there is none."""
        try:
            return self[keyword]
        except KeyError:
            return default

    def become(self, real: "HDUInfo") -> None:
        """Take the place and header of ``real``, the HDU read where this one was guessed."""
        self.cards, self.header_offset, self.data_offset = real.cards, real.header_offset, real.data_offset
        self.data_size, self.name, self.guessed = real.data_size, real.name, False
        self._values = real._values
        self.__dict__.pop("header", None)

    @property
    def end(self) -> int:
        """Offset of the next HDU."""
        return self.data_offset + -(-self.data_size // BLOCK) * BLOCK


@functools.lru_cache(maxsize=4096)
def _card_value(image: bytes):
    """The value of the card ``image`` (80 bytes), as astropy reads it.

    Cards recur: a layer's WHT header repeats most of its SCI header (BITPIX, NAXIS1, ...), and
    layers repeat each other's; astropy takes ~20 µs to read one.
    """
    return fits.Card.fromstring(image.decode("ascii")).value


def _find_card(data: bytes, start: bytes) -> int:
    """Offset of the first card image in ``data`` that begins with ``start``, -1 if none."""
    at = data.find(start)
    while at > 0 and at % _CARD:  # a card's image starts every 80 bytes
        at = data.find(start, at + 1)
    return at


def _data_size(header) -> int:
    """Bytes of data after a header (a `~astropy.io.fits.Header` or an `HDUInfo`)."""
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
    stats : `~glue_mvmcut.core.retrieve.TransferStats`, optional
        Incremented with every body byte and request.
    workers : int, optional
        Requests in flight at once.
    range_header_limit : int, optional
        Longest ``Range`` header value to send, in characters: as many spans go into one request
        as fit (spread evenly over the requests needed). 7600 stays inside the 8 KB per header
        line that Apache and nginx accept by default (~340 spans of a 2 GB file); a server that
        refuses a request of many spans (HTTP 400, 413, 414 or 431) is asked again with half
        as long a header.
    merge_gap : int, optional
        Neighbouring spans closer than this many bytes are fetched as one.
    single_range_gap : int, optional
        The same for a server that answers only one range per request, where every span costs
        a request: with 8 in flight and a 100 ms round trip, a request is worth ~12 ms, the
        time 1 MB (the default) takes at ~80 MB/s.
    stretch : int, optional
        Joined spans end at every multiple of this many bytes of the file, and one request asks
        for about this many at most (16 MB): the rows of a box as wide as the layer would
        otherwise come as one reply of the whole array.
    cancel : callable, optional
        Checked between requests; returning True raises `~glue_mvmcut.core.errors.Cancelled`.
    """

    def __init__(
        self,
        url: str,
        *,
        stats: TransferStats | None = None,
        workers: int = 8,
        range_header_limit: int = 7600,
        merge_gap: int = 16 * 1024,
        single_range_gap: int = 1 << 20,
        stretch: int = 16 << 20,
        cancel: Callable[[], bool] | None = None,
    ):
        self.url = url
        self.stats = stats if stats is not None else TransferStats()
        self.workers = workers
        self.range_header_limit = range_header_limit
        self.merge_gap = merge_gap
        self.single_range_gap = single_range_gap
        self.stretch = stretch
        self.cancel = cancel
        self.multirange = True  # until the server shows otherwise
        self.size: int | None = None
        self.last_modified: str | None = None
        self._last_read: tuple[int, bytes] = (0, b"")
        self.name = url.rsplit("/", 1)[-1].rsplit("=", 1)[-1]
        self.proxy = _proxy(url)

    # -- transport -----------------------------------------------------------------------------
    async def _request(self, spans: np.ndarray) -> "_Parts":
        """One GET for ``spans`` (an (n, 2) array of start, stop) → the parts of the reply (the
        server may have merged or left out some spans).

        HTTP 5xx, failed connections, silences longer than ``conf.timeout`` and replies cut off
        mid-body are asked for again, up to ``conf.retries`` times with backoff.
        """
        failures = 0
        while True:
            try:
                return await self._request_once(spans)
            except (*BROKEN_TRANSFER, _ServerError) as exc:
                failures += 1
                if failures > int(conf.retries):
                    with archive_errors(f"Reading {self.name}"):
                        raise
                wait = float(conf.backoff) * 2 ** (failures - 1)
                log.info("Reading %s failed (%s); trying again in %.1f s.", self.name, exc, wait)
                await asyncio.sleep(wait)
            except requests.exceptions.RequestException:
                with archive_errors(f"Reading {self.name}"):
                    raise

    async def _request_once(self, spans: np.ndarray) -> "_Parts":
        if self.cancel is not None and self.cancel():
            raise Cancelled(f"Reading {self.name} cancelled.")
        ranges = ",".join([f"{start}-{stop - 1}" for start, stop in spans.tolist()])
        status, reason, headers, body = await _get(self.url, "bytes=" + ranges, self.proxy)
        self.stats.add(requests=1)
        if status in _HEADER_TOO_LONG and len(spans) > 1:
            raise _RangeHeaderTooLong(status)
        if status == 200:
            raise RangeNotSupported(
                f"Reading {self.name}: MAST at {self.url.split('/api')[0]} ignores Range requests: "
                "use --fetch auto or download."
            )
        if status >= 400:
            error = _ServerError if status >= 500 else requests.exceptions.HTTPError
            raise error(f"{status} {reason} for url: {self.url}")
        if status != 206:
            raise ArchiveError(f"Reading {self.name}: unexpected HTTP {status}." + _ADVICE)
        self.last_modified = headers.get("Last-Modified", self.last_modified)
        self.stats.add(len(body))
        content_type = headers.get("Content-Type", "")
        if content_type.startswith("multipart/byteranges"):
            return self._multipart(body, content_type, spans, ranges.encode())
        match = _CONTENT_RANGE.fullmatch(headers.get("Content-Range", "").encode())
        if match is None:
            raise ArchiveError(f"Reading {self.name}: a 206 reply without a valid Content-Range." + _ADVICE)
        start, stop, total = int(match[1]), int(match[2]) + 1, match[3]
        if stop - start != len(body):
            raise ArchiveError(
                f"Reading {self.name}: got {len(body)} bytes for a {stop - start}-byte range." + _ADVICE
            )
        if total != b"*":
            self.size = int(total)
        return _Parts(body, [start], [0], [len(body)])

    def _multipart(self, body: bytes, content_type: str, spans=(), ranges: bytes | None = None) -> "_Parts":
        """The parts of a ``multipart/byteranges`` body, each checked to end where the next
        delimiter (or the closing one) begins.

        A reply that holds the ``spans`` asked for (``ranges``: their Range header value after
        ``bytes=``), in order and framed alike, is checked in one go (`_parts_as_asked`); any
        other is walked part by part.
        """
        boundary = re.search(r'boundary="?([^";]+)"?', content_type)
        if boundary is None:
            raise ArchiveError(f"Reading {self.name}: a multipart reply without a boundary." + _ADVICE)
        boundary = boundary[1].encode()
        delimiter = b"--" + boundary
        at = body.find(delimiter)
        if at < 0:
            raise ArchiveError(f"Reading {self.name}: a multipart reply without its boundary." + _ADVICE)
        as_asked = _parts_as_asked(body, at, boundary, spans, ranges)
        if as_asked is not None:
            parts, total = as_asked
            if total != b"*":
                self.size = int(total)
            return parts
        starts, data_at, lengths, match = [], [], [], None
        while not body.startswith(b"--", at + len(delimiter)):  # "--boundary--" closes the body
            match = _PART_HEAD.match(body, at)
            if match is None or match[1] != boundary:
                raise ArchiveError(f"Reading {self.name}: a multipart part without Content-Range." + _ADVICE)
            start, first = int(match[2]), match.end()
            at = first + int(match[3]) + 1 - start
            if at > len(body):
                raise ArchiveError(f"Reading {self.name}: a multipart part was cut short." + _ADVICE)
            starts.append(start)
            data_at.append(first)
            lengths.append(at - first)
            if not body.startswith(b"\r\n" + delimiter, at):
                raise ArchiveError(
                    f"Reading {self.name}: a multipart part is not as long as its Content-Range says."
                    + _ADVICE
                )
            at += 2
        if match is not None and match[4] != b"*":
            self.size = int(match[4])
        return _Parts(body, starts, data_at, lengths)

    @property
    def version(self) -> tuple[int | None, str | None]:
        """(size, Last-Modified) of the file as the server's replies so far describe it."""
        return self.size, self.last_modified

    # -- public reads --------------------------------------------------------------------------
    def read_spans(self, spans) -> list[memoryview]:
        """Bytes of every (start, stop) span, fetched with as few round trips as the server allows.

        ``spans`` is a sequence of pairs or an (n, 2) integer array. The bytes come as views of
        one buffer, in the order of ``spans``.
        """
        return run(self._read_spans(spans))

    async def _read_spans(self, spans) -> list[memoryview]:
        spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        lengths = np.maximum(spans[:, 1] - spans[:, 0], 0)
        ends = np.cumsum(lengths)
        targets = _Targets()
        whole = targets.add(bytearray(int(ends[-1]) if len(ends) else 0), ends - lengths)
        await self._read_into(spans, targets)
        return [
            whole[start:stop] for start, stop in zip((ends - lengths).tolist(), ends.tolist(), strict=True)
        ]

    async def _read_into(
        self, spans: np.ndarray, targets: "_Targets", meanwhile=None, filled=None, urgency=None
    ) -> None:
        """Write the bytes of span ``i`` of the (n, 2) array ``spans`` where ``targets`` puts them.

        What a round of requests (`_read_round`) did not bring — a refused long Range header,
        a server that answers one range per request — is asked for again, merged anew.
        ``meanwhile()``, a coroutine function, is awaited once the first round's requests are
        sent (which ends the caller's ``urgency``, an `Urgent`) and no other urgent work is
        under way (or the replies are in): work that would otherwise delay requests or wait for
        replies (it should yield now and then: replies coming in are handled meanwhile);
        ``filled`` maps span indices to callables, each called once its span is written.
        """
        filled = {} if filled is None else filled
        todo = np.lexsort((spans[:, 1], spans[:, 0]))  # spans still to read, in file order
        todo = todo[spans[todo, 1] > spans[todo, 0]]  # an empty span needs no bytes
        while len(todo):
            todo = await self._read_round(spans, todo, targets, meanwhile, filled, urgency)
            meanwhile = None
        if meanwhile is not None:
            await meanwhile()

    async def _read_round(
        self, spans: np.ndarray, todo: np.ndarray, targets: "_Targets", meanwhile, filled, urgency=None
    ) -> np.ndarray:
        """One round of `_read_into` for the spans ``todo`` (indices, in file order); returns
        those still missing.

        The spans are merged (`_merge`) and asked for in batches (`_batches`), by at most
        ``workers`` requests in flight; each reply is written to its targets as it arrives, so
        no reply is held longer than its own request.
        """
        merged, groups = self._merge(spans[todo])

        def deliver(parts: _Parts, batch: np.ndarray) -> np.ndarray:
            """Copy the merged spans ``batch`` that ``parts`` hold to their targets; returns those."""
            found = parts.locate(merged[batch])
            held, found = batch[found >= 0], found[found >= 0]
            counts = groups[held + 1] - groups[held]
            # The spans joined in each held merged span, and where their bytes are in the reply.
            members = todo[
                np.arange(counts.sum()) + np.repeat(groups[held] - np.cumsum(counts) + counts, counts)
            ]
            at = np.repeat(found - merged[held, 0], counts) + spans[members, 0]
            _copy(parts.body, at, spans[members, 1] - spans[members, 0], targets, members)
            if filled:
                for k in np.intersect1d(list(filled), members).tolist():
                    filled.pop(k)()
            return held

        limit = self.range_header_limit
        batches = self._batches(merged)
        if filled:  # the batch whose bytes someone waits for (e.g. a header) is asked for first
            waited = np.flatnonzero(np.isin(todo, list(filled)))
            if len(waited):
                m = int(np.searchsorted(groups, waited[0], side="right")) - 1
                first = next(i for i, batch in enumerate(batches) if m in batch)
                batches.insert(0, batches.pop(first))
        lanes = [batches[lane :: self.workers] for lane in range(min(self.workers, len(batches)))]
        sending = asyncio.gather(*[self._lane(lane, merged, deliver) for lane in lanes])
        try:
            if meanwhile is not None:
                await after_urgent_work(urgency, sending)  # the requests leave first
                await meanwhile()
            outcomes = await sending
        except BaseException:
            sending.cancel()  # e.g. meanwhile() found the file unusable: its bytes are of no use
            raise
        done, refused = [np.zeros(0, np.int64)], None
        for delivered, lane_refused in outcomes:
            done += delivered
            refused = refused or lane_refused
        missing = np.setdiff1d(np.arange(len(merged)), np.concatenate(done))
        if refused is not None:
            self.range_header_limit = limit // 2
            log.info(
                "%s: the server refused a %d-character Range header (HTTP %s); sending at most %d.",
                self.name,
                limit,
                refused,
                self.range_header_limit,
            )
        elif len(missing) and not self.multirange:
            raise ArchiveError(
                f"Reading {self.name}: the server did not return bytes {tuple(merged[missing[0]].tolist())}."
                + _ADVICE
            )
        elif len(missing):
            log.info("%s: the server answers one range per request; switching.", self.name)
            self.multirange = False
        return np.concatenate([np.zeros(0, np.int64)] + [todo[groups[m] : groups[m + 1]] for m in missing])

    def _batches(self, merged) -> list[np.ndarray]:
        """Indices into ``merged`` (an (n, 2) array of spans) in few batches that keep each
        request's Range header within ``range_header_limit`` and its reply within ``stretch``
        bytes (or one span), of about equal shares; one each for a server that answers one range
        per request."""
        if not self.multirange or len(merged) == 1:
            return list(np.arange(len(merged)).reshape(-1, 1))
        bounds = np.array(merged, dtype=np.int64)
        sizes = bounds[:, 1] - bounds[:, 0]
        bounds[:, 1] -= 1  # "start-last,": each number's digits, a dash and a comma
        lengths = _digits(bounds).sum(axis=1) + 2
        cuts = np.union1d(_even_cuts(lengths, self.range_header_limit), _even_cuts(sizes, self.stretch))
        return [batch for batch in np.split(np.arange(len(merged)), cuts) if batch.size]

    async def _lane(self, batches: list[np.ndarray], merged: np.ndarray, deliver) -> tuple[list, int | None]:
        """Request ``batches`` (of indices into ``merged``) one after another and deliver them.

        Returns the arrays of indices delivered and the HTTP status of a refused long Range
        header, if any.
        """
        delivered, refused = [], None
        for batch in batches:
            try:
                parts = await self._request(merged[batch])
            except _RangeHeaderTooLong as exc:
                refused = exc.args[0]
                continue
            delivered.append(deliver(parts, batch))
        return delivered, refused

    def _merge(self, spans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sorted ``spans`` with overlapping ones and those close together joined: less than
        ``merge_gap`` apart, or ``single_range_gap`` for a server that answers one range per
        request (each span then costs a request of its own); a joined span ends where the next
        span starts in another ``stretch`` of the file.

        Returns the joined spans, an (m, 2) array, and where each one's spans begin in ``spans``
        (plus its length).
        """
        gap = self.merge_gap if self.multirange else self.single_range_gap
        reach = np.maximum.accumulate(spans[:, 1])  # furthest byte of any span so far
        stretch = spans[:, 0] // self.stretch
        apart = (spans[1:, 0] - reach[:-1] > gap) | (stretch[1:] != stretch[:-1])
        first = np.flatnonzero(np.r_[True, apart])
        merged = np.column_stack([spans[first, 0], np.maximum.reduceat(spans[:, 1], first)])
        return merged, np.r_[first, len(spans)]

    def read(self, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end of the file)."""
        return run(self._read(start, length))

    async def _read(self, start: int, length: int) -> bytes:
        if self.size is None:  # the reply tells the file's size, and ends early at its end
            data = (await self._request(np.array([[start, start + length]]))).starting_at(start)
            if data is not None and (len(data) == length or start + len(data) == self.size):
                return bytes(data)
        if self.size is not None:
            length = min(length, self.size - start)
        return bytes((await self._read_spans([(start, start + length)]))[0]) if length > 0 else b""

    async def _header_at(self, offset: int, first_read: int = 64 * 1024) -> tuple[bytes, int]:
        """The cards of the header starting at ``offset`` (up to its END card) and its length
        in bytes (a multiple of 2880).

        The first read takes 64 KB: enough for primary and SCI headers of ~800 cards together,
        where a shorter one costs another round trip when they are longer.
        """
        start, buffered = self._last_read
        if start <= offset < start + len(buffered):  # the previous read often holds this header too
            found = self._parse_header(buffered[offset - start :], offset)
            if found:
                return found
        want = first_read
        while True:
            data = await self._read(offset, want)
            self._last_read = (offset, data)
            found = self._parse_header(data, offset)
            if found:
                return found
            if len(data) < want:
                raise NotMVMFileError(f"{self.name}: a header at byte {offset} has no END card.")
            want *= 4

    def _parse_header(self, data: bytes, offset: int) -> tuple[bytes, int] | None:
        """(cards, length) if ``data`` holds a whole header, None if its END card is further on."""
        if not data or data[:8].strip() not in (b"SIMPLE", b"XTENSION"):
            raise NotMVMFileError(f"{self.name}: no FITS header at byte {offset}.")
        end = _find_card(data, _END_CARD)
        if end < 0:
            return None
        return bytes(data[: end + _CARD]), -(-(end + _CARD) // BLOCK) * BLOCK

    def hdus(
        self, extnames: tuple[str, ...] = ("SCI", "WHT"), *, guess_last: bool = False
    ) -> dict[str, HDUInfo]:
        """PRIMARY and the named extensions, reading headers only (see `_hdus`)."""
        return run(self._hdus(extnames, guess_last=guess_last))

    async def _hdus(
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
            cards, length = await self._header_at(offset)
            info = HDUInfo.read(cards, offset, length)
            found.setdefault(info.name, info)
            if all(ext in found for ext in extnames):
                return found
            offset = info.end
            if self.size is not None and offset >= self.size:
                missing = [ext for ext in extnames if ext not in found]
                raise NotMVMFileError(f"{self.name} is not an MVM layer: it has no {missing[0]} extension.")

    def _guess_held(self, info: HDUInfo, block: bytes) -> bool:
        """Check a guessed HDU against its header bytes: True, with ``info`` given its real
        header, if the guess held."""
        found = self._parse_header(block, info.header_offset) if block else None
        if found is not None:
            real = HDUInfo.read(found[0], info.header_offset, found[1])
            same = (
                real.name == info.name
                and real.data_offset == info.data_offset
                and all(real.get(key) == info.get(key) for key in ("BITPIX", "NAXIS", "NAXIS1", "NAXIS2"))
            )
            if same:
                info.become(real)
                return True
        return False

    def read_windows(
        self, windows: list[tuple[HDUInfo, slice, slice]], into: list[_Into | None] | None = None
    ) -> list[np.ndarray]:
        """``data[rows, cols]`` of 2-D image HDUs, one row span each, all fetched together.

        The header of a guessed HDU (see `hdus`) comes in the same requests; if the guess was
        wrong, its rows are fetched again where they really are. Returns big-endian arrays of
        each HDU's BITPIX type: new ones, or where ``into`` (one entry per window) gives an
        ``(array, (rows, cols))``, ``array[rows, cols]`` itself, written as the replies come (a
        C-contiguous array of that type; else a new one is returned).
        """
        return run(self._read_windows(windows, into=into))

    async def _read_windows(
        self,
        windows: list[tuple[HDUInfo, slice, slice]],
        meanwhile=None,
        on_header=None,
        urgency=None,
        into: list[_Into | None] | None = None,
    ) -> list[np.ndarray]:
        """`read_windows`; ``meanwhile()`` is awaited while the pixels are on their way (see
        `_read_into`, which ends ``urgency``), and ``on_header(info)`` as soon as a guessed HDU's
        header has come and confirmed the guess (while the rest may still be on its way)."""
        into = into or [None] * len(windows)
        guessed = {id(info): info for info, _, _ in windows if info.guessed}
        header_spans = np.array(
            [(info.header_offset, info.data_offset) for info in guessed.values()], np.int64
        )
        targets = _Targets()
        blocks = [bytearray(stop - start) for start, stop in header_spans.tolist()]
        for block in blocks:
            targets.add(block, [0])
        spans, out = [header_spans.reshape(-1, 2)], []
        for (info, rows, cols), where in zip(windows, into, strict=True):
            out.append(self._window_into(targets, info, rows, cols, where))
            spans.append(self._row_spans(info, rows, cols))

        def confirmer(info: HDUInfo, block: bytearray):
            def confirm():
                if self._guess_held(info, block) and on_header is not None:
                    on_header(info)

            return confirm

        filled = {
            k: confirmer(info, block)
            for k, (info, block) in enumerate(zip(guessed.values(), blocks, strict=True))
        }
        await self._read_into(np.concatenate(spans), targets, meanwhile, filled, urgency)
        for key, info in guessed.items():
            if not info.guessed:  # confirmed as its header came
                continue
            log.info(
                "%s: %s is not laid out like the HDU before it; reading its header.", self.name, info.name
            )
            info.become((await self._hdus((info.name,)))[info.name])
            for i, (other, rows, cols) in enumerate(windows):
                if id(other) == key:  # read again where they really are
                    again = _Targets()
                    out[i] = self._window_into(again, info, rows, cols, into[i])
                    await self._read_into(self._row_spans(info, rows, cols), again)
        return out

    @staticmethod
    def _window_into(
        targets: "_Targets", info: HDUInfo, rows: slice, cols: slice, into: _Into | None = None
    ) -> np.ndarray:
        """The big-endian array that is to hold ``data[rows, cols]`` of ``info``, its rows added
        to ``targets`` (one span per row, as `_row_spans` gives them): ``array[at]`` of ``into``
        = ``(array, at)`` if it can (see `read_windows`), else a new one."""
        dtype = np.dtype(BITPIX2DTYPE[info["BITPIX"]]).newbyteorder(">")
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        if into is None or into[0].dtype != dtype or not into[0].flags.c_contiguous:
            into = (np.empty(shape, dtype), (slice(0, shape[0]), slice(0, shape[1])))
        array, (at_rows, at_cols) = into
        window = array[at_rows, at_cols]
        if window.shape != shape:
            raise ValueError(f"{window.shape} pixels to hold a {shape} window of {info.name}.")
        first = at_rows.indices(array.shape[0])[0] * array.shape[1] + at_cols.indices(array.shape[1])[0]
        targets.add(array, (first + np.arange(shape[0]) * array.shape[1]) * dtype.itemsize)
        return window

    @staticmethod
    def _row_spans(info: HDUInfo, rows: slice, cols: slice) -> np.ndarray:
        """Byte spans of ``data[rows, cols]`` of a 2-D image HDU, one per row: an (n, 2) array."""
        item = abs(info["BITPIX"]) // 8
        starts = (
            info.data_offset
            + (np.arange(rows.start, rows.stop, dtype=np.int64) * info["NAXIS1"] + cols.start) * item
        )
        return np.column_stack([starts, starts + (cols.stop - cols.start) * item])


def _even_cuts(weights: np.ndarray, budget: int) -> np.ndarray:
    """Where to cut ``weights`` into the fewest runs of about equal sums that each stay within
    ``budget`` (every weight alone if one leaves no room for another)."""
    room = budget - int(weights.max())
    if room <= 0:
        return np.arange(1, len(weights))
    total = int(weights.sum())
    count = -(-total // room)  # a run ends before its share is passed, so exceeds it by < max
    return np.searchsorted(np.cumsum(weights), total * np.arange(1, count) / count)


_POWERS_OF_TEN = 10 ** np.arange(1, 19, dtype=np.int64)


def _digits(numbers: np.ndarray) -> np.ndarray:
    """Decimal digits of each non-negative integer (exact, unlike a float log10 at powers of ten)."""
    return 1 + np.searchsorted(_POWERS_OF_TEN, numbers, side="right")


class _Parts:
    """The parts of one reply: part ``i`` holds the file's bytes from ``starts[i]`` on,
    ``lengths[i]`` of them, at ``at[i]`` in ``body``."""

    def __init__(self, body: bytes, starts, at, lengths):
        order = np.argsort(starts, kind="stable")
        self.body = memoryview(body)
        self.starts = np.asarray(starts, np.int64)[order]
        self.at = np.asarray(at, np.int64)[order]
        self.lengths = np.asarray(lengths, np.int64)[order]

    def locate(self, spans: np.ndarray) -> np.ndarray:
        """Where in ``body`` each (start, stop) span of ``spans`` begins, -1 for a span that no
        one part holds whole (a server may merge spans, or leave some out)."""
        part = np.searchsorted(self.starts, spans[:, 0], side="right") - 1
        known = np.maximum(part, 0)
        held = (part >= 0) & (spans[:, 1] <= self.starts[known] + self.lengths[known])
        return np.where(held, self.at[known] + spans[:, 0] - self.starts[known], -1)

    def starting_at(self, start: int) -> memoryview | None:
        """The part that begins at file byte ``start``, if any."""
        part = int(np.searchsorted(self.starts, start))
        if part == len(self.starts) or self.starts[part] != start:
            return None
        return self.body[self.at[part] : self.at[part] + self.lengths[part]]


class _Targets:
    """Where the bytes of each span go: span ``i`` fills ``buffers[buffer[i]]`` from byte
    ``offset[i]`` on. Built with `add`, a buffer at a time, in the order of the spans."""

    def __init__(self):
        self.buffers: list[memoryview] = []
        self._buffer: list[np.ndarray] = []
        self._offset: list[np.ndarray] = []

    def add(self, buffer, offsets) -> memoryview:
        """Add ``buffer`` (a bytearray or a C-contiguous array) for the next ``len(offsets)`` spans, which
        begin at those byte ``offsets`` in it; returns it as a flat view of bytes."""
        offsets = np.asarray(offsets, np.int64)
        self._buffer.append(np.full(len(offsets), len(self.buffers)))
        self._offset.append(offsets)
        flat = buffer.reshape(-1).view(np.uint8) if isinstance(buffer, np.ndarray) else buffer
        self.buffers.append(memoryview(flat))
        return self.buffers[-1]

    @functools.cached_property
    def buffer(self) -> np.ndarray:
        return np.concatenate(self._buffer)

    @functools.cached_property
    def offset(self) -> np.ndarray:
        return np.concatenate(self._offset)


def _copy(source: memoryview, at: np.ndarray, lengths: np.ndarray, targets: _Targets, spans: np.ndarray):
    """Copy ``source[at[j]:at[j] + lengths[j]]`` to the target of span ``spans[j]``, for every j.

    Spans in a row that are equally long, evenly spaced in ``source`` and back to back in one
    buffer — a cutout's rows, answered as asked — go in one strided numpy copy: a row at a time
    in Python costs ~1 µs each, ~0.3 ms per reply of a cutout.
    """
    if not len(spans):
        return
    buffer, offset = targets.buffer[spans], targets.offset[spans]
    step = np.diff(at)
    linked = (
        (buffer[1:] == buffer[:-1])
        & (lengths[1:] == lengths[:-1])
        & (offset[1:] == offset[:-1] + lengths[:-1])
        & (step > 0)
    )
    # A run ends where a link is missing or the step changes (e.g. where the heads of multipart
    # parts grow a digit).
    ends = ~linked
    ends[1:] |= linked[:-1] & (step[1:] != step[:-1])
    firsts = np.flatnonzero(np.r_[True, ends])
    source_bytes = np.frombuffer(source, np.uint8)
    for first, stop in zip(firsts.tolist(), [*firsts[1:].tolist(), len(spans)], strict=True):
        count, length, start = stop - first, int(lengths[first]), int(at[first])
        into, begin = targets.buffers[buffer[first]], int(offset[first])
        if count == 1:
            into[begin : begin + length] = source[start : start + length]
            continue
        rows = np.lib.stride_tricks.as_strided(
            source_bytes[start:], (count, length), (int(step[first]), 1), writeable=False
        )
        np.frombuffer(into, np.uint8)[begin : begin + count * length].reshape(count, length)[...] = rows


def _parts_as_asked(
    body: bytes, at: int, boundary: bytes, spans, ranges: bytes | None = None
) -> tuple[_Parts, bytes] | None:
    """The parts of a multipart body that answers ``spans`` exactly as asked — one part per
    span, in order, every part's head framed like the first — with the file size its
    Content-Ranges give; None for any other body.

    Walking ~330 parts one by one costs ~0.5 ms of Python per reply of a cutout. Here the first
    part's head is parsed, every part's position computed from it, and all the bytes between
    the parts (heads, line breaks, closing delimiter) compared at once with what they must be:
    built from ``ranges``, the Range header value the spans were asked for with (after
    ``bytes=``), when given.
    """
    first = _PART_HEAD.match(body, at)
    if not len(spans) or first is None or first[1] != boundary:
        return None
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    starts, lasts = spans[:, 0], spans[:, 1] - 1
    if (int(first[2]), int(first[3])) != (int(starts[0]), int(lasts[0])):
        return None
    # The head: prefix, start, dash, last, slash, total, suffix (up to the blank line).
    prefix, dash, slash = (
        body[at : first.start(2)],
        body[first.end(2) : first.start(3)],
        body[first.end(3) : first.start(4)],
    )
    total, suffix = first[4], body[first.end(4) : first.end()]
    heads = len(prefix) + len(dash) + len(slash) + len(total) + len(suffix) + _digits(starts) + _digits(lasts)
    lengths = lasts - starts + 1
    data_at = at + np.cumsum(heads + lengths + 2) - lengths - 2  # each part: head, data, CRLF
    data_end = data_at + lengths
    closing = b"\r\n--" + boundary + b"--"
    end = int(data_end[-1]) + len(closing)
    if end > len(body):
        return None
    view = memoryview(body)
    gaps = zip([at, *data_end[:-1].tolist()], data_at.tolist(), strict=True)
    found = (
        b"".join([view[gap_start:gap_stop] for gap_start, gap_stop in gaps]) + body[int(data_end[-1]) : end]
    )
    tail = slash + total + suffix
    if ranges is not None and dash == b"-":  # "a-b,c-d,...": every head's numbers, as sent
        expected = prefix + ranges.replace(b",", tail + b"\r\n" + prefix) + tail + closing
    else:
        expected = (
            b"\r\n".join(
                [
                    b"%s%d%s%d%s" % (prefix, a, dash, b, tail)
                    for a, b in zip(starts.tolist(), lasts.tolist(), strict=True)
                ]
            )
            + closing
        )
    if found != expected:
        return None
    return _Parts(body, starts, data_at, lengths), total


class _IO:
    """An event loop in a thread of its own and the aiohttp session that runs on it: every ranged
    read of the process goes through them, so connections stay alive across files and cutouts
    (against MAST's HTTPS each new one costs a TCP and a TLS handshake)."""

    def __init__(self):
        self.pid = os.getpid()
        self.urgent = 0  # `Urgent` work under way, and an event set while there is none
        self.calm = asyncio.Event()
        self.calm.set()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="mvmcut-io", daemon=True).start()
        self.session = self.run(self._open())

    @staticmethod
    async def _open() -> aiohttp.ClientSession:
        # Not trust_env: it looks up .netrc and the proxy settings on a thread for every request,
        # so a request's bytes leave only after other work on the loop; the proxy is `_proxy`'s.
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

    def run(self, coroutine: Coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        if self.pid == os.getpid():  # a forked child leaves its parent's alone
            self.run(self.session.close())
            self.loop.call_soon_threadsafe(self.loop.stop)


_io_lock = threading.Lock()
_io: _IO | None = None
# A forked child inherits the parent's loop without its thread and the parent's sockets: it
# makes its own, and keeps the parent's here unused (dropping them would warn of an unclosed
# session, closing them would run on a loop that no thread drives).
_inherited: list[_IO] = []


def _the_io() -> _IO:
    global _io
    with _io_lock:
        if _io is None:
            _io = _IO()
        return _io


class Urgent:
    """Marks work on the I/O loop as urgent from its making until `done` (or the end of a
    ``with`` block): reading a layer's headers and sending the requests for its pixels.

    Each millisecond those requests wait costs the cutout a millisecond at its end, while work
    that only fills a wait (a cut's output headers, its WCS check: ~3-5 ms of Python per layer)
    can as well run later: `after_urgent_work` holds it back while urgent work is under way.
    Used on the I/O loop only.
    """

    def __init__(self):
        self._io = _the_io()
        self._io.urgent += 1
        self._io.calm.clear()
        self._active = True

    def done(self) -> None:
        """The urgent work is over (idempotent)."""
        if self._active:
            self._active = False
            self._io.urgent -= 1
            if not self._io.urgent:
                self._io.calm.set()

    def __enter__(self) -> "Urgent":
        return self

    def __exit__(self, *exc) -> None:
        self.done()


async def after_urgent_work(urgency: Urgent | None = None, until: asyncio.Future | None = None) -> None:
    """Wait until the I/O loop has done what is more urgent than the caller's next work.

    A millisecond lets replies that are due come in, the yield after it lets whatever they
    started, and the caller's own requests, leave. Then the caller's ``urgency`` is over, and
    with ``until`` the wait goes on while other work is urgent (`Urgent`: other layers'
    headers on their way, or their requests about to leave), or until ``until`` is done (the
    caller's replies are in: its work is due).
    """
    await asyncio.sleep(0.001)
    await asyncio.sleep(0)
    if urgency is not None:
        urgency.done()
    io = _the_io()
    if until is not None and io.urgent and not until.done():
        calm = asyncio.ensure_future(io.calm.wait())
        try:
            await asyncio.wait([calm, until], return_when=asyncio.FIRST_COMPLETED)
        finally:
            calm.cancel()


def run(coroutine: Coroutine):
    """Run ``coroutine`` on the process's I/O loop and return its result (or raise its error).

    Called from any thread but the loop's own.
    """
    return _the_io().run(coroutine)


def submit(coroutine: Coroutine) -> concurrent.futures.Future:
    """Start ``coroutine`` on the process's I/O loop; its future (cancelling it cancels it)."""
    return asyncio.run_coroutine_threadsafe(coroutine, _the_io().loop)


@atexit.register
def _close_io() -> None:
    if _io is not None:
        _io.close()


def _proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTP(S)_PROXY``, ``NO_PROXY``), as requests uses it."""
    parts = urlsplit(url)
    return _proxy_for(parts.scheme, parts.hostname)


@functools.lru_cache(maxsize=64)
def _proxy_for(scheme: str, host: str | None) -> str | None:
    # Kept per host: urllib reads the whole environment for each look-up (~0.7 ms, before the
    # first request of every layer).
    if host is None or urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(scheme)


async def _get(
    url: str, byte_range: str, proxy: str | None = None
) -> tuple[int, str, Mapping[str, str], bytes]:
    """(status, reason, headers, body) of a GET of ``byte_range`` of ``url``; the body of a 206
    reply only (a server that ignores Range would send the whole file).

    aiohttp's errors are raised as the requests errors they correspond to, so that one vocabulary
    (`~glue_mvmcut.core.retrieve.BROKEN_TRANSFER`, `~glue_mvmcut.core.archive.archive_errors`)
    serves every transfer of the package.
    """
    seconds = float(conf.timeout)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
    headers = {"Range": byte_range, "Accept-Encoding": "identity"}
    try:
        async with _the_io().session.get(url, headers=headers, timeout=timeout, proxy=proxy) as response:
            body = await response.read() if response.status == 206 else b""
            return response.status, response.reason or "", response.headers, body
    except TimeoutError as exc:  # aiohttp's ServerTimeoutError included
        raise requests.exceptions.ReadTimeout(f"no bytes for {seconds} s") from exc
    except aiohttp.ClientConnectorError as exc:
        raise requests.exceptions.ConnectionError(exc) from exc
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc  # a reply cut short
    except aiohttp.ClientError as exc:
        raise requests.exceptions.ConnectionError(exc) from exc


class _ServerError(requests.exceptions.HTTPError):
    """HTTP 5xx: worth asking again."""


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
    start = before.end
    return HDUInfo(
        before.cards,
        start,
        start + (before.data_offset - before.header_offset),
        before.data_size,
        extname,
        guessed=True,
    )


def _renew_after_fork() -> None:
    """In a forked child: new locks for the header cache and the I/O loop (another thread of the
    parent may have held them at the fork), and an I/O loop of its own when it first reads."""
    global _io, _io_lock
    LAYER_HEADERS._lock = threading.Lock()
    _io_lock = threading.Lock()
    if _io is not None:
        _inherited.append(_io)
        _io = None


os.register_at_fork(after_in_child=_renew_after_fork)
