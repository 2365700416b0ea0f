"""What the stand-in MAST answers to a request for a file, apart from how it is sent: status,
headers and body (as pieces of the file and literal bytes), for every kind of server
`~glue_mvmcut.testing.faults.Faults` describes."""

import email.utils
import functools
import gzip
import json
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from .faults import Faults
from .portal import URI_PREFIX, Catalogue
from .ranges import body_pieces, parse_ranges

__all__ = ["FileReply", "file_reply", "target_parts"]

#: Replies up to this long are read from the file before they are due (while the latency runs).
PRELOAD = 16 << 20


@dataclass
class FileReply:
    """A reply to a file request: ``segments`` of the body are literal bytes or (offset, length)
    of the file open as ``fd``; ``closes``: the body ends where the connection does (no
    Content-Length); ``service`` is what the request is recorded as."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    segments: list = field(default_factory=list)
    fd: int | None = None
    closes: bool = False
    service: str | None = "download"

    @property
    def length(self) -> int:
        """Bytes of the body."""
        if len(self.segments) == 1:  # most replies
            segment = self.segments[0]
            return len(segment) if isinstance(segment, bytes) else segment[1]
        return sum(len(s) if isinstance(s, bytes) else s[1] for s in self.segments)


@functools.lru_cache(maxsize=1024)
def target_parts(target: str) -> tuple[str, str]:
    """The path of a request's ``target`` and the ``uri`` its query names (as parsed, "" if none);
    kept, as a client asks for the same file again and again."""
    parts = urlsplit(target)
    return parts.path, parse_qs(parts.query).get("uri", [""])[0]


_unquote = functools.lru_cache(maxsize=1024)(unquote)


@functools.lru_cache(maxsize=64)
def _validators(size: int, mtime: float, mtime_ns: int) -> tuple[str, str]:
    """A file's Last-Modified and ETag."""
    return email.utils.formatdate(mtime, usegmt=True), f'"{size:x}-{mtime_ns:x}"'


def _plain(status: int, body: bytes, content_type: str, service: str | None = "download") -> FileReply:
    return FileReply(
        status,
        [("Content-Type", content_type), ("Content-Length", str(len(body)))],
        [body],
        service=service,
    )


def file_reply(
    method: str,
    target: str,
    headers: Mapping[str, str],
    catalogue: Catalogue,
    faults: Faults,
    open_file: Callable[[Path, os.stat_result], int],
    garble: str | None = None,
) -> FileReply:
    """The reply to ``method`` (GET or HEAD) of ``target`` (the download path and its query)
    with the request's ``headers``, answered as ``faults`` say (ranges, redirects, lengths,
    encodings; a multi-range reply garbled as ``garble`` says). ``open_file(path, stat)`` gives
    a descriptor of a file to read."""
    uri = _unquote(target_parts(target)[1])
    name = uri[len(URI_PREFIX) :] if uri.startswith(URI_PREFIX) else None
    path = catalogue.files.get(name)
    if path is None:
        body = json.dumps({"status": "ERROR", "msg": f"{uri} not found"}).encode()
        return _plain(404, body, "application/json", service=None)
    if faults.redirect_to:
        location = faults.redirect_to.rstrip("/") + target
        return FileReply(faults.redirect_status, [("Location", location), ("Content-Length", "0")])
    stat = os.stat(path)
    size, kind = stat.st_size, faults.ranges
    byte_range = headers.get("Range")
    if byte_range and faults.max_range_header and len(byte_range) > faults.max_range_header:
        return _plain(400, b"Size of a request header field exceeds server limit.", "text/plain")
    ranged = byte_range and kind != "no-range"
    spans = parse_ranges(byte_range, size) if ranged else []
    if ranged and not spans:
        return FileReply(416, [("Content-Range", f"bytes */{size}"), ("Content-Length", "0")])
    modified, etag = _validators(size, stat.st_mtime, stat.st_mtime_ns)
    if headers.get("If-Range") not in (None, modified, etag):
        spans = []  # the file changed since the part the client holds: all of it (RFC 9110)
    if len(spans) > 1 and kind == "first-range":
        spans = spans[:1]  # like servers that honour only the first range
    elif len(spans) > 1 and kind == "one-range":
        spans = []  # like object stores: several ranges get the whole file
    reply = FileReply(206 if spans else 200, fd=open_file(path, stat))
    spans = spans or [(0, size - 1)]
    if len(spans) == 1:
        reply.segments = [(spans[0][0], spans[0][1] - spans[0][0] + 1)]
        content_type = "application/octet-stream"
    else:
        reply.segments, content_type = _multipart(spans, size, garble)
    if reply.status == 206 and faults.extra_bytes:
        reply.segments.append(b"\0" * faults.extra_bytes)
    length = reply.length
    if method == "GET" and (length <= PRELOAD or faults.content_encoding):  # read it now
        reply.segments = [b"".join(body_pieces(reply.fd, reply.segments))]
        if faults.content_encoding:
            reply.segments = [gzip.compress(reply.segments[0], mtime=0)]
            length = len(reply.segments[0])
    reply.headers.append(("Content-Type", content_type))
    if method == "HEAD" and faults.announced_size is not None:
        reply.headers.append(("Content-Length", str(faults.announced_size)))
    elif faults.content_length:
        reply.headers.append(("Content-Length", str(length)))
    else:  # the body ends where the connection does
        reply.closes = True
    reply.headers += [
        ("Content-Disposition", f'attachment; filename="{name}"'),
        ("Last-Modified", modified),
        ("ETag", etag),
    ]
    if faults.content_encoding:
        reply.headers.append(("Content-Encoding", faults.content_encoding))
    if kind != "no-range":
        reply.headers.append(("Accept-Ranges", "bytes"))
    if reply.status == 206 and len(spans) == 1:
        reply.headers.append(("Content-Range", f"bytes {spans[0][0]}-{spans[0][1]}/{size}"))
    return reply


def _multipart(spans: list[tuple[int, int]], size: int, garble: str | None) -> tuple[list, str]:
    """The segments and Content-Type of a ``multipart/byteranges`` body of ``spans``."""
    boundary = f"mvmcut{uuid.uuid4().hex}"
    content_type = "multipart/byteranges" + ("" if garble == "no-boundary" else f"; boundary={boundary}")
    # One template for every part's head (~330 parts in a cutout's reply: the stand-in's own
    # Python per reply delays the replies of the requests that arrive with it).
    head = f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n".encode()
    template = head + f"Content-Range: bytes %d-%d/{size}\r\n\r\n".encode()
    segments = []
    for start, end in spans:
        segments += (template % (start, end), (start, end - start + 1))
    if garble == "part-length":
        segments[0] = template % (spans[0][0], spans[0][1] + 1)
    elif garble == "no-content-range":
        segments[0] = head + b"\r\n"
    segments.append(f"\r\n--{boundary}--\r\n".encode())
    return segments, content_type
