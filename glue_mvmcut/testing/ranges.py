"""How the stand-in MAST reads ``Range`` headers and the bytes they ask for, and what it keeps
of a connection's requests."""

import io
import os
import re
from pathlib import Path

import numpy as np

__all__ = ["CHUNK", "FileConnection", "body_pieces", "parse_ranges"]

#: Bytes the stand-in reads from a file, and sends, at once at most.
CHUNK = 1 << 20
# One range of a "bytes=" list: a whole comma-separated item, so malformed items are skipped.
_RANGE_SPECS = re.compile(r"(?:^|,)\s*(\d*)-(\d*)\s*(?=,|$)")
_PLAIN_RANGES = re.compile(r"\d{1,18}-\d{1,18}(?:,\d{1,18}-\d{1,18})*")  # numbers within int64


def body_pieces(fd: int, segments: list):
    """The body's bytes, segment by segment: literal bytes as they are, (offset, length) of the
    file in blocks of at most ``CHUNK`` (a short read ends a segment: the file shrank)."""
    for segment in segments:
        if isinstance(segment, bytes):
            yield segment
            continue
        offset, length = segment
        if length <= CHUNK:  # most segments: one read
            yield os.pread(fd, length, offset)
            continue
        while length > 0:
            block = os.pread(fd, min(CHUNK, length), offset)
            if not block:
                break
            offset += len(block)
            length -= len(block)
            yield block


def parse_ranges(header: str, size: int) -> list[tuple[int, int]]:
    """Satisfiable spans of a ``bytes=`` Range header as inclusive (start, end) pairs."""
    header = header.strip()
    if not header.startswith("bytes="):
        return []
    plain = header[len("bytes=") :]
    if "," not in plain and _PLAIN_RANGES.fullmatch(plain):  # one range, as most requests ask
        start, end = map(int, plain.split("-"))
        return [(start, min(end, size - 1))] if start < size and start <= end else []
    if _PLAIN_RANGES.fullmatch(plain):  # "a-b,c-d,...", as clients send it: parsed by numpy
        pairs = np.array(plain.replace("-", ",").split(","), dtype=np.int64).reshape(-1, 2)
        pairs[:, 1] = np.minimum(pairs[:, 1], size - 1)
        keep = (pairs[:, 0] < size) & (pairs[:, 0] <= pairs[:, 1])
        return [tuple(pair) for pair in pairs[keep].tolist()]
    spans = []
    for first, last in _RANGE_SPECS.findall(header[len("bytes=") :]):
        if first == "":
            if last == "":
                continue
            start, end = max(0, size - int(last)), size - 1
        else:
            start = int(first)
            end = min(size - 1, int(last)) if last else size - 1
        if start < size and start <= end:
            spans.append((start, end))
    return spans


class FileConnection:
    """What the stand-in's request handler keeps of a connection: the file it read last (open,
    for the next requests), and, for the ``loses`` kind of
    `~glue_mvmcut.testing.faults.PIPELINING_KINDS`, nothing of what came while a reply was due."""

    _file: tuple[tuple, int] | None = None  # (path, inode, mtime), descriptor

    def lose_what_came_meanwhile(self) -> None:
        """Throw away whatever came after the request being answered (the ``loses`` kind of
        `~glue_mvmcut.testing.faults.PIPELINING_KINDS`)."""
        self.connection.setblocking(False)
        try:
            while self.connection.recv(1 << 16):
                pass
        except BlockingIOError:
            pass
        finally:
            self.connection.setblocking(True)
        self.rfile = io.BufferedReader(self.rfile.detach())  # and what was read of it

    def finish(self):
        super().finish()
        self.close_file()

    def close_file(self) -> None:
        """Close the file kept open, if any."""
        if self._file is not None:
            os.close(self._file[1])
            self._file = None

    def open_file(self, path: Path, stat: os.stat_result) -> int:
        """A descriptor of ``path`` as ``stat`` found it, kept for the connection's next requests
        (as a web server keeps its files open; opening one per request cost the stand-in more
        Python than a reply of one row)."""
        key = (path, stat.st_ino, stat.st_mtime_ns)
        if self._file is None or self._file[0] != key:
            if self._file is not None:
                os.close(self._file[1])
            self._file = None  # (closed: not closed again at the end if the open fails)
            self._file = (key, os.open(path, os.O_RDONLY))
        return self._file[1]
