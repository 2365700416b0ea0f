"""Servers that answer one range per request: a box's rows are asked for one request each,
pipelined on few connections (HTTP/1.1), and every way a server may take a pipeline still
gives the cutout."""

import asyncio
import re
import ssl
from collections import defaultdict

import pytest
import trustme
from sameness import same_as_local

from glue_mvmcut import conf
from glue_mvmcut.core import pipelining
from glue_mvmcut.core.endpoints import file_url
from glue_mvmcut.core.pipelining import Pipelined, _ReplyStream, pipelined_ranges
from glue_mvmcut.core.remote import RemoteFITS
from glue_mvmcut.core.servers import Server, server_of
from glue_mvmcut.core.transport import TransferStats, run
from glue_mvmcut.testing.faults import PIPELINING_KINDS

LMC = (84.9208, -69.1467)
FINE = "hst_skycell-p0081x14y15_acs_wfc_f814w_all_drc.fits"
# Rows of a 2" box on a layer 22000 px wide: 200 bytes every 88 000.
ROWS = [(10_000 + 88_000 * row, 10_200 + 88_000 * row) for row in range(50)]


def pipelined(records) -> bool:
    """Whether some request came on its connection before the reply to the one before it began
    (which a client that waits for each reply never does)."""
    by_connection = defaultdict(list)
    for record in records:
        by_connection[record.connection].append(record)
    return any(
        later.arrived < earlier.replied
        for requests in by_connection.values()
        for earlier, later in zip(requests, requests[1:], strict=False)
    )


@pytest.mark.parametrize("kind", ["first-range", "one-range"])
def test_rows_of_a_one_range_server_come_a_request_each_pipelined(mast, lmc_archive, kind):
    mast.faults.ranges = kind
    remote = RemoteFITS(file_url(f"mast:HST/product/{FINE}"))
    got = run(remote.read_spans(ROWS))
    local = (lmc_archive.directory / FINE).read_bytes()
    assert [bytes(g) for g in got] == [local[a:b] for a, b in ROWS]
    # The first request asks for every row; then the rows it did not bring, one request each:
    # no byte but the rows' (joining rows 88 000 bytes apart costs more than a request).
    first, *rest = mast.requests("download")
    assert first.range.count(",") == len(ROWS) - 1
    assert len(rest) == (len(ROWS) - 1 if kind == "first-range" else len(ROWS))
    assert all("," not in r.range and r.status == 206 for r in rest)
    assert remote.stats.bytes == len(ROWS) * 200 and remote.stats.requests == 1 + len(rest)
    assert pipelined(rest) and len({r.connection for r in rest}) <= int(conf.connections)
    assert server_of(mast.url).pipelines is True


@pytest.mark.parametrize("pipelining", PIPELINING_KINDS)
@pytest.mark.parametrize("kind", ["first-range", "one-range"])
def test_every_way_of_taking_a_pipeline_gives_the_local_cutout(mast, lmc_archive, kind, pipelining):
    mast.faults.ranges, mast.faults.pipelining = kind, pipelining
    stats = TransferStats()
    with conf.set_temp("overfetch", 1):  # rows never joined (on this narrow layer, they may be)
        same_as_local(lmc_archive.directory, FINE, LMC, 6, stats=stats)
    # Learned from the first pipeline: a server that closes the connection after one reply, or
    # loses what came with the first request, is asked one request at a time from then on.
    assert server_of(mast.url).pipelines is (pipelining == "answers")
    rows = [r for r in mast.requests("download") if r.status == 206]
    assert pipelined(rows) is (pipelining == "answers")
    assert stats.bytes < 0.5 * lmc_archive.layer(FINE).size  # never the whole file


def test_a_pipeline_broken_amid_a_reply_is_asked_again_from_there(mast, lmc_archive):
    url = file_url(f"mast:HST/product/{FINE}")
    server_of(url).saw_ranges("one-range")  # known: the rows are pipelined at once
    mast.faults.drop(after_bytes=100, count=1)  # one reply of the pipelines breaks off
    remote = RemoteFITS(url)
    got = run(remote.read_spans(ROWS))
    local = (lmc_archive.directory / FINE).read_bytes()
    assert [bytes(g) for g in got] == [local[a:b] for a, b in ROWS]
    records = mast.requests("download")
    assert [r.bytes_sent for r in records].count(100) == 1
    # Every row came whole once at least (the broken one, and any after it on that connection,
    # asked again); the broken reply's bytes were not taken.
    assert {r.range for r in records if r.bytes_sent == 200} == {f"bytes={a}-{b - 1}" for a, b in ROWS}
    assert remote.stats.bytes == len(ROWS) * 200
    assert server_of(url).pipelines is True  # a break is not a refusal


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "a reply that is not HTTP"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n", "HTTP 200"),
        (
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9/100\r\nContent-Length: 99\r\n\r\n",
            "HTTP 206",
        ),
    ],
)
def test_a_pipeline_stops_at_a_reply_it_cannot_take_before_its_body(reply, why):
    # A server that is not HTTP, one that sends a whole file, one that sends more than asked: the
    # pipeline ends there, body unread, and leaves those ranges to the ordinary requests.
    async def answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await reader.read()  # until the client hangs up
        writer.close()
        await writer.wait_closed()

    async def probe():
        listening = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = listening.sockets[0].getsockname()[1]
        async with listening:
            return await pipelined_ranges(
                f"http://127.0.0.1:{port}/file", [(0, 10), (10, 20)], lambda *_: None, Server("probe")
            )

    assert run(probe()) == Pipelined(0, 2, why)


