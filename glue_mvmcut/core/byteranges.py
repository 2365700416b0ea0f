"""HTTP byte-range replies: reading them and putting their bytes where they belong.

A ranged read asks for many spans of a file at once (``Range: bytes=a-b,c-d,...``); the server
answers with one part (a ``206`` with ``Content-Range``) or several (``multipart/byteranges``,
RFC 7233), possibly joined or in another order. `parse_single` and `parse_multipart` check a
reply's framing and say where each part's bytes are (`Parts`); `copy_parts` copies them to
their targets (`Targets`: a cutout's rows, header buffers) a run of rows at a time.

Hand-written because neither requests, urllib3 nor aiohttp parse ``multipart/byteranges``.
"""

import functools
import re

import numpy as np

from .errors import ArchiveError

__all__ = [
    "ReplyError",
    "Parts",
    "Targets",
    "content_range",
    "parse_single",
    "parse_multipart",
    "parts_as_asked",
    "copy_parts",
    "digits",
]

_CONTENT_RANGE = re.compile(rb"bytes (\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
# A multipart part's delimiter line and head up to its blank line, Content-Range among the lines.
_PART_HEAD = re.compile(
    rb"--([^\r\n]*)\r\n(?:[^\r\n]+\r\n)*?Content-Range:[ \t]*bytes (\d+)-(\d+)/(\d+|\*)[ \t]*\r\n"
    rb"(?:[^\r\n]+\r\n)*\r\n",
    re.IGNORECASE,
)


class ReplyError(ArchiveError):
    """A ranged reply that breaks HTTP's framing (the message says how)."""


_POWERS_OF_TEN = 10 ** np.arange(1, 19, dtype=np.int64)


def digits(numbers: np.ndarray) -> np.ndarray:
    """Decimal digits of each non-negative integer (exact, unlike a float log10 at powers of ten)."""
    return 1 + np.searchsorted(_POWERS_OF_TEN, numbers, side="right")


class Parts:
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


class Targets:
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


def copy_parts(source: memoryview, at: np.ndarray, lengths: np.ndarray, targets: Targets, spans: np.ndarray):
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


def parts_as_asked(
    body: bytes, at: int, boundary: bytes, spans, ranges: bytes | None = None
) -> tuple[Parts, bytes] | None:
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
    heads = len(prefix) + len(dash) + len(slash) + len(total) + len(suffix) + digits(starts) + digits(lasts)
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
    return Parts(body, starts, data_at, lengths), total


def content_range(value: str, length: int) -> tuple[int, int, bytes]:
    """The (start, stop) a ``Content-Range`` header ``value`` gives a ``206`` reply's body of
    ``length`` bytes, and the file size (``b"*"`` where it does not say); `ReplyError` if
    it names no range or one of another length."""
    match = _CONTENT_RANGE.fullmatch(value.encode())
    if match is None:
        raise ReplyError("a 206 reply without a valid Content-Range")
    start, stop = int(match[1]), int(match[2]) + 1
    if stop - start != length:
        raise ReplyError(f"got {length} bytes for a {stop - start}-byte range")
    return start, stop, match[3]


def parse_single(value: str, body: bytes) -> tuple[Parts, bytes]:
    """The one part of a ``206`` reply that is not multipart, and the file size its
    ``Content-Range`` header ``value`` gives (``b"*"`` where it does not say)."""
    start, _, total = content_range(value, len(body))
    return Parts(body, [start], [0], [len(body)]), total


def parse_multipart(
    body: bytes, content_type: str, spans=(), ranges: bytes | None = None
) -> tuple[Parts, bytes]:
    """The parts of a ``multipart/byteranges`` body, each checked to end where the next
    delimiter (or the closing one) begins, and the file size their Content-Ranges give (``b"*"``
    where they do not say).

    A reply that holds the ``spans`` asked for (``ranges``: their Range header value after
    ``bytes=``), in order and framed alike, is checked in one go (`parts_as_asked`); any
    other is walked part by part.
    """
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    if boundary is None:
        raise ReplyError("a multipart reply without a boundary")
    boundary = boundary[1].encode()
    delimiter = b"--" + boundary
    at = body.find(delimiter)
    if at < 0:
        raise ReplyError("a multipart reply without its boundary")
    as_asked = parts_as_asked(body, at, boundary, spans, ranges)
    if as_asked is not None:
        return as_asked
    starts, data_at, lengths, total = [], [], [], b"*"
    while not body.startswith(b"--", at + len(delimiter)):  # "--boundary--" closes the body
        match = _PART_HEAD.match(body, at)
        if match is None or match[1] != boundary:
            raise ReplyError("a multipart part without Content-Range")
        start, first, total = int(match[2]), match.end(), match[4]
        at = first + int(match[3]) + 1 - start
        if at > len(body):
            raise ReplyError("a multipart part was cut short")
        starts.append(start)
        data_at.append(first)
        lengths.append(at - first)
        if not body.startswith(b"\r\n" + delimiter, at):
            raise ReplyError("a multipart part is not as long as its Content-Range says")
        at += 2
    return Parts(body, starts, data_at, lengths), total
