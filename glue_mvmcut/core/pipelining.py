"""Many one-range requests on few connections: HTTP/1.1 pipelining.

A server that answers one range per request (object stores; servers that send the first of
several ranges only) costs a request per row of a box, ~1000 for a 20" box on a layer as wide as a
real one. One after another over ``conf.connections`` kept-alive connections, that is 125 round
trips (2.5 s at 20 ms, where one multi-range request takes 0.05 s); joining rows instead moves
40 times the bytes. HTTP/1.1 lets a client send its next requests before the replies to the
earlier ones are in (RFC 9112, section 9.3.2: a server answers them in order), so a connection
takes its whole share of the requests in about one round trip.

Hand-written because none of the clients we use pipelines: aiohttp and urllib3 (requests) send a
connection's next request only once the previous reply is read, and httpx's answer is HTTP/2,
which object stores such as S3 do not speak. So this module speaks just the part of HTTP/1.1 it
needs: GETs of one range, and ``206`` replies with a ``Content-Length``. Any other reply (a
redirect, an error, a whole file, an encoded or chunked body) ends the pipeline before its body
is read, and the caller asks for that range in the ordinary way (`~glue_mvmcut.core.transport.get_range`),
which knows what to do with it. A server that takes a connection's first request only (it closes
or falls silent) is remembered (`~glue_mvmcut.core.servers.Server.pipelines`) and asked one request
at a time from then on.

Runs on the process's I/O loop only. Each pipeline opens a connection of its own (at most
``conf.connections`` to a server at once) and closes it at its end: a connection kept for later
may have been closed by its server meanwhile, which looks like a server that takes no pipeline
(and once, in a CI run, a kept connection's pipeline reached the stand-in twice, not
understood); a new connection costs a handshake per layer and round.
"""

import asyncio
import functools
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .config import conf
from .limits import Pace
from .servers import Server

__all__ = ["Pipelined", "pipelined_ranges"]

#: Requests sent ahead of the replies read, at most: enough that a connection's share of a box's
#: rows (~125 of a 20" box's 1000 on 8 connections) leaves in one round trip. What a server has
#: not read yet waits in its connection's buffers (TCP holds the sender back when they fill).
DEPTH = 256
#: Replies handed on at once, at most GROUP of them or GROUP_BYTES of bodies (rounded up to a
#: reply): each handing copies its rows with numpy, ~200 µs, more than the reading of a few
#: small replies.
GROUP, GROUP_BYTES = 128, 8 << 20
#: A reply's head (status line and headers) longer than this is not read as one.
_HEAD_LIMIT = 64 * 1024
#: Bytes read at once at most.
_READ = 256 * 1024


@dataclass
class Pipelined:
    """What a pipeline did: ``answered`` replies given to the caller, in order, out of ``sent``
    requests sent; ``why`` it ended early (None if every request was answered)."""

    answered: int
    sent: int
    why: str | None = None


_slots: dict[str, asyncio.Semaphore] = {}  # origin -> room for conf.connections pipelines


