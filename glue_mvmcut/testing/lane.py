"""The stand-in's fast lane: plain file requests answered by one thread's event loop.

A server's own time per request bounds how fast it answers pipelined requests (a 20" box on a
layer as wide as a real one is ~1000 one-row requests from a server that answers one range per
request). With a thread per connection (`http.server`), eight connections' threads took turns
for the GIL: ~370 µs of CPU per one-row reply, where a web server in C takes tens of µs. The
lane reads every connection in the thread of an event loop and answers GETs and HEADs of files
itself while no fault but the latency and the switches of what a reply holds is on
(`~glue_mvmcut.testing.faults.Faults.plain_download`); at a connection's first other request
(a query, a fault to apply, a request it cannot parse) it hands the connection, with the bytes
read of it, to a thread of its own (the stand-in's request handler, which knows every fault)
for the rest of its life.
"""

import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from .portal import DOWNLOAD_PATH
from .ranges import FileConnection, body_pieces
from .replies import FileReply, file_reply, target_parts
from .stamps import StampedReader

__all__ = ["FileLane"]

_READ = 256 * 1024  # bytes read at once at most
_HEAD_LIMIT = 64 * 1024  # a request's head longer than this goes to a thread (which refuses it)
#: Request headers that make a request one for a thread: a body, or a word on the connection.
_NOT_PLAIN = {"content-length", "transfer-encoding", "expect", "connection"}
_OUT_LIMIT = 1 << 20  # bytes queued for a connection at most (a whole file's reply goes by parts)


class _Headers(dict):
    """A request's headers by lower-case name; `get` takes any case."""

    def get(self, name: str, default=None):
        return super().get(name.lower(), default)


def _plain_request(head: bytes) -> tuple[str, str, _Headers] | None:
    """(method, target, headers) of a request's head if it is a GET or HEAD of a file with no
    body and nothing to say about its connection, else None."""
    request_line, *lines = head.decode("latin-1").split("\r\n")
    words = request_line.split(" ")
    if len(words) != 3 or words[0] not in ("GET", "HEAD") or words[2] != "HTTP/1.1":
        return None
    headers = _Headers()
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            return None
        headers[name.strip().lower()] = value.strip()
    if target_parts(words[1])[0] != DOWNLOAD_PATH or headers.keys() & _NOT_PLAIN:
        return None
    return words[0], words[1], headers


@dataclass
class _Due:
    """A reply to send once due, and what its record needs."""

    due: float
    method: str
    target: str
    byte_range: str | None
    reply: FileReply
    answered: Callable[[], None]
    arrived: float
    replied: float = 0.0
    sent: int = 0  # body bytes queued
    body_at: int | None = None  # where the body starts and ends among the connection's bytes
    body_end: int | None = None

    def sent_by(self, sent: int) -> bool:
        """Whether the reply is all out once the connection's first ``sent`` bytes are."""
        return self.body_end is not None and self.body_end <= sent


