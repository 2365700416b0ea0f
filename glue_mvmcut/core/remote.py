"""Reading parts of a FITS file over HTTP with ``Range`` requests.

A cutout of a multi-GB layer needs its headers and, in SCI and WHT, one short span of bytes per
row of the box. `RemoteFITS` reads the primary and SCI headers with one request (as long as the
server's have been, `~glue_mvmcut.core.servers`), then fetches the row spans, WHT's header with
them, as `~glue_mvmcut.core.rangedfile.RangedFile` fetches spans: merged, batched, concurrent,
written straight into the cutout's rows.

Every read is a coroutine for the I/O loop: ``transport.run(remote.read_headers())`` from a
thread, ``await`` on the loop.
"""

import logging
from collections.abc import Awaitable, Callable

import numpy as np

from .byteranges import Targets
from .errors import NotMVMFileError
from .fitsheaders import BLOCK, CARD, END_CARD, MAX_HEADER, HDUInfo, find_card, stored_dtype
from .rangedfile import RangedFile, RangeNotSupported
from .transport import Urgent

__all__ = ["RangeNotSupported", "RemoteFITS"]

log = logging.getLogger(__name__)

#: Where a window's pixels go: an array and the (rows, cols) slices of it that hold them.
Into = tuple[np.ndarray, tuple[slice, slice]]
#: The lengths of real MVM layers' extension headers (drizzlepac writes ~106 SCI and ~56 WHT
#: cards): what a guessed header is taken to be until a server's own have been seen.
_MVM_HEADER_LENGTHS = {"SCI": 3 * BLOCK, "WHT": 2 * BLOCK}
#: Bytes read for a header after the file's first read (which is learned, see `read_headers`).
_LATER_READ = 64 * 1024


class RemoteFITS(RangedFile):
    """Ranged access to a FITS file at ``url``: its headers, and windows of its images.

    Parameters as `~glue_mvmcut.core.rangedfile.RangedFile`'s.
    """

    _last_read: tuple[int, bytes] = (0, b"")  # (offset, bytes) of the last header read

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
