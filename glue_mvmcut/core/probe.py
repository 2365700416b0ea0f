"""`check_server`: how the configured MAST answers, and what the cutter will do with it.

It probes with one small MVM layer: whether the server answers, whether the MVM query works,
where file requests are redirected, the HTTP version, ``Accept-Ranges``, what one range and
several ranges in one request bring back (`~glue_mvmcut.core.servers.RANGE_KINDS`), whether
requests pipelined on one connection are answered (`~glue_mvmcut.core.pipelining`), the round
trip and the throughput. Users learn why a cutout moves what it does; we learn how the real
archive behaves.
"""

import time
import warnings
from dataclasses import asdict, dataclass, field

from .config import conf
from .endpoints import file_url, server_url
from .errors import ArchiveError, NoMVMDataWarning
from .mast import query_layers
from .pipelining import pipelined_ranges
from .servers import RANGE_KINDS, Server, server_of
from .threadsafe import catch_warnings
from .transport import http_session, proxy_of, run, transport_errors

__all__ = ["ServerReport", "check_server", "PROBE_POSITION"]

#: Where the probe looks for MVM layers: the LMC field of ``mvmcut demo`` (30 Doradus), which
#: the real archive and the stand-in both cover.
PROBE_POSITION = (84.9208, -69.1467)
_BLOCK = 2880
_THROUGHPUT_BYTES = 4 << 20
_PIPELINED = 4  # requests in the pipelining probe


@dataclass
class ServerReport:
    """What `check_server` found (seconds, bytes and bytes per second)."""

    server: str
    answers_in: float
    layer: str
    layer_size: int | None
    redirects: list[str] = field(default_factory=list)
    http_version: str = ""
    accept_ranges: str | None = None
    ranges: str = ""  # one of RANGE_KINDS
    pipelining: str = ""  # what became of requests pipelined on one connection
    round_trip: float = 0.0
    throughput: float = 0.0

    @property
    def plan(self) -> str:
        """What the cutter will do with this server."""
        if self.ranges == "multipart":
            return "ranged cutouts, a box's rows in a few multi-range requests per layer"
        if self.ranges == "no-range":
            return "whole-layer downloads (--fetch auto; --fetch ranged fails), resumable, into the cache"
        bound = f", within {conf.overfetch}x the bytes a box needs" if float(conf.overfetch) else ""
        how = "pipelined on" if self.pipelining.startswith("answered") else "one at a time over"
        return (
            f"ranged cutouts, one range per request, {how} up to {conf.connections} connections; "
            f"rows joined where cheaper than a request{bound}"
        )

    def lines(self) -> list[str]:
        """The report, as ``mvmcut check-server`` prints it."""
        redirects = " -> ".join(self.redirects) if self.redirects else "none"
        size = f"{self.layer_size / 1e6:.1f} MB" if self.layer_size is not None else "size not said"
        return [
            f"server:          {self.server} (answers in {self.answers_in * 1000:.0f} ms)",
            f"MVM query:       works; probing with {self.layer} ({size})",
            f"redirects:       {redirects}",
            f"HTTP version:    {self.http_version}",
            f"Accept-Ranges:   {self.accept_ranges or '(not sent)'}",
            f"one range:       {'206, as asked' if self.ranges != 'no-range' else '200, the whole file'}",
            f"several ranges:  {_SEVERAL[self.ranges]}",
            f"pipelining:      {self.pipelining or '(not tried)'}",
            f"round trip:      {self.round_trip * 1000:.0f} ms",
            f"throughput:      {self.throughput / 1e6:.1f} MB/s",
            f"the cutter will: {self.plan}",
        ]

    def as_dict(self) -> dict:
        """The report as plain values (for JSON), the plan included."""
        return {**asdict(self), "plan": self.plan}


_SEVERAL = dict(
    zip(
        RANGE_KINDS,
        (
            "206 multipart/byteranges, every range",
            "206 with the first range only",
            "200 with the whole file (as object stores answer)",
            "200 with the whole file",
        ),
        strict=True,
    )
)


