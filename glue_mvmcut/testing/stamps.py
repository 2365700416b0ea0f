"""When the kernel received a request: the stand-in's added latency runs from there.

With six handler threads taking turns for the GIL, the stand-in read a request up to ~2 ms after
it came, and sent its reply that much later than a network's delay would; the kernel's receive
stamps (``SO_TIMESTAMPNS``, Linux) say when it really came.
"""

import io
import socket
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler

__all__ = ["StampedReader"]


class StampedReader(io.RawIOBase):
    """A connection's reading end that notes when the kernel received the bytes it reads
    (``SO_TIMESTAMPNS``, Linux only; elsewhere ``received`` stays None), after ``pending``: bytes
    read from the connection before (received at ``received``)."""

    SO_TIMESTAMPNS = 35  # Linux's value; Python's socket module does not name it
    AVAILABLE = sys.platform.startswith("linux")
    _ANCILLARY = socket.CMSG_SPACE(16)  # one struct timespec

    def __init__(self, sock: socket.socket, pending: bytes = b"", received: float | None = None):
        self._sock = sock
        self._pending = pending
        self.received = received  # on the time.monotonic() clock

    @classmethod
    def stamp(cls, sock: socket.socket) -> bool:
        """Have the kernel stamp what ``sock`` receives; False where it cannot."""
        if not cls.AVAILABLE:
            return False
        sock.setsockopt(socket.SOL_SOCKET, cls.SO_TIMESTAMPNS, 1)
        return True

    @classmethod
    def attach(cls, handler: BaseHTTPRequestHandler, pending: bytes = b"", received: float | None = None):
        """Make ``handler`` read its requests through a new reader (``pending`` first) and
        return it (its connection is stamped as the listening socket is: `stamp`)."""
        reader = cls(handler.connection, pending, received)
        handler.rfile = io.BufferedReader(reader)
        return reader

    @classmethod
    def receive(cls, sock: socket.socket, buffer) -> tuple[int, float | None]:
        """Read from ``sock`` into ``buffer``: bytes read, and when the kernel received them on the
        time.monotonic() clock (None where unknown)."""
        if not cls.AVAILABLE:
            return sock.recv_into(buffer), None
        count, ancillary, _, _ = sock.recvmsg_into([buffer], cls._ANCILLARY)
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == cls.SO_TIMESTAMPNS and len(data) >= 16:
                seconds, nanoseconds = struct.unpack("qq", data[:16])  # CLOCK_REALTIME
                age = time.time() - seconds - nanoseconds * 1e-9
                # None for a stamp the kernel did not take (0) or one that makes no sense.
                return count, time.monotonic() - age if 0 <= age < 60 else None
        return count, None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        if self._pending:
            count = min(len(buffer), len(self._pending))
            buffer[:count], self._pending = self._pending[:count], self._pending[count:]
            return count
        try:
            count, self.received = self.receive(self._sock, buffer)
        except BlockingIOError:
            return None
        return count
