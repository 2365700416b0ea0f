"""Reading byte spans of a file over HTTP with ``Range`` requests, as few and as small as the
server allows.

A cutout of a multi-GB layer needs one short span of bytes per row of the box, in SCI and WHT.
`RangedFile` merges neighbouring spans when the gap between them is small, puts many spans into
one multi-range request (``Range: bytes=a-b,c-d,...``, answered ``multipart/byteranges``) as
long as its header and its reply stay within bounds, and runs those requests concurrently over
the kept-alive connections of the process's I/O loop (`~glue_mvmcut.core.transport`). Each
reply is written straight into the places its spans go (`~glue_mvmcut.core.byteranges`).

What a server does with ``Range`` is learned, not assumed (`~glue_mvmcut.core.servers`), from
the first read of a server (a file's headers, asked with one byte more in a second range): one
that answers one range per request (the first of several only, or the whole file to several, as
object stores do) is asked for one span per request, spans joined only where a gap costs less
than a request, the requests pipelined on each connection where the server takes that
(`~glue_mvmcut.core.pipelining`); one that ignores ``Range`` altogether raises
`RangeNotSupported` so callers can fall back to a whole-file download.

Hand-written because the libraries nearly do it but not quite: astropy's ``fits.open(url,
use_fsspec=True)`` + ``.section`` reads one row per sequential request (or whole read-ahead
blocks), fsspec's ``cat_ranges`` sends one request per span, and neither requests nor urllib3
parse ``multipart/byteranges`` replies.

Every read is a coroutine for the I/O loop: ``transport.run(ranged.read_spans(...))`` from a
thread, ``await`` on the loop.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

import numpy as np

from .byteranges import (
    Parts,
    ReplyError,
    Targets,
    content_range,
    copy_parts,
    parse_multipart,
    parse_single,
)
from .config import conf
from .errors import ArchiveError, Cancelled
from .pipelining import pipelined_ranges
from .servers import location, relocate, server_of
from .spanplan import gaps_between, joins_within_budget, merge_spans, request_batches
from .transport import (
    RETRYABLE,
    HTTPStatusError,
    Retries,
    ServerError,
    TransferStats,
    after_urgent_work,
    get_range,
    proxy_of,
    transport_errors,
)

__all__ = ["RangeNotSupported", "RangedFile"]

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
_ADVICE = " The archive's server misbehaved: try again, or fetch whole files (--fetch download)."


class RangedFile:
    """Ranged access to a file at ``url``.

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
        self.name = url.rsplit("/", 1)[-1].rsplit("=", 1)[-1]
        self.server = server_of(self.target)

    # -- requests ------------------------------------------------------------------------------
    async def _request(self, spans: np.ndarray, prefix: int = 0) -> Parts:
        """One GET for ``spans`` (an (n, 2) array of start, stop) → the parts of the reply (the
        server may have merged or left out some spans); ``prefix``: see `_request_once`.

        HTTP 5xx, failed connections, silences longer than ``conf.timeout`` and replies cut off
        mid-body are asked for again, as `~glue_mvmcut.core.transport.Retries` allows.
        """
        what = f"Reading {self.name}"
        retries = Retries(what)
        with transport_errors(what):
            while True:
                try:
                    return await self._request_once(spans, prefix=prefix)
                except RETRYABLE as exc:
                    wait = retries.failed(exc)
                    if wait is None:
                        raise
                await asyncio.sleep(wait)

    async def _request_once(self, spans: np.ndarray, again: bool = False, prefix: int = 0) -> Parts:
        """One GET for ``spans``; ``again``: the second, after the address the file's requests
        were redirected to failed; ``prefix``: if the whole file comes (to several spans, from a
        server that says it takes ``Range``), its first ``prefix`` bytes are the reply's part."""
        self._check_cancel()
        if self.server.ranges == "no-range":
            raise self._range_not_supported()
        ranges = ",".join([f"{start}-{stop - 1}" for start, stop in spans.tolist()])
        sent = time.monotonic()
        asked = int((spans[:, 1] - spans[:, 0]).sum())
        reply = await get_range(self.target, "bytes=" + ranges, asked, prefix)
        self.stats.add(requests=1)
        if reply.url != self.target:
            self._redirected(reply.url)
        if reply.status in (200, 206):  # a 200's body is left unread: its time is a round trip
            self.server.saw_reply(time.monotonic() - sent, len(reply.body))
        if reply.status in _HEADER_TOO_LONG and len(spans) > 1:
            raise _RangeHeaderTooLong(reply.status)
        if reply.status == 200 and len(spans) > 1:
            if prefix and "bytes" not in reply.headers.get("Accept-Ranges", "").lower():
                raise _SeveralRangesRefused()  # Range may be ignored altogether: one range tells
            self._learned("one-range", "answers several ranges with the whole file")
            if not prefix or not reply.body:
                raise _SeveralRangesRefused()
            self._note(reply.headers, reply.headers.get("Content-Length", "*").encode(), len(reply.body))
            return Parts(reply.body, [0], [0], [len(reply.body)])
        if reply.status == 200:
            self.server.saw_ranges("no-range")
            raise self._range_not_supported()
        if reply.status in _GONE and self.target != self.url and not again:  # a signed address expired?
            log.info("%s: %s answered %d; asking %s again.", self.name, self.target, reply.status, self.url)
            self._redirected(self.url)
            return await self._request_once(spans, again=True, prefix=prefix)
        if reply.status >= 400:
            error = ServerError if reply.status >= 500 else HTTPStatusError
            raise error(reply.status, reply.reason, self.url)
        if reply.status != 206:
            raise ArchiveError(f"Reading {self.name}: unexpected HTTP {reply.status}." + _ADVICE)
        return self._parts_of(reply.headers, reply.body, spans, ranges)

    def _parts_of(self, headers: Mapping[str, str], body: bytes, spans: np.ndarray, ranges: str) -> Parts:
        """The parts of a 206 reply (``headers``, ``body``) to a request for ``spans`` (``ranges``:
        its Range header after ``bytes=``); what it tells of the file is noted."""
        content_type = headers.get("Content-Type", "")
        try:
            if content_type.startswith("multipart/byteranges"):
                parts, total = parse_multipart(body, content_type, spans, ranges.encode())
                self.server.saw_ranges("multipart")
            else:
                parts, total = parse_single(headers.get("Content-Range", ""), body)
        except ReplyError as exc:
            raise ArchiveError(f"Reading {self.name}: {exc}." + _ADVICE) from exc
        self._note(headers, total, len(body))
        return parts

    def _note(self, headers: Mapping[str, str], total: bytes, nbytes: int) -> None:
        """Note what a reply of ``nbytes`` (its ``headers``) tells of the file: its size
        (``total``, ``b"*"`` if unknown) and when it changed."""
        self.last_modified = headers.get("last-modified", self.last_modified)
        self.stats.add(nbytes)
        if total != b"*":
            self.size = int(total)

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled(f"Reading {self.name} cancelled.")

    def _range_not_supported(self) -> RangeNotSupported:
        return RangeNotSupported(
            f"Reading {self.name}: {self.server.origin} ignores Range requests: use --fetch auto or download."
        )

    def _redirected(self, to: str) -> None:
        """Requests for the file go to ``to`` from now on (this process's later reads of it too)."""
        if to != self.url:
            self.server.redirects_to = server_of(to)
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
        pipelined = not several and self.server.pipelines is not False and proxy_of(self.target) is None
        gaps = gaps_between(spans[todo])
        if several:
            join = gaps < self.merge_gap
        else:  # each span costs a request: join where cheaper (within conf.overfetch, if set)
            wanted = int((spans[todo, 1] - spans[todo, 0]).sum())
            overfetch = float(conf.overfetch)
            budget = max(overfetch - 1, 0) * wanted if overfetch else np.inf
            worth = self.server.request_worth(self.workers, pipelined)
            join = joins_within_budget(gaps, worth=worth, budget=budget)
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
        sending = asyncio.gather(*[self._lane(lane, merged, deliver, pipelined) for lane in lanes])
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
        elif len(missing) and not several and not (pipelined and self.server.pipelines is False):
            raise ArchiveError(
                f"Reading {self.name}: the server did not return bytes {tuple(merged[missing[0]].tolist())}."
                + _ADVICE
            )
        elif len(missing) and self.server.several_ranges:
            self._learned("first-range", "answers only the first of several ranges")
        return np.concatenate([np.zeros(0, np.int64)] + [todo[groups[m] : groups[m + 1]] for m in missing])

    async def _lane(
        self, batches: list[np.ndarray], merged: np.ndarray, deliver, pipelined: bool
    ) -> tuple[list, int | None]:
        """Request ``batches`` (of indices into ``merged``) one after another, or ``pipelined``
        where the server allows (`_pipelined`), and deliver them.

        Returns the arrays of indices delivered and the HTTP status of a refused long Range
        header, if any.
        """
        delivered, refused = [], None
        while batches:
            if pipelined and self.server.pipelines is False:
                break  # learned meanwhile: the rest is left for the next round, planned anew
            if pipelined and len(batches) > 1:
                answered = await self._pipelined(batches, merged, deliver, delivered)
                batches = batches[answered:]
                if answered:
                    continue
            batch, batches = batches[0], batches[1:]  # (none pipelined: one the ordinary way)
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

    async def _pipelined(
        self, batches: list[np.ndarray], merged: np.ndarray, deliver, delivered: list
    ) -> int:
        """Ask for ``batches`` (one merged span each) pipelined on one connection
        (`~glue_mvmcut.core.pipelining`), delivering the replies as they come (their indices into
        ``delivered``); returns how many were answered, the first ones."""
        self._check_cancel()
        spans = merged[np.concatenate(batches)]

        def answered(first: int, replies: list[tuple[Mapping[str, str], bytes]]) -> None:
            self._check_cancel()
            try:
                ranges = [
                    content_range(headers.get("content-range", ""), len(body)) for headers, body in replies
                ]
            except ReplyError as exc:
                raise ArchiveError(f"Reading {self.name}: {exc}." + _ADVICE) from exc
            bodies = [body for _, body in replies]
            self._note(replies[-1][0], ranges[-1][2], sum(map(len, bodies)))
            lengths = np.array(list(map(len, bodies)))
            parts = Parts(
                b"".join(bodies), [start for start, _, _ in ranges], np.cumsum(lengths) - lengths, lengths
            )
            delivered.append(deliver(parts, np.concatenate(batches[first : first + len(replies)])))

        done = await pipelined_ranges(self.target, spans.tolist(), answered, self.server)
        self.stats.add(requests=done.sent)
        if done.why is not None:
            log.debug("%s: a pipeline of %d requests ended: %s.", self.name, done.sent, done.why)
        return done.answered

    async def _first_read(self, start: int, length: int) -> memoryview | None:
        """The bytes of the first read of a file (``length`` from ``start``), whose reply tells its
        size.

        Read from a file's start on a server whose ways with ``Range`` are not known yet (a
        first contact; for a server that redirects, those of where it sent files last), a
        second range of one byte, as far beyond the first as it is long (no server joins such
        a gap), asks how the server answers several: in one multipart reply, with the first
        range only, or, as object stores, with the whole file, whose first bytes are the ones
        asked. A cutout's rows are then planned for the server at once, not after a round trip
        of their own to learn it. A server that refuses the two ranges, or sends the whole file
        without saying it takes ``Range`` (it may not), is asked for the one.
        """
        span = np.array([[start, start + length]])
        if not start and self.server.known_ranges is None:
            probe = np.array([[2 * length, 2 * length + 1]])
            try:
                parts = await self._request(np.concatenate([span, probe]), prefix=length)
            except (_SeveralRangesRefused, _RangeHeaderTooLong):
                pass  # the one range, below
            else:
                told = (self.size or 0) > probe[0, 0]  # (a shorter file: the byte could not come)
                if self.server.ranges is None and told and parts.locate(probe)[0] < 0:
                    self._learned("first-range", "answers only the first of several ranges")
                return parts.starting_at(start)
        return (await self._request(span)).starting_at(start)

    async def read(self, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end of the file)."""
        if self.size is None:  # the reply tells the file's size, and ends early at its end
            data = await self._first_read(start, length)
            if data is not None and (len(data) == length or start + len(data) == self.size):
                return bytes(data)
        if self.size is not None:
            length = min(length, self.size - start)
        return bytes((await self.read_spans([(start, start + length)]))[0]) if length > 0 else b""
