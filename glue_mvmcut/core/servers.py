"""What this process has learned about each server it reads layers from.

Servers and their files differ, so what a ranged read plans on is learned from replies rather
than assumed: how long the headers of a server's layers are. With that, a cold cutout's first
read holds the primary and SCI headers whole, and the WHT header fetched with the pixels is
guessed right: two round trips, where a wrong length costs one or two more. Kept per server
(scheme, host and port) for the life of the process; a forked child starts afresh.
"""

import os
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["Server", "server_of", "forget_servers", "FIRST_READ", "MARGIN"]

#: Bytes of a file's first read from a server not met before: a real MVM layer's primary and SCI
#: headers are ~980 cards (~80 KB); 256 KB holds ~3300, as a layer of ~120 inputs has.
FIRST_READ = 256 * 1024
#: Bytes read beyond the longest opening seen: ~144 cards, the keywords of ~5 more inputs than
#: the server's longest primary header so far.
MARGIN = 4 * 2880


@dataclass
class Server:
    """What replies from one server have shown (thread-safe).

    ``opening``: the most bytes seen before a layer's first data (its primary and SCI headers,
    for MVM); ``header_lengths``: by EXTNAME, the length in bytes (with padding) of the last such
    header read.
    """

    origin: str
    opening: int | None = None
    header_lengths: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def first_read(self) -> int:
        """Bytes to read first from one of this server's files: its headers up to the first data."""
        with self._lock:
            return FIRST_READ if self.opening is None else self.opening + MARGIN

    def saw_opening(self, nbytes: int) -> None:
        """A file of this server had ``nbytes`` of headers before its first data."""
        with self._lock:
            self.opening = max(self.opening or 0, nbytes)

    def saw_header(self, extname: str, length: int) -> None:
        """A file of this server had an ``extname`` header of ``length`` bytes."""
        with self._lock:
            self.header_lengths[extname] = length

    def header_length(self, extname: str) -> int | None:
        """The length of the last ``extname`` header seen, None if none was."""
        with self._lock:
            return self.header_lengths.get(extname)


_SERVERS: dict[str, Server] = {}
_LOCK = threading.Lock()


def server_of(url: str) -> Server:
    """What is known of the server of ``url`` (scheme, host and port)."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    with _LOCK:
        return _SERVERS.setdefault(origin, Server(origin))


def forget_servers() -> None:
    """Forget what this process learned about servers (e.g. to time a first contact)."""
    with _LOCK:
        _SERVERS.clear()


def _renew_after_fork() -> None:
    """In a forked child: nothing learned, and a lock no thread of the parent held."""
    global _LOCK
    _LOCK = threading.Lock()
    _SERVERS.clear()


os.register_at_fork(after_in_child=_renew_after_fork)