async def _connect(host: str, port: int, secure: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A new connection to ``host``."""
    context = _tls_context() if secure else None
    return await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=context, limit=_READ), float(conf.timeout)
    )


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every connection (making one loads the system's certificates)."""
    return ssl.create_default_context()


def _head(data: bytes) -> tuple[int, str, dict[str, str]]:
    """The status, HTTP version and headers (names lower-cased) of a reply's head."""
    status_line, *lines = data.decode("latin-1").split("\r\n")
    version, status = status_line.split(" ", 2)[:2]
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(status), version, headers


def _plain_206(status: int, headers: Mapping[str, str], start: int, stop: int) -> bool:
    """Whether a reply is a ``206`` of bytes ``start`` to ``stop`` at most, announced up front
    and sent as they are."""
    length = headers.get("content-length", "")
    return (
        status == 206
        and length.isdigit()
        and int(length) <= stop - start
        and "transfer-encoding" not in headers
        and headers.get("content-encoding", "identity") == "identity"
        and not headers.get("content-type", "").startswith("multipart/")
    )


def _answers(headers: Mapping[str, str], start: int) -> bool:
    """Whether a ``206`` reply's ``headers`` say it holds the bytes from ``start`` on (else it
    answers another request: the server lost some of the pipeline)."""
    return headers.get("content-range", "").startswith(f"bytes {start}-")


async def pipelined_ranges(
    url: str,
    spans: Sequence[tuple[int, int]],
    on_replies: Callable[[int, list[tuple[Mapping[str, str], bytes]]], None],
    server: Server,
) -> Pipelined:
    """GET each (start, stop) of ``spans`` of ``url`` with one range per request, the requests
    pipelined on one connection; ``on_replies(i, replies)`` gets the ``206`` replies in order,
    a list of (headers, body) from span ``i`` on, a few at a time (header names lower-case).

    Stops at the first reply that is not a plain ``206`` (before its body), at a broken or
    closed connection and at a silence longer than ``conf.timeout`` (or, until the server has
    answered a pipeline, one of ``server.patience()`` before a second reply): those spans are
    the caller's to ask for another way. Errors of ``on_replies`` are raised (the connection is
    closed). What the replies show of the server's pipelining goes to ``server``
    (`~glue_mvmcut.core.servers.Server.saw_pipelining`).
    """
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    host_header = parts.netloc.rpartition("@")[2]  # as the URL writes it ([...] for IPv6)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    requests = [
        (
            f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\nRange: bytes={start}-{stop - 1}\r\n"
            "Accept-Encoding: identity\r\n\r\n"
        ).encode("latin-1")
        for start, stop in spans
    ]
    origin = server.origin
    slots = _slots.setdefault(origin, asyncio.Semaphore(int(conf.connections)))
    async with slots:
        done = Pipelined(0, 0)
        try:
            reader, writer = await _connect(parts.hostname, port, secure)
        except (OSError, TimeoutError):
            done.why = "no connection"
            return done
        try:
            done.why = await _exchange(reader, writer, requests, spans, on_replies, server, done)
        finally:
            writer.close()
        return done


async def _exchange(
    reader, writer, requests, spans, on_replies, server: Server, done: Pipelined
) -> str | None:
    """Send ``requests`` (up to DEPTH ahead of the replies, topped up once half are answered) and
    hand their replies to ``on_replies`` (a group at a time), counting in ``done``; returns why it
    stopped early, None if every reply came.

    Replies are parsed from what each read brings (many small replies come in one): a read and
    a deadline moved per reply cost more than the reply."""
    proven = server.pipelines
    queued = 0  # requests sent so far
    replies: list[tuple[Mapping[str, str], bytes]] = []  # read, not yet handed on
    grouped = 0  # bytes of the replies not yet handed on
    stream = _ReplyStream()
    headers: Mapping[str, str] | None = None  # of the reply whose body is awaited
    # One deadline, moved on at each read (asyncio.wait_for would make a task per read).
    loop, silence = asyncio.get_running_loop(), float(conf.timeout)
    wait = Pace.allowance(max(stop - start for start, stop in spans))
    steps = _Steps(loop)
    try:
        async with asyncio.timeout(None) as deadline:
            while True:
                while headers is not None or (head := stream.head()) is not None:
                    at = done.answered + len(replies)
                    if headers is None:
                        try:
                            status, version, headers = _head(head)
                        except ValueError:
                            return "a reply that is not HTTP"
                        start, stop = spans[at]
                        if not _plain_206(status, headers, start, stop):
                            return f"HTTP {status}"
                        if not _answers(headers, start):
                            if not proven:
                                server.saw_pipelining(False)
                            return f"reply {at + 1} answers another request"
                        stream.expect(int(headers["content-length"]))
                    if (body := stream.body()) is None:
                        break
                    replies.append((headers, body))
                    steps.reply(len(body))
                    if at == 1 and not proven:
                        server.saw_pipelining(True)
                    grouped += len(body)
                    if len(replies) == GROUP or grouped >= GROUP_BYTES:
                        grouped = 0
                        _hand_on(on_replies, replies, done)
                    closing, headers = headers.get("connection", "").lower(), None
                    if closing == "close" or (version == "HTTP/1.0" and closing != "keep-alive"):
                        if done.answered + len(replies) < len(requests):
                            return _declined(server, done, "the server closed the connection", len(replies))
                at = done.answered + len(replies)
                if at == len(requests):
                    return None
                if stream.unread > _HEAD_LIMIT and headers is None:
                    return f"a reply's head longer than {_HEAD_LIMIT} bytes after {at} replies"
                if queued - at <= DEPTH // 2 and queued < len(requests):
                    ahead = requests[queued : at + DEPTH]
                    writer.write(b"".join(ahead))
                    queued += len(ahead)
                    done.sent += len(ahead)
                    deadline.reschedule(loop.time() + silence)
                    await writer.drain()
                patient = at == 1 and not proven
                deadline.reschedule(loop.time() + (min(wait, server.patience()) if patient else wait))
                data = await reader.read(_READ)
                if not data and (stream.unread or headers is not None):  # closed amid a reply
                    return f"the connection broke after {at} replies"
                if not data:  # closed between replies
                    return _declined(server, done, "the server closed the connection", len(replies))
                stream.feed(data)
    except TimeoutError:
        return _declined(server, done, "the server fell silent", len(replies))
    except OSError as exc:
        return f"{type(exc).__name__} after {done.answered + len(replies)} replies"
    finally:
        steps.tell(server)
        if replies:  # (raises what on_replies raises, the connection then closed)
            _hand_on(on_replies, replies, done)


