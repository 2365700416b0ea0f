"""A stand-in MAST server on 127.0.0.1 that the real astroquery client talks to unchanged.

It speaks HTTP for `~glue_mvmcut.testing.portal` (what MAST's portal and name resolver answer)
and serves the archive's files:

- ``HEAD``/``GET /api/v0.1/Download/file?uri=mast:HST/product/<file>`` with ``Range`` (206;
  several ranges give a ``multipart/byteranges`` reply, as most HTTP servers send, or whatever
  `~glue_mvmcut.testing.faults.Faults.ranges` says).

Plain file requests are answered by one thread's event loop (`~glue_mvmcut.testing.lane`, fast
enough for a pipeline of a thousand one-row requests); a connection goes to a thread of its own
(`http.server`) at its first other request: queries, and file requests while a fault is to be
applied. It counts requests and bytes, and injects faults on demand
(`~glue_mvmcut.testing.faults.Faults`).
Use it as a context manager in tests, or ``python -m glue_mvmcut.testing.server ARCHIVE_DIR
--port N``.
"""

import argparse
import asyncio
import itertools
import json
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .faults import PIPELINING_KINDS, RANGE_KINDS, Faults
from .lane import FileLane
from .portal import (
    COLUMNS_CONFIG_PATH,
    DOWNLOAD_PATH,
    INVOKE_PATH,
    RESOLVER_PATH,
    URI_PREFIX,
    Catalogue,
    columns_config,
)
from .ranges import CHUNK, FileConnection, body_pieces
from .replies import file_reply, target_parts
from .stamps import StampedReader
from .synth import Archive

__all__ = ["MastServer", "RequestRecord"]


@dataclass
class RequestRecord:
    """One request the server answered."""

    method: str
    path: str
    service: str | None
    range: str | None
    status: int
    bytes_sent: int
    arrived: float = 0.0  # time.monotonic() when the request arrived
    file: str | None = None  # the product a download asked for
    connection: int = 0  # the connection it came on (numbered as they were accepted, from 1)
    replied: float = 0.0  # time.monotonic() when its reply began


