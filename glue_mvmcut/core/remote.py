"""Reading parts of a FITS file over HTTP with ``Range`` requests.

A cutout of a multi-GB layer needs its headers and, in SCI and WHT, one short span of bytes per
row of the box. `RemoteFITS` reads the primary and SCI headers with one request (as long as the
server's have been, `~glue_mvmcut.core.servers`), then fetches the row spans, WHT's header with
them: neighbouring spans are merged when the gap between them is small, many spans go into one
multi-range request (``Range: bytes=a-b,c-d,...``, answered ``multipart/byteranges``) as long as
its header and its reply stay within bounds, and those requests run concurrently over the
kept-alive connections of the process's I/O loop (`~glue_mvmcut.core.transport`). Each reply is
written straight into the rows it holds (`~glue_mvmcut.core.byteranges`).

Hand-written because the libraries nearly do it but not quite: astropy's ``fits.open(url,
use_fsspec=True)`` + ``.section`` reads one row per sequential request (or whole read-ahead
blocks), fsspec's ``cat_ranges`` sends one request per span, and neither requests nor urllib3 parse
``multipart/byteranges`` replies. Servers that ignore extra ranges are detected and asked for one
span per request, spans up to 1 MB apart joined; servers that ignore ``Range`` altogether raise
`RangeNotSupported` so callers can fall back to a whole-file download.

Every read is a coroutine for the I/O loop: ``transport.run(remote.read_headers())`` from a
thread, ``await`` on the loop.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import numpy as np

from .byteranges import Parts, ReplyError, Targets, copy_parts, parse_multipart, parse_single
from .config import conf
from .errors import ArchiveError, Cancelled, NotMVMFileError
from .fitsheaders import BLOCK, CARD, END_CARD, MAX_HEADER, HDUInfo, find_card, stored_dtype
from .servers import location, relocate, server_of
from .spanplan import gaps_between, joins_within_budget, merge_spans, request_batches
from .transport import (
    RETRYABLE,
    HTTPStatusError,
    Retries,
    ServerError,
    TransferStats,
    Urgent,
    after_urgent_work,
    get_range,
    transport_errors,
)

__all__ = ["RangeNotSupported", "RemoteFITS"]

log = logging.getLogger(__name__)


class RangeNotSupported(ArchiveError):
    """The server answered a ``Range`` request with the whole file."""


class _RangeHeaderTooLong(Exception):
    """The server refused a multi-range request, likely for the length of its Range header."""


class _SeveralRangesRefused(Exception):
    """The server answered a multi-range request with the whole file (it serves one range per
    request, as object stores do)."""


#: Replies of servers to a request header longer than they accept: 400 (Apache, nginx),
#: 413/414, 431 (Request Header Fields Too Large).
_HEADER_TOO_LONG = (400, 413, 414, 431)
#: Replies of a redirected address that may have expired (signed cloud URLs): ask the file's own.
_GONE = (401, 403, 404, 410)
#: Where a window's pixels go: an array and the (rows, cols) slices of it that hold them.
Into = tuple[np.ndarray, tuple[slice, slice]]
#: The lengths of real MVM layers' extension headers (drizzlepac writes ~106 SCI and ~56 WHT
#: cards): what a guessed header is taken to be until a server's own have been seen.
_MVM_HEADER_LENGTHS = {"SCI": 3 * BLOCK, "WHT": 2 * BLOCK}
#: Bytes read for a header after the file's first read (which is learned, see `read_headers`).
_LATER_READ = 64 * 1024


_ADVICE = " The archive's server misbehaved: try again, or fetch whole files (--fetch download)."


class RemoteFITS:
    """Ranged access to a FITS file at ``url``.

    Parameters
    ----------
    url : str
        HTTP(S) address of the file.
    stats : `~glue_mvmcut.core.transport.TransferStats`, optional
        Incremented with every body byte and request.
    workers : int, optional
        Requests in flight at once (default: ``conf.connections``, the connections kept to one
        server).
    range_header_limit : int, optional
        Longest ``Range`` header value to send, in characters: as many spans go into one request
        as fit (spread evenly over the requests needed). 7600 stays inside the 8 KB per header
        line that Apache and nginx accept by default (~340 spans of a 2 GB file); a server that
        refuses a request of many spans (HTTP 400, 413, 414 or 431) is asked again with half
        as long a header.
    merge_gap : int, optional
        Neighbouring spans closer than this many bytes are fetched as one. (For a server that
        answers one range per request, gaps are joined where cheaper than a request, within a
        budget: `~glue_mvmcut.core.spanplan.joins_within_budget`.)
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
        workers: int | None = None,
        range_header_limit: int = 7600,
        merge_gap: int = 16 * 1024,
        stretch: int = 16 << 20,
        cancel: Callable[[], bool] | None = None,
    ):
        self.url = url
        self.stats = stats if stats is not None else TransferStats()
        self.workers = workers or int(conf.connections)
        self.range_header_limit = range_header_limit
        self.merge_gap = merge_gap
        self.stretch = stretch
        self.cancel = cancel
        self.target = location(url)  # where requests go: ``url``, or where it was redirected
        self.size: int | None = None
        self.last_modified: str | None = None
        self._last_read: tuple[int, bytes] = (0, b"")
        self.name = url.rsplit("/", 1)[-1].rsplit("=", 1)[-1]
        self.server = server_of(self.target)

    # -- requests ------------------------------------------------------------------------------
    async def _request(self, spans: np.ndarray) -> Parts:
        """One GET for ``spans`` (an (n, 2) array of start, stop) → the parts of the reply (the
        server may have merged or left out some spans).

        HTTP 5xx, failed connections, silences longer than ``conf.timeout`` and replies cut off
        mid-body are asked for again, as `~glue_mvmcut.core.transport.Retries` allows.
        """
        what = f"Reading {self.name}"
        retries = Retries(what)
        with transport_errors(what):
            while True:
                try:
                    return await self._request_once(spans)
                except RETRYABLE as exc:
                    wait = retries.failed(exc)
                    if wait is None:
                        raise
                await asyncio.sleep(wait)

    async def _request_once(self, spans: np.ndarray, again: bool = False) -> Parts:
        """One GET for ``spans``; ``again``: the second, after the address the file's requests
        were redirected to failed."""
        if self.cancel is not None and self.cancel():
            raise Cancelled(f"Reading {self.name} cancelled.")
        if self.server.ranges == "no-range":
            raise self._range_not_supported()
        ranges = ",".join([f"{start}-{stop - 1}" for start, stop in spans.tolist()])
        sent = time.monotonic()
        reply = await get_range(self.target, "bytes=" + ranges, int((spans[:, 1] - spans[:, 0]).sum()))
        self.stats.add(requests=1)
        if reply.url != self.target:
            self._redirected(reply.url)
        if reply.status in (200, 206):  # a 200's body is left unread: its time is a round trip
            self.server.saw_reply(time.monotonic() - sent, len(reply.body))
        if reply.status in _HEADER_TOO_LONG and len(spans) > 1:
            raise _RangeHeaderTooLong(reply.status)
        if reply.status == 200 and len(spans) > 1:
            self._learned("one-range", "answers several ranges with the whole file")
            raise _SeveralRangesRefused()
        if reply.status == 200:
            self.server.saw_ranges("no-range")
            raise self._range_not_supported()
        if reply.status in _GONE and self.target != self.url and not again:  # a signed address expired?
            log.info("%s: %s answered %d; asking %s again.", self.name, self.target, reply.status, self.url)
            self._redirected(self.url)
            return await self._request_once(spans, again=True)
        if reply.status >= 400:
            error = ServerError if reply.status >= 500 else HTTPStatusError
            raise error(reply.status, reply.reason, self.url)
        if reply.status != 206:
            raise ArchiveError(f"Reading {self.name}: unexpected HTTP {reply.status}." + _ADVICE)
        self.last_modified = reply.headers.get("Last-Modified", self.last_modified)
        self.stats.add(len(reply.body))
        content_type = reply.headers.get("Content-Type", "")
        try:
            if content_type.startswith("multipart/byteranges"):
                parts, total = parse_multipart(reply.body, content_type, spans, ranges.encode())
                self.server.saw_ranges("multipart")
            else:
                parts, total = parse_single(reply.headers.get("Content-Range", ""), reply.body)
        except ReplyError as exc:
            raise ArchiveError(f"Reading {self.name}: {exc}." + _ADVICE) from exc
        if total != b"*":
            self.size = int(total)
        return parts

    def _range_not_supported(self) -> RangeNotSupported:
        return RangeNotSupported(
            f"Reading {self.name}: {self.server.origin} ignores Range requests: use --fetch auto or download."
        )

    def _redirected(self, to: str) -> None:
        """Requests for the file go to ``to`` from now on (this process's later reads of it too)."""
        self.target = to
        self.server = server_of(to)
        relocate(self.url, to)

    def _learned(self, kind: str, how: str) -> None:
        if self.server.ranges != kind:
            log.info("%s: %s %s; asking for one range per request.", self.name, self.server.origin, how)
            self.server.saw_ranges(kind)

    @property
    def version(self) -> tuple[int | None, str | None]:
        """(size, Last-Modified) of the file as the server's replies so far describe it."""
        return self.size, self.last_modified

    # -- public reads --------------------------------------------------------------------------
    async def read_spans(self, spans) -> list[memoryview]:
        """Bytes of every (start, stop) span, fetched with as few round trips as the server allows.

        ``spans`` is a sequence of pairs or an (n, 2) integer array. The bytes come as views of
        one buffer, in the order of ``spans``.
        """
        spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        lengths = np.maximum(spans[:, 1] - spans[:, 0], 0)
        ends = np.cumsum(lengths)
        targets = Targets()
        whole = targets.add(bytearray(int(ends[-1]) if len(ends) else 0), ends - lengths)
        await self._read_into(spans, targets)
        return [
            whole[start:stop] for start, stop in zip((ends - lengths).tolist(), ends.tolist(), strict=True)
        ]

    async def _read_into(
        self, spans: np.ndarray, targets: Targets, meanwhile=None, filled=None, urgency=None
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
        self, spans: np.ndarray, todo: np.ndarray, targets: Targets, meanwhile, filled, urgency=None
    ) -> np.ndarray:
        """One round of `_read_into` for the spans ``todo`` (indices, in file order); returns
        those still missing.

        The spans are merged (`~glue_mvmcut.core.spanplan.merge_spans`) and asked for in
        batches (`~glue_mvmcut.core.spanplan.request_batches`), by at most
        ``workers`` requests in flight; each reply is written to its targets as it arrives, so
        no reply is held longer than its own request.
        """
        several = self.server.several_ranges  # (the server may show otherwise in this round)
        gaps = gaps_between(spans[todo])
        if several:
            join = gaps < self.merge_gap
        else:  # each span costs a request: join where cheaper (within conf.overfetch, if set)
            wanted = int((spans[todo, 1] - spans[todo, 0]).sum())
            overfetch = float(conf.overfetch)
            budget = max(overfetch - 1, 0) * wanted if overfetch else np.inf
            join = joins_within_budget(gaps, worth=self.server.request_worth(self.workers), budget=budget)
        merged, groups = merge_spans(spans[todo], join, self.stretch)

        def deliver(parts: Parts, batch: np.ndarray) -> np.ndarray:
            """Copy the merged spans ``batch`` that ``parts`` hold to their targets; returns those."""
            found = parts.locate(merged[batch])
            held, found = batch[found >= 0], found[found >= 0]
            counts = groups[held + 1] - groups[held]
            # The spans joined in each held merged span, and where their bytes are in the reply.
            members = todo[
                np.arange(counts.sum()) + np.repeat(groups[held] - np.cumsum(counts) + counts, counts)
            ]
            at = np.repeat(found - merged[held, 0], counts) + spans[members, 0]
            copy_parts(parts.body, at, spans[members, 1] - spans[members, 0], targets, members)
            if filled:
                for k in np.intersect1d(list(filled), members).tolist():
                    filled.pop(k)()
            return held

        limit = self.range_header_limit
        batches = request_batches(merged, several=several, header_limit=limit, stretch=self.stretch)
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
            # Its outcome, read when it comes: asyncio would print "exception was never retrieved".
            sending.add_done_callback(lambda lanes: lanes.cancelled() or lanes.exception())
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
        elif len(missing) and not several:
            raise ArchiveError(
                f"Reading {self.name}: the server did not return bytes {tuple(merged[missing[0]].tolist())}."
                + _ADVICE
            )
        elif len(missing) and self.server.several_ranges:
            self._learned("first-range", "answers only the first of several ranges")
        return np.concatenate([np.zeros(0, np.int64)] + [todo[groups[m] : groups[m + 1]] for m in missing])

    async def _lane(self, batches: list[np.ndarray], merged: np.ndarray, deliver) -> tuple[list, int | None]:
        """Request ``batches`` (of indices into ``merged``) one after another and deliver them.

        Returns the arrays of indices delivered and the HTTP status of a refused long Range
        header, if any.
        """
        delivered, refused = [], None
        for batch in batches:
            if len(batch) > 1 and not self.server.several_ranges:
                continue  # learned meanwhile: left for the next round, one range per request
            try:
                parts = await self._request(merged[batch])
            except _RangeHeaderTooLong as exc:
                refused = exc.args[0]
                continue
            except _SeveralRangesRefused:
                continue
            delivered.append(deliver(parts, batch))
        return delivered, refused

    async def read(self, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end of the file)."""
        if self.size is None:  # the reply tells the file's size, and ends early at its end
            data = (await self._request(np.array([[start, start + length]]))).starting_at(start)
            if data is not None and (len(data) == length or start + len(data) == self.size):
                return bytes(data)
        if self.size is not None:
            length = min(length, self.size - start)
        return bytes((await self.read_spans([(start, start + length)]))[0]) if length > 0 else b""

    async def _header_at(self, offset: int, want: int = _LATER_READ) -> tuple[bytes, int]:
        """The cards of the header starting at ``offset`` (up to its END card) and its length
        in bytes (a multiple of 2880), reading ``want`` bytes first and, if its END card is not
        in them, as many again and more until it is."""
        start, buffered = self._last_read
        if start <= offset < start + len(buffered):  # the previous read often holds this header too
            found = self._parse_header(buffered[offset - start :], offset)
            if found:
                return found
        data = b""
        while True:
            more = await self.read(offset + len(data), want)
            data += more
            self._last_read = (offset, data)
            found = self._parse_header(data, offset)
            if found:
                return found
            if len(more) < want:
                raise NotMVMFileError(f"{self.name}: a header at byte {offset} has no END card.")
            if len(data) >= MAX_HEADER:
                raise NotMVMFileError(
                    f"{self.name}: a header at byte {offset} has no END card in its first "
                    f"{MAX_HEADER >> 20} MB: not a FITS header this reads."
                )
            want = min(2 * len(data), MAX_HEADER - len(data))

    def _parse_header(self, data: bytes, offset: int) -> tuple[bytes, int] | None:
        """(cards, length) if ``data`` holds a whole header, None if its END card is further on."""
        if not data or data[:8].strip() not in (b"SIMPLE", b"XTENSION"):
            raise NotMVMFileError(f"{self.name}: no FITS header at byte {offset}.")
        end = find_card(data, END_CARD)
        if end < 0:
            return None
        return bytes(data[: end + CARD]), -(-(end + CARD) // BLOCK) * BLOCK

    async def read_headers(
        self, extnames: tuple[str, ...] = ("SCI", "WHT"), *, guess_last: bool = False
    ) -> dict[str, HDUInfo]:
        """PRIMARY and the named extensions, reading headers only (walks HDU by HDU).

        The first read takes as many bytes as the server's files have shown headers before
        their first data (generously, the first time: `~glue_mvmcut.core.servers.FIRST_READ`).
        With ``guess_last``, the last extension is not read but guessed to follow the one
        before, like it but for its header's length (the last such header seen on the server,
        else a real MVM layer's): `read_windows` then fetches its header with its pixels,
        saving a round trip per layer.
        """
        found: dict[str, HDUInfo] = {}
        offset = 0
        while not all(ext in found for ext in extnames):
            if guess_last and len(extnames) > 1 and all(ext in found for ext in extnames[:-1]):
                before, name = found[extnames[-2]], extnames[-1]
                if before.end == offset:  # the last one wanted is next
                    length = self.server.header_length(name) or _MVM_HEADER_LENGTHS.get(name)
                    found[name] = _guess_next(before, name, length)
                    break
            if self.size is not None and offset >= self.size:
                missing = [ext for ext in extnames if ext not in found]
                raise NotMVMFileError(f"{self.name} is not an MVM layer: it has no {missing[0]} extension.")
            want = self.server.first_read() if offset == 0 else _LATER_READ
            cards, length = await self._header_at(offset, want)
            info = HDUInfo.read(cards, offset, length, self.name)
            if offset:
                self.server.saw_header(info.name, length)
            found.setdefault(info.name, info)
            offset = info.end
        with_data = [info.data_offset for info in found.values() if info.data_size and not info.guessed]
        if with_data:
            self.server.saw_opening(min(with_data))
        return found

    def _confirmed(self, info: HDUInfo, real: HDUInfo) -> None:
        """``info``, a guessed HDU, is ``real``: it takes its place, and the server's record
        learns its header's length."""
        info.become(real)
        self.server.saw_header(real.name, real.data_offset - real.header_offset)

    def _header_in(self, info: HDUInfo, block: bytes) -> HDUInfo | None:
        """The HDU whose header begins ``block`` (read where ``info`` was guessed), if the block
        holds it whole."""
        found = self._parse_header(block, info.header_offset) if block else None
        return HDUInfo.read(found[0], info.header_offset, found[1], self.name) if found else None

    @staticmethod
    def _guess_held(info: HDUInfo, real: HDUInfo | None) -> bool:
        """Whether ``real``, the HDU read where ``info`` was guessed, is laid out as guessed."""
        return (
            real is not None
            and real.name == info.name
            and real.data_offset == info.data_offset
            and all(real.get(key) == info.get(key) for key in ("BITPIX", "NAXIS", "NAXIS1", "NAXIS2"))
        )

    async def read_windows(
        self,
        windows: list[tuple[HDUInfo, slice, slice]],
        *,
        into: list[Into | None] | None = None,
        meanwhile: Callable[[], Awaitable] | None = None,
        on_header: Callable[[HDUInfo], None] | None = None,
        urgency: Urgent | None = None,
    ) -> list[np.ndarray]:
        """``data[rows, cols]`` of 2-D image HDUs, one row span each, all fetched together.

        The header of a guessed HDU (see `read_headers`) comes in the same requests; if the
        guess was wrong, its rows are fetched again where they really are.

        Parameters
        ----------
        windows : list of (`~glue_mvmcut.core.fitsheaders.HDUInfo`, slice, slice)
            Each HDU and the rows and columns of it wanted.
        into : list, optional
            One entry per window: None, or ``(array, (rows, cols))`` to read the window straight
            into ``array[rows, cols]`` (a C-contiguous array of the HDU's big-endian type; for
            another, a new array is made).
        meanwhile : coroutine function, optional
            Work that fills the wait for the pixels, awaited once the requests have left and
            ``urgency`` (an `~glue_mvmcut.core.transport.Urgent`) is over, when no other urgent
            work is under way or the replies are in. It should yield now and then: replies
            that come in are handled meanwhile. If it raises, the requests are cancelled.
        on_header : callable, optional
            ``on_header(info)``, called as soon as a guessed HDU's header has come and confirmed
            the guess (while the rest may still be on its way).
        urgency : `~glue_mvmcut.core.transport.Urgent`, optional
            The caller's urgency, ended once the requests have left.

        Returns
        -------
        list of `~numpy.ndarray`
            Each window's big-endian pixels: ``array[rows, cols]`` of ``into``, or a new array.
        """
        into = into or [None] * len(windows)
        guessed = {id(info): info for info, _, _ in windows if info.guessed}
        header_spans = np.array(
            [(info.header_offset, info.data_offset) for info in guessed.values()], np.int64
        )
        targets = Targets()
        blocks = [bytearray(stop - start) for start, stop in header_spans.tolist()]
        for block in blocks:
            targets.add(block, [0])
        spans, out = [header_spans.reshape(-1, 2)], []
        for (info, rows, cols), where in zip(windows, into, strict=True):
            out.append(self._window_into(targets, info, rows, cols, where))
            spans.append(self._row_spans(info, rows, cols))

        read: dict[int, HDUInfo | None] = {}  # the HDU each header block holds whole, if it does

        def confirmer(info: HDUInfo, block: bytearray):
            def confirm():
                real = read[id(info)] = self._header_in(info, block)
                if self._guess_held(info, real):
                    self._confirmed(info, real)
                    if on_header is not None:
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
            log.info("%s: %s is not laid out as guessed; reading its rows again.", self.name, info.name)
            real = read.get(key)
            if real is None:  # its header is longer than guessed: the rest of it
                cards, length = await self._header_at(info.header_offset)
                real = HDUInfo.read(cards, info.header_offset, length, self.name)
            if real.name != info.name:  # another HDU is where it was expected
                real = (await self.read_headers((info.name,)))[info.name]
            self._confirmed(info, real)
            for i, (other, rows, cols) in enumerate(windows):
                if id(other) == key:  # read again where they really are
                    again = Targets()
                    out[i] = self._window_into(again, info, rows, cols, into[i])
                    await self._read_into(self._row_spans(info, rows, cols), again)
        return out

    @staticmethod
    def _window_into(
        targets: Targets, info: HDUInfo, rows: slice, cols: slice, into: Into | None = None
    ) -> np.ndarray:
        """The big-endian array that is to hold ``data[rows, cols]`` of ``info``, its rows added
        to ``targets`` (one span per row, as `_row_spans` gives them): ``array[at]`` of ``into``
        = ``(array, at)`` if it can (see `read_windows`), else a new one."""
        dtype = stored_dtype(info["BITPIX"])
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


def _guess_next(before: HDUInfo, extname: str, header_length: int | None) -> HDUInfo:
    """The HDU after ``before``, guessed to be laid out like it (BITPIX, shape) with a header of
    ``header_length`` bytes (None: as long as its own)."""
    start = before.end
    header_length = header_length or before.data_offset - before.header_offset
    return HDUInfo(before.cards, start, start + header_length, before.data_size, extname, guessed=True)