def check_server(position=PROBE_POSITION, *, timeout: float | None = None) -> ServerReport:
    """Probe the configured MAST (astroquery's ``[mast] server``) with the smallest MVM layer
    near ``position`` and report how it answers.

    Raises
    ------
    ArchiveError
        If the server cannot be reached, the query fails, or no MVM layer is near ``position``.
    """
    server = server_url()
    with http_session(timeout) as session, transport_errors("Checking the server"):
        started = time.monotonic()
        session.head(server, allow_redirects=False)  # any reply: the server is there
        answers_in = time.monotonic() - started
    with catch_warnings():
        warnings.simplefilter("ignore", NoMVMDataWarning)  # said below, as the error it is here
        layers = query_layers(position, 10)
    if not len(layers):
        raise ArchiveError(f"Checking the server: MAST at {server} lists no MVM layer at {position}.")
    smallest = layers[int(layers["size"].argmin())]
    url = file_url(smallest["dataURI"])
    with (
        http_session(timeout) as session,
        transport_errors(f"Checking the server with {smallest['productFilename']}"),
    ):
        head = session.head(url, allow_redirects=True)
        head.raise_for_status()
        target = head.url
        report = ServerReport(
            server,
            answers_in,
            str(smallest["productFilename"]),
            int(smallest["size"]),
            redirects=[response.headers.get("Location", "") for response in head.history],
            http_version=f"HTTP/{head.raw.version / 10:.1f}" if head.raw.version else "unknown",
            accept_ranges=head.headers.get("Accept-Ranges"),
        )
        one = [_get(session, target, f"bytes=0-{_BLOCK - 1}") for _ in range(3)]
        several = _get(session, target, "bytes=0-99,1000-1099,2000-2099")
        report.ranges = _kind(one[0][0], several)
        report.round_trip = min(seconds for _, seconds, _ in one)
        if report.ranges != "no-range":
            _, seconds, nbytes = _get(session, target, f"bytes=0-{_THROUGHPUT_BYTES - 1}", read=True)
            report.throughput = nbytes / max(seconds - report.round_trip, 1e-6)
            report.pipelining = _pipelining(target)
    return report


def _pipelining(url: str) -> str:
    """What became of `_PIPELINED` one-range requests pipelined on one connection to ``url``."""
    if proxy_of(url) is not None:
        return "not tried (through a proxy)"
    probe = Server(server_of(url).origin)  # its own: nothing learned yet, so it is put to the test
    spans = [(k * _BLOCK, (k + 1) * _BLOCK) for k in range(_PIPELINED)]
    done = run(pipelined_ranges(url, spans, lambda first, replies: None, probe))
    if done.why is None:
        return f"answered in order ({done.answered} of {done.sent} requests)"
    return f"not taken: {done.why} ({done.sent} sent)"


def _get(session, url: str, byte_range: str, read: bool = False) -> tuple[int, float, int]:
    """(status, seconds, n) of a ranged GET: n the body's bytes with ``read``, else the ranges it
    holds (a 200's body, the whole file, is never read)."""
    started = time.monotonic()
    with session.get(url, headers={"Range": byte_range}, stream=True) as response:
        if response.status_code not in (200, 206):
            response.raise_for_status()
        body = response.content if response.status_code == 206 else b""
        seconds = time.monotonic() - started
    if read:
        return response.status_code, seconds, len(body)
    multipart = response.headers.get("Content-Type", "").startswith("multipart/byteranges")
    return response.status_code, seconds, body.count(b"Content-Range:") if multipart else 1


def _kind(one_status: int, several: tuple[int, float, int]) -> str:
    """The kind of server (`RANGE_KINDS`) from a one-range and a three-range request."""
    status, _, parts = several
    if one_status != 206:
        return "no-range"
    if status == 200:
        return "one-range"
    return "multipart" if parts == 3 else "first-range"