class _Handler(FileConnection, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm on, the client's delayed
    # ACK holds the body back ~40 ms per reply, which a real archive server does not do.
    disable_nagle_algorithm = True
    server: "_HTTPServer"

    def log_message(self, format, *args):  # quiet: the server keeps its own records
        pass

    def setup(self):
        super().setup()
        # The fast lane accepted the connection and read its first bytes (`MastServer._hand_over`).
        self._connection, pending, received = self.server.owner._handed.pop(self.connection)
        self._reader = StampedReader.attach(self, pending, received)

    # The added latency runs from the request's arrival to the reply's first byte, while the
    # server works: a real archive server has its reply ready long before a network delay ends,
    # where this one spends ~1 ms of Python per multi-range reply, concurrent replies in turn.
    # Arrival is when the kernel received the request (`StampedReader`), not when this
    # handler's thread, after waiting for the GIL behind the others' work, reads it.
    # Errors sent before a request is parsed (a 414 for a huge line) go at once.
    _due = _arrived = _replied = 0.0
    _trickle: float | None = None  # bytes per second of this reply's body, if it trickles

    def parse_request(self):
        received = self._reader.received
        self._arrived = time.monotonic() if received is None else received
        self._due = self._arrived + self.server.owner.faults.latency
        return super().parse_request()

    def send_response(self, code, message=None):
        delay = self._due - time.monotonic()
        if delay > 0:
            self.server.owner.faults.pause(delay)
        if self.server.owner.faults.pipelining == "loses":
            self.lose_what_came_meanwhile()
        self._replied = time.monotonic()
        super().send_response(code, message)
        if self.server.owner.faults.pipelining == "closes":
            self.send_header("Connection", "close")  # one request per connection

    # -- plumbing -------------------------------------------------------------------------------
    def _record(self, service, status, sent, byte_range=None):
        self.server.owner._record_request(
            self.command,
            self.path,
            service,
            byte_range,
            status,
            sent,
            self._arrived,
            self._connection,
            self._replied,
        )

    def _send_bytes(self, status, body: bytes, content_type="application/json", service=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self._sent = 0
        try:
            if self.command != "HEAD" and self._trickle:
                self._send_slowly(body, self._trickle)
            elif self.command != "HEAD":
                self.wfile.write(body)
                self._sent = len(body)
        finally:
            self._record(service, status, self._sent)

    def _send_slowly(self, body: bytes, rate: float) -> None:
        """Send ``body`` at ``rate`` bytes per second, in twentieths of a second (a `trickle`)."""
        step = max(1, int(rate / 20))
        for at in range(0, len(body), step):
            self.wfile.write(body[at : at + step])
            self.wfile.flush()
            self._sent += len(body[at : at + step])
            time.sleep(step / rate)

    def _send_json(self, obj, service=None):
        self._send_bytes(200, json.dumps(obj).encode(), service=service)

    def _apply_faults(self, scope) -> tuple[bool, dict | None]:
        """Apply failures and pre-body stalls (which hold the reply back that much longer).

        Returns whether the request was already answered (an injected failure) and the fault to
        apply while sending a file body (a drop, a mid-body stall or a garbled reply), if any.
        """
        mid_body, self._trickle = None, None
        for fault in self.server.owner.faults.take(scope, self.command):
            if fault["kind"] == "fail":
                self.close_connection = True
                self._send_bytes(
                    fault["status"], b'{"status": "ERROR", "msg": "injected failure"}', service=scope
                )
                return True, None
            if fault["kind"] == "stall" and (scope != "download" or self.command != "GET"):
                self._due += fault["seconds"]
            elif fault["kind"] == "trickle":
                self._trickle = fault["rate"]
            else:
                mid_body = fault
        return False, mid_body

    def _read_form(self) -> dict:
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length).decode() if length else ""
        return {k: v[0] for k, v in parse_qs(body).items()}

    # -- verbs ----------------------------------------------------------------------------------
    def do_POST(self):
        with self._in_flight():
            self._post()

    def do_HEAD(self):
        with self._in_flight():
            self._download()

    def do_GET(self):
        with self._in_flight():
            if urlsplit(self.path).path == RESOLVER_PATH:
                self._resolve()
            else:
                self._download()

    @contextmanager
    def _in_flight(self):
        self.server.owner._started()
        try:
            yield
        finally:
            self.server.owner._finished()

    def _post(self):
        path = urlsplit(self.path).path
        form = self._read_form()
        if path not in (INVOKE_PATH, COLUMNS_CONFIG_PATH):
            self._send_bytes(404, b'{"status": "ERROR", "msg": "no such service"}')
            return
        answered, _ = self._apply_faults("query")
        if answered:
            return
        if path == COLUMNS_CONFIG_PATH:
            if form.get("colConfigId") != "Mast.Caom.Cone":
                self._send_json({}, service="columnsconfig")
                return
            self._send_json(columns_config(), service="columnsconfig")
            return
        self._invoke(form)

    def _invoke(self, form):
        try:
            request = json.loads(form["request"])
            service = request["service"]
        except (KeyError, ValueError):
            self._send_json({"status": "ERROR", "msg": "malformed request", "data": [], "fields": []})
            return
        faults = self.server.owner.faults
        if faults.take_executing():
            self._send_json({"status": "EXECUTING", "msg": "", "data": [], "fields": []}, service=service)
            return
        reply = self.server.owner.catalogue.invoke(
            request, hostile_names=faults.hostile_names, missing_columns=faults.missing_columns
        )
        self._send_json(reply, service=service)

    def _resolve(self):
        answered, _ = self._apply_faults("query")
        if answered:
            return
        name = parse_qs(urlsplit(self.path).query).get("name", [""])[0]
        self._send_json(self.server.owner.catalogue.resolve(name), service="resolver")

    def _download(self):
        path, file = target_parts(self.path)
        if path != DOWNLOAD_PATH:
            self._send_bytes(404, b'{"status": "ERROR", "msg": "not found"}')
            return
        with self.server.owner.faults.file_request(file) as self._answered:
            self._download_file()

    def _download_file(self):
        answered, mid_body = self._apply_faults("download")
        if answered:
            return
        garble = mid_body["garble"] if mid_body and mid_body["kind"] == "garble" else None
        mid_body = None if garble else mid_body
        owner = self.server.owner
        reply = file_reply(
            self.command, self.path, self.headers, owner.catalogue, owner.faults, self.open_file, garble
        )
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.close_connection = self.close_connection or reply.closes
        byte_range = self.headers.get("Range")
        if self.command != "GET":
            self.end_headers()
            self._record(reply.service, reply.status, 0, byte_range)
            return
        self._headers_buffer.append(b"\r\n")  # the headers go out with the body's first bytes
        self._sent, dropped = 0, False
        try:
            dropped = self._stream(reply.fd, reply.segments, mid_body)
        finally:  # recorded even when the client hangs up mid-body
            self._record(reply.service, reply.status, self._sent, byte_range)
        if dropped:  # hang up only once recorded, so a client that sees the drop sees the record
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def _stream(self, fd: int, segments: list, fault: dict | None) -> bool:
        """Send the body, counting bytes in ``self._sent``, small pieces (multipart framing,
        short row spans) gathered into writes of up to ``CHUNK`` bytes as a web server's buffered
        output sends them; a drop fault stops after its byte count (returns True), a stall
        fault pauses there."""
        limit = fault["after_bytes"] if fault else None
        pending: list[bytes] = []
        pending_bytes = 0

        def flush():  # with the headers, if they are still to go: one write, as web servers send
            nonlocal pending_bytes
            self.wfile.write(b"".join(self._headers_buffer + pending))
            self._headers_buffer = []
            self._sent += pending_bytes
            pending.clear()
            pending_bytes = 0

        if self._trickle:
            self.flush_headers()
            self._answered()  # a trickle is not a concurrency test: counted until it starts
            self._send_slowly(b"".join(body_pieces(fd, segments)), self._trickle)
            return False
        for piece in body_pieces(fd, segments):
            if limit is not None and self._sent + pending_bytes + len(piece) >= limit:
                head = limit - self._sent - pending_bytes
                pending.append(piece[:head])
                pending_bytes += head
                flush()
                self.wfile.flush()
                if fault["kind"] == "drop":
                    return True
                self.server.owner.faults.pause(fault["seconds"])
                limit = None
                piece = piece[head:]
            if pending_bytes >= CHUNK:  # sent before the next piece: the last one is kept
                flush()
            pending.append(piece)
            pending_bytes += len(piece)
        self._answered()  # before the last bytes: the client may ask anew the moment it has them
        flush()
        return False


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops connections when a client opens a dozen at once
    # while the accepting thread waits for the GIL; the dropped ones come back ~1 s later (TCP's
    # retransmission). Web servers listen with 511.
    request_queue_size = 511
    owner: "MastServer"

    def server_bind(self):
        super().server_bind()
        StampedReader.stamp(self.socket)  # accepted connections inherit it: their first bytes too

    def handle_error(self, request, client_address):
        # A client hanging up mid-body (as one must on a 200 reply to a Range request) is normal.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class MastServer:
    """The stand-in MAST server for one synthetic archive.

    Parameters
    ----------
    archives : `~glue_mvmcut.testing.synth.Archive`, path, or a list of them
        The archive(s) to serve (directories with ``manifest.json``).
    port : int, optional
        Port on 127.0.0.1; 0 picks a free one.

    Examples
    --------
    >>> with MastServer(archive_dir) as server:  # doctest: +SKIP
    ...     server.url
    'http://127.0.0.1:40123'
    """

    def __init__(self, archives, port: int = 0):
        if not isinstance(archives, (list, tuple)):
            archives = [archives]
        self.archives = [a if isinstance(a, Archive) else Archive.load(a) for a in archives]
        self.catalogue = Catalogue(self.archives)
        self.faults = Faults()
        self.records: list[RequestRecord] = []
        self.connections = 0  # connections accepted since the last reset_stats
        self._numbers = itertools.count(1)
        self._since = 0.0  # time.monotonic() of the last reset_stats
        self._records_lock = threading.Lock()
        self._busy = 0
        self._idle = threading.Condition()
        self._httpd = _HTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.owner = self
        self._loop = asyncio.new_event_loop()  # the fast lane's (`~glue_mvmcut.testing.lane`)
        self._lanes: set[FileLane] = set()
        self._handed: dict[socket.socket, tuple[int, bytes, float]] = {}  # to _Handler.setup
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123`` (what ``[mast] server`` should be)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def _record_request(
        self, method, target, service, byte_range, status, sent, arrived, connection, replied
    ) -> None:
        """Record a request answered (one that came before `reset_stats` is not)."""
        path, uri = target_parts(target)
        file = uri.removeprefix(URI_PREFIX) or None
        record = RequestRecord(
            method, path, service, byte_range, status, sent, arrived, file, connection, replied
        )
        with self._records_lock:
            if record.arrived >= self._since:
                self.records.append(record)

    def _connected(self) -> int:
        """Count a new connection; returns its number."""
        with self._records_lock:
            self.connections += 1
            return next(self._numbers)

    def _started(self) -> None:
        """A request is being answered."""
        with self._idle:
            self._busy += 1

    def _finished(self) -> None:
        """A request was answered and recorded."""
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    # -- serving --------------------------------------------------------------------------------
    def _accept(self) -> None:
        """Take the connections waiting (the lane's loop)."""
        while True:
            try:
                sock, _ = self._httpd.socket.accept()
            except OSError:  # none waiting (BlockingIOError), or the server stops
                return
            self._lanes.add(FileLane(self, sock, self._connected()))

    def _hand_over(self, sock: socket.socket, pending: bytes, received: float, number: int) -> None:
        """Give connection ``number`` to a thread of its own, with the bytes read of it
        (``pending``, received at ``received``)."""
        self._handed[sock] = (number, pending, received)
        self._httpd.process_request(sock, sock.getpeername())

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._httpd.socket.setblocking(False)
        self._loop.add_reader(self._httpd.socket.fileno(), self._accept)
        try:
            self._loop.run_forever()
        finally:
            self._loop.remove_reader(self._httpd.socket.fileno())
            for lane in list(self._lanes):
                lane.close()
            self._loop.close()

    @property
    def in_flight(self) -> int:
        """Requests being answered now (a request is recorded only once answered)."""
        with self._idle:
            return self._busy

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until every request under way has been answered and recorded.

        A client can finish reading a reply before the server thread records it; call this
        before reading the records.
        """
        with self._idle:
            self._idle.wait_for(lambda: self._busy == 0, timeout)

    @property
    def bytes_sent(self) -> int:
        """Body bytes sent for file downloads since the last `reset_stats`."""
        self.settle()
        with self._records_lock:
            return sum(r.bytes_sent for r in self.records if r.service == "download")

    def requests(self, service: str | None = None) -> list[RequestRecord]:
        """Records of requests answered, optionally only those of one service, in the order they
        arrived (a request is recorded when answered: a client may send the next one before)."""
        self.settle()
        with self._records_lock:
            records = [r for r in self.records if service is None or r.service == service]
        return sorted(records, key=lambda r: r.arrived)

    def reset_stats(self) -> None:
        """Forget the request records and the count of connections (after the requests under way
        are recorded); a request that came before, answered later (a client gone long since),
        is not recorded."""
        self.settle()
        with self._records_lock:
            self.records.clear()
            self.connections = 0
            self._since = time.monotonic()

    def start(self) -> "MastServer":
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._serve, name="mast-stand-in", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (connections handed to threads end with their
        clients)."""
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()  # (the loop closes as it ends)
        elif not self._loop.is_closed():  # never started
            self._loop.close()
        self._httpd.server_close()

    def __enter__(self) -> "MastServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv=None) -> None:
    """Command line: ``python -m glue_mvmcut.testing.server ARCHIVE_DIR [--port N]``."""
    parser = argparse.ArgumentParser(description="Serve a synthetic MVM archive as a stand-in MAST.")
    parser.add_argument(
        "archive_dir", nargs="+", help="directories written by python -m glue_mvmcut.testing.synth"
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument(
        "--ranges",
        choices=RANGE_KINDS,
        default="multipart",
        help="how to answer Range requests: several ranges in a multipart reply (default), the first "
        "of several only, the whole file to several (as object stores do), or Range ignored",
    )
    parser.add_argument(
        "--pipelining",
        choices=PIPELINING_KINDS,
        default="answers",
        help="what becomes of requests sent before the previous reply: answered in order (default), "
        "the connection closed after the first, or lost",
    )
    parser.add_argument("--redirect-to", metavar="URL", help="redirect file requests to this server")
    args = parser.parse_args(argv)
    server = MastServer(args.archive_dir, port=args.port)
    server.faults.latency = args.latency
    server.faults.ranges = args.ranges
    server.faults.pipelining = args.pipelining
    server.faults.redirect_to = args.redirect_to
    print(server.url, flush=True)
    try:
        server._serve()
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()


if __name__ == "__main__":
    main()