class _ReplyStream:
    """The replies of a connection, parsed from its bytes as they come, in whatever pieces: a
    head (`head`), then its body once its length is given (`expect`, `body`)."""

    def __init__(self):
        self._received = bytearray()
        self._at = 0  # where the next head or the body awaited starts
        self._expected: int | None = None  # the length of the body awaited

    @property
    def unread(self) -> int:
        """Bytes received and not yet taken."""
        return len(self._received) - self._at

    def feed(self, data: bytes) -> None:
        """Bytes that came (what was taken is let go)."""
        del self._received[: self._at]
        self._at = 0
        self._received += data

    def head(self) -> bytes | None:
        """The next reply's head (status line and headers, without the blank line), once whole."""
        end = self._received.find(b"\r\n\r\n", self._at)
        if end < 0:
            return None
        head, self._at = bytes(self._received[self._at : end]), end + 4
        return head

    def expect(self, length: int) -> None:
        """The reply whose head was taken has a body of ``length`` bytes."""
        self._expected = length

    def body(self) -> bytes | None:
        """The body awaited, once whole."""
        if self._expected is None or self.unread < self._expected:
            return None
        end = self._at + self._expected
        body, self._at, self._expected = bytes(self._received[self._at : end]), end, None
        return body


class _Steps:
    """The time between the replies of a pipeline, less what their bytes took: what one more
    request costs, for `~glue_mvmcut.core.servers.Server.request_worth`."""

    #: Replies timed at the least, and the longest mean reply whose step is taken as the
    #: server's (a longer one's is mostly its bytes).
    LEAST, SMALL = 8, 64 * 1024

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.first: float | None = None
        self.last, self.replies, self.nbytes = 0.0, 0, 0

    def reply(self, nbytes: int) -> None:
        """A reply of ``nbytes`` was read whole."""
        self.last = self.loop.time()
        if self.first is None:
            self.first = self.last
        else:  # the first reply's bytes came before the steps timed
            self.replies, self.nbytes = self.replies + 1, self.nbytes + nbytes

    def tell(self, server: Server) -> None:
        """Tell ``server`` the step measured, if enough small replies were timed."""
        if self.replies >= self.LEAST and self.nbytes <= self.SMALL * self.replies:
            bytes_time = self.nbytes / server.throughput if server.throughput else 0.0
            server.saw_pipeline_step(max(self.last - self.first - bytes_time, 0.0) / self.replies)


def _hand_on(on_replies, replies: list, done: Pipelined) -> None:
    """Give ``replies`` to ``on_replies`` with the index of the first, count them, empty the list."""
    first, handed = done.answered, replies[:]
    done.answered += len(replies)
    replies.clear()
    on_replies(first, handed)


def _declined(server: Server, done: Pipelined, why: str, pending: int = 0) -> str:
    """A connection ended with requests unanswered (``pending`` replies read, not yet counted):
    a server not known to pipeline that answered one request at most of several is taken for
    one that does not."""
    answered = done.answered + pending
    if answered <= 1 and done.sent > 1 and not server.pipelines:
        server.saw_pipelining(False)
    return f"{why} after {answered} replies"


def _renew_after_fork() -> None:
    """In a forked child: none of its parent's loop's semaphores."""
    _slots.clear()


os.register_at_fork(after_in_child=_renew_after_fork)