def test_a_pipeline_tells_what_one_more_request_costs(mast, lmc_archive):
    # 400 rows, 50 a connection: the replies' spacing, less their bytes' time, is a request's
    # cost from then on; until then one is assumed (a web server's: 0.2 ms).
    url = file_url(f"mast:HST/product/{FINE}")
    server = server_of(url)
    server.saw_ranges("one-range")
    server.saw_reply(0.020, 2_000)
    server.saw_reply(0.030, 2_000_000)  # 200 MB/s beyond the round trip
    assert server.request_worth(8, pipelined=True) == pytest.approx(2e-4 * 2e8 / 8)  # 5 KB
    rows = [(10_000 + 20_000 * row, 10_200 + 20_000 * row) for row in range(400)]
    remote = RemoteFITS(url)
    with conf.set_temp("overfetch", 1):
        run(remote.read_spans(rows))
    assert remote.stats.requests == 400 and server.pipeline_step is not None
    assert server.request_worth(8, pipelined=True) == pytest.approx(server.pipeline_step * 2e8 / 8)
    server.saw_pipeline_step(0.015)  # an object store, fetching each range from its disks
    assert server.request_worth(8, pipelined=True) == pytest.approx(375_000)
    joined = RemoteFITS(url)  # rows 20 KB apart are now cheaper fetched than asked for apart
    got = run(joined.read_spans(rows))
    local = (lmc_archive.directory / FINE).read_bytes()
    assert [bytes(g) for g in got] == [local[a:b] for a, b in rows]
    assert joined.stats.requests == 1 and joined.stats.bytes == rows[-1][1] - rows[0][0]


def test_replies_are_read_whatever_pieces_their_bytes_come_in():
    # Many small replies come in one read; a reply's head and body may be split anywhere, and a
    # read may end one reply and begin the next.
    bodies = [b"first body", b"", b"the third reply's body"]
    wire = b"".join(
        b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body) for body in bodies
    )
    splits = [[wire[:cut], wire[cut:]] for cut in range(len(wire) + 1)]
    splits += [[wire[:first]] + [wire[i : i + 7] for i in range(first, len(wire), 7)] for first in range(7)]
    for pieces in splits:
        stream, got, length = _ReplyStream(), [], None
        for piece in pieces:
            stream.feed(piece)
            while length is not None or (head := stream.head()) is not None:
                if length is None:
                    assert head.startswith(b"HTTP/1.1 206 ") and head.count(b"\r\n") == 1
                    length = int(head.rpartition(b": ")[2])
                    stream.expect(length)
                if (body := stream.body()) is None:
                    break
                got.append(body)
                length = None
        assert got == bodies and stream.unread == 0, pieces


def test_pipelines_go_over_tls(tmp_path, monkeypatch):
    # An https server (as MAST and cloud storage are) that answers only once every request of
    # the pipeline has come: a client waiting for each reply before its next request would
    # never be answered.
    authority = trustme.CA()
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_side)
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))  # trusted by the client's context
    data = bytes(range(256)) * 40
    spans = [(100 * k, 100 * k + 37) for k in range(60)]

    async def answer(reader, writer):
        heads = [await reader.readuntil(b"\r\n\r\n") for _ in spans]
        for head in heads:
            first, last = map(int, re.search(rb"Range: bytes=(\d+)-(\d+)", head).groups())
            body = data[first : last + 1]
            content_range = b"bytes %d-%d/%d" % (first, last, len(data))
            writer.write(b"HTTP/1.1 206 Partial Content\r\nContent-Range: %s\r\n" % content_range)
            writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        await reader.read()  # until the client hangs up
        writer.close()

    async def fetch():
        listening = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_side)
        port = listening.sockets[0].getsockname()[1]
        got = []
        async with listening:
            done = await pipelined_ranges(
                f"https://127.0.0.1:{port}/file",
                spans,
                lambda first, replies: got.extend(body for _, body in replies),
                Server("tls"),
            )
        return done, got

    pipelining._tls_context.cache_clear()
    try:
        done, got = run(fetch())
    finally:
        pipelining._tls_context.cache_clear()
    assert done == Pipelined(len(spans), len(spans))
    assert got == [data[start:stop] for start, stop in spans]