class FileLane(FileConnection):
    """Connection ``number`` of ``owner`` (the stand-in, `~glue_mvmcut.testing.server.MastServer`),
    read and written by its loop without blocking."""

    def __init__(self, owner, sock: socket.socket, number: int):
        self.owner, self.sock, self.number = owner, sock, number
        self.loop = owner._loop
        self.received = bytearray()
        self.arrived = 0.0  # when the bytes in ``received`` came
        self.due: deque[_Due] = deque()  # replies waiting for their time, in order
        self.sending: _Due | None = None  # the reply whose body is not all queued yet
        self.pieces = iter(())  # its body's pieces still to send
        self.next_piece: bytes | None = None  # (one read ahead: the last is known as such)
        self.out = bytearray()  # bytes queued that the kernel did not take yet
        self.sent = 0  # bytes the kernel took
        self.going: deque[_Due] = deque()  # replies whose bytes are queued, not all sent
        self.timer = None
        self.handing = False  # a request for a thread came: no more read here
        self._buffer = bytearray(_READ)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.loop.add_reader(sock.fileno(), self._readable)

    # -- reading --------------------------------------------------------------------------------
    def _readable(self) -> None:
        try:
            count, stamp = StampedReader.receive(self.sock, self._buffer)
        except BlockingIOError:
            return
        except OSError:
            count, stamp = 0, None
        if not count:
            self.close()
            return
        self.received += memoryview(self._buffer)[:count]
        self.arrived = stamp if stamp is not None else time.monotonic()
        self._take_requests()

    def _take_requests(self) -> None:
        plain = self.owner.faults.plain_download()  # (a fault switched on meanwhile: from the next read)
        while not self.handing and self.sock is not None:
            end = self.received.find(b"\r\n\r\n")
            if end < 0:
                self.handing = len(self.received) > _HEAD_LIMIT
                break
            request = _plain_request(bytes(self.received[:end]))
            if request is None or not plain:
                self.handing = True
                break
            del self.received[: end + 4]
            self._take(*request)
        if self.handing and self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self._hand_over_when_done()

    def _take(self, method: str, target: str, headers: _Headers) -> None:
        """Make the reply to a request now; it goes out when due."""
        owner = self.owner
        owner._started()
        answered = owner.faults.file_started(target_parts(target)[1], hold=False)
        try:
            reply = file_reply(method, target, headers, owner.catalogue, owner.faults, self.open_file)
        except OSError:  # the file went away meanwhile: the connection ends, as a thread's would
            answered()
            owner._finished()
            self.close()
            return
        if method == "HEAD":
            reply.segments = []
        due = self.arrived + owner.faults.latency
        self.due.append(_Due(due, method, target, headers.get("Range"), reply, answered, self.arrived))
        self._arm()

    # -- writing --------------------------------------------------------------------------------
    def _arm(self) -> None:
        if self.due and self.timer is None and self.sending is None:
            self.timer = self.loop.call_at(self.due[0].due, self._send_due)

    def _send_due(self) -> None:
        """Send the replies that are due, in order (those due together in one write), as far as
        the kernel takes them."""
        self.timer = None
        now = self.loop.time()
        while self.sending is None and self.due and self.due[0].due <= now:
            self._start(self.due.popleft())
        self._flush()
        self._arm()
        self._hand_over_when_done()

    def _start(self, item: _Due) -> None:
        """Queue ``item``'s head and as much of its body as `_fill` takes."""
        item.replied = time.monotonic()
        reply = item.reply
        head = [f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}\r\n"]
        head += [f"{name}: {value}\r\n" for name, value in reply.headers]
        self.out += "".join(head + ["\r\n"]).encode("latin-1")
        item.body_at = self.sent + len(self.out)  # where its body starts in the connection's bytes
        self.going.append(item)
        self.sending, self.pieces = item, body_pieces(reply.fd, reply.segments)
        self.next_piece = next(self.pieces, None)
        self._fill()

    def _fill(self) -> None:
        """Queue the body under way's next pieces, up to ``_OUT_LIMIT`` bytes queued."""
        item = self.sending
        while item is not None and len(self.out) < _OUT_LIMIT:
            piece, self.next_piece = self.next_piece, next(self.pieces, None)
            if piece is not None:
                if self.next_piece is None:
                    item.answered()  # before the last bytes: the client may ask anew once it has them
                self.out += piece
                item.sent += len(piece)
            if self.next_piece is None:
                item.body_end = item.body_at + item.sent
                self.sending = item = None

    def _writable(self) -> None:
        self._flush()
        if self.sock is not None and not self.out:
            self.loop.remove_writer(self.sock.fileno())
            self._send_due()

    def _flush(self) -> None:
        """Send what is queued as far as the kernel takes it (the rest when it can); record the
        replies sent whole."""
        while self.sock is not None:
            if self.out:
                try:
                    sent = self.sock.send(self.out)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self.close()
                    return
                del self.out[:sent]
                self.sent += sent
                while self.going and self.going[0].sent_by(self.sent):
                    self._finish(self.going.popleft())
                if self.out:
                    self.loop.add_writer(self.sock.fileno(), self._writable)
                    return
            if self.sending is None:
                return
            self._fill()

    def _finish(self, item: _Due) -> None:
        """Record ``item``, with what went of its body."""
        item.answered()
        sent = min(max(self.sent - item.body_at, 0), item.sent) if item.body_at is not None else 0
        self.owner._record_request(
            item.method,
            item.target,
            item.reply.service,
            item.byte_range,
            item.reply.status,
            sent,
            item.arrived,
            self.number,
            item.replied,
        )
        self.owner._finished()

    # -- endings --------------------------------------------------------------------------------
    def _hand_over_when_done(self) -> None:
        """Once every reply of the lane is out, give the connection to a thread."""
        if not self.handing or self.going or self.due or self.sock is None:
            return
        sock, self.sock = self.sock, None
        self.close_file()
        self.owner._lanes.discard(self)
        sock.setblocking(True)
        self.owner._hand_over(sock, bytes(self.received), self.arrived, self.number)

    def close(self) -> None:
        """Close the connection (its client left, or the server stops); replies not sent are
        recorded with what went of them."""
        if self.sock is None:
            return
        sock, self.sock = self.sock, None
        self.loop.remove_reader(sock.fileno())
        self.loop.remove_writer(sock.fileno())
        if self.timer is not None:
            self.timer.cancel()
        for item in [*self.going, *self.due]:
            self._finish(item)
        self.going.clear()
        self.due.clear()
        self.sending = None
        sock.close()
        self.close_file()
        self.owner._lanes.discard(self)
