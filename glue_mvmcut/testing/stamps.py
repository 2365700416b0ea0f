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
    (``SO_TIMESTAMPNS``, Linux only): with six handler threads taking turns for the GIL, a request
    was read up to ~2 ms after it came, and its reply sent that much later."""

    SO_TIMESTAMPNS = 35  # Linux's value; Python's socket module does not name it
    AVAILABLE = sys.platform.startswith("linux")
    _ANCILLARY = socket.CMSG_SPACE(16)  # one struct timespec

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self.received: float | None = None  # on the time.monotonic() clock

    @classmethod
    def stamp(cls, sock: socket.socket) -> bool:
        """Have the kernel stamp what ``sock`` receives; False where it cannot."""
        if not cls.AVAILABLE:
            return False
        sock.setsockopt(socket.SOL_SOCKET, cls.SO_TIMESTAMPNS, 1)
        return True

    @classmethod
    def attach(cls, handler: BaseHTTPRequestHandler) -> "StampedReader | None":
        """Make ``handler`` read its requests through a new reader; None where the kernel cannot
        stamp them (its connection is stamped as the listening socket is: `stamp`)."""
        if not cls.AVAILABLE:
            return None
        reader = cls(handler.connection)
        handler.rfile = io.BufferedReader(reader)
        return reader

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        try:
            count, ancillary, _, _ = self._sock.recvmsg_into([buffer], self._ANCILLARY)
        except BlockingIOError:
            return None
        self.received = None
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == self.SO_TIMESTAMPNS and len(data) >= 16:
                seconds, nanoseconds = struct.unpack("qq", data[:16])  # CLOCK_REALTIME
                age = time.time() - seconds - nanoseconds * 1e-9
                # None for a stamp the kernel did not take (0) or one that makes no sense.
                self.received = time.monotonic() - age if 0 <= age < 60 else None
        return count
