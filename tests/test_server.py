"""The stand-in MAST server, through the real astroquery client and plain HTTP."""

import re
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from astropy.coordinates import SkyCoord
from astroquery.exceptions import NoResultsWarning

from glue_mvmcut.core.endpoints import file_url
from glue_mvmcut.core.mast import forget_column_configs, observations
from glue_mvmcut.testing.faults import Faults
from glue_mvmcut.testing.portal import columns_config
from glue_mvmcut.testing.ranges import parse_ranges
from glue_mvmcut.testing.server import MastServer

LMC = SkyCoord(84.9208, -69.1467, unit="deg")
SEED_CRITERIA = {"dataproduct_type": "IMAGE", "project": "HAP", "obs_collection": "HST"}
SVM_DECOY = "hst_15629_07_acs_wfc_f814w_jdxk07"


def _layer_uri(name="hst_skycell-p0081x14y14_acs_wfc_f814w_all_drc.fits"):
    return f"mast:HST/product/{name}"


def test_columns_config_describes_every_filtered_column():
    config = columns_config()
    for column in (
        "dataproduct_type",
        "instrument_name",
        "project",
        "obs_collection",
        "calib_level",
        "filters",
        "obs_id",
        "s_ra",
        "s_dec",
        "obsid",
    ):
        assert config[column]["vot.datatype"]
    assert config["obs_collection"]["separator"] == ";"


@pytest.mark.parametrize("instrument, expected", [("ACS*", 13), ("WFC3*", 8)])
def test_the_seed_query_finds_the_layers_and_the_hap_decoy(mast, lmc_archive, instrument, expected):
    forget_column_configs()  # a first contact: astroquery asks for the columns too
    client = observations()
    table = client.query_criteria(
        coordinates=LMC, radius="15 arcsec", instrument_name=instrument, calib_level=3, **SEED_CRITERIA
    )
    layers = {rec.obs_id for rec in lmc_archive.layers if rec.instrument == instrument[:-1].lower()}
    extra = {SVM_DECOY} if instrument == "ACS*" else set()
    assert set(table["obs_id"]) == layers | extra
    assert len(table) == expected
    assert table["obsid"].dtype.kind == "U"  # typed string, or get_product_list cannot join ids
    count = client.query_criteria_count(
        coordinates=LMC, radius="15 arcsec", instrument_name=instrument, **SEED_CRITERIA
    )
    assert count == expected
    services = [r.service for r in mast.requests()]
    assert services.count("Mast.Caom.Filtered.Position") == 2 and "columnsconfig" in services


def test_the_project_filter_drops_classic_hst_products(mast):
    client = observations()
    table = client.query_criteria(
        coordinates=LMC,
        radius="15 arcsec",
        instrument_name="ACS*",
        obs_collection="HST",
        dataproduct_type="IMAGE",
    )
    assert "jdxk07010" in set(table["obs_id"])
    hap = client.query_criteria(coordinates=LMC, radius="15 arcsec", instrument_name="ACS*", **SEED_CRITERIA)
    assert "jdxk07010" not in set(hap["obs_id"])


def test_cone_versus_footprint(mast, lmc_archive):
    client = observations()
    rec = lmc_archive.layer("hst_skycell-p0081x14y14_acs_wfc_f814w_all_drc.fits")
    # The footprint's first corner; a cone 5" beyond it misses unless its radius reaches back.
    corner = [float(v) for v in rec.s_region.split()[2:4]]
    wcs = rec.wcs()
    outward = wcs.pixel_to_world_values(-0.5 - 125, -0.5 - 125)  # 5" x 5" beyond the corner
    assert outward != pytest.approx(corner)
    position = SkyCoord(*outward, unit="deg")
    with pytest.warns(NoResultsWarning):
        missed = client.query_criteria(coordinates=position, radius="6 arcsec", obs_id=rec.obs_id)
    assert len(missed) == 0
    hit = client.query_criteria(coordinates=position, radius="7.5 arcsec", obs_id=rec.obs_id)
    assert list(hit["obs_id"]) == [rec.obs_id]


def test_products_include_previews_trailers_and_single_visit_decoys(mast, lmc_archive):
    client = observations()
    obs = client.query_criteria(coordinates=LMC, radius="15 arcsec", instrument_name="WFC3*", **SEED_CRITERIA)
    products = client.get_product_list(obs)
    names = set(products["productFilename"])
    layer = "hst_skycell-p0081x14y14_wfc3_ir_f160w_all_drz.fits"
    assert {
        layer,
        layer.replace(".fits", ".jpg"),
        layer.replace("_drz.fits", "_trl.txt"),
        f"{SVM_DECOY}_drc.fits",
    } <= names
    kept = client.filter_products(products, productSubGroupDescription=["DRZ", "DRC"], extension="fits")
    skycell_layers = {n for n in kept["productFilename"] if n.startswith("hst_skycell")}
    assert skycell_layers == {rec.filename for rec in lmc_archive.layers if rec.instrument == "wfc3"}
    assert set(kept["productFilename"]) - skycell_layers == {f"{SVM_DECOY}_drc.fits"}


def test_download_products_gets_identical_files(mast, lmc_archive, tmp_path):
    client = observations()
    obs = client.query_criteria(coordinates=LMC, radius="15 arcsec", instrument_name="WFC3*", **SEED_CRITERIA)
    products = client.filter_products(
        client.get_product_list(obs), productSubGroupDescription="DRZ", extension="fits"
    )[:2]
    manifest = client.download_products(products, download_dir=str(tmp_path), flat=True, verbose=False)
    assert list(manifest["Status"]) == ["COMPLETE", "COMPLETE"]
    for path in manifest["Local Path"]:
        local = Path(str(path))
        assert local.read_bytes() == (lmc_archive.directory / local.name).read_bytes()
    heads = [r for r in mast.requests() if r.method == "HEAD"]
    gets = [r for r in mast.requests() if r.method == "GET"]
    assert len(heads) == 2 and len(gets) == 2
    assert mast.bytes_sent == sum(int(size) for size in products["size"])


def test_files_asked_for_one_after_another_are_never_counted_together(mast, lmc_archive):
    # The next request may leave (on another connection) the moment the last byte of a reply is
    # in: a reply stops counting before its last bytes are sent, so the stand-in never sees two
    # files under way. Replies of one write and of several (1 MB).
    urls = [file_url(_layer_uri(f"hst_skycell-p0081x{x}y14_acs_wfc_f814w_all_drc.fits")) for x in (14, 15)]
    with requests.Session() as first, requests.Session() as second:
        for number in range(60):
            last = 99 if number % 3 else 1_000_000
            session = (first, second)[number % 2]
            reply = session.get(urls[number % 2], headers={"Range": f"bytes=0-{last}"}, timeout=10)
            assert reply.status_code == 206 and len(reply.content) == last + 1
    assert mast.faults.most_files_at_once == 1
    mast.faults.reset()
    assert mast.faults.most_files_at_once == 0


def test_a_request_held_to_gather_files_ends_when_the_faults_are_reset():
    # As stalls do: a test's held request never outlives it (it would hold 60 s otherwise).
    faults = Faults()
    faults.gather(2)
    held = threading.Event()

    def one_file():
        with faults.file_request("a"):
            held.set()

    request = threading.Thread(target=one_file)
    request.start()
    assert not held.wait(0.2)  # one file of the two: held
    faults.reset()
    request.join(10)
    assert held.is_set() and not request.is_alive()


def test_range_requests(mast, lmc_archive):
    url = file_url(_layer_uri())
    data = (lmc_archive.directory / "hst_skycell-p0081x14y14_acs_wfc_f814w_all_drc.fits").read_bytes()
    part = requests.get(url, headers={"Range": "bytes=2880-5759"}, timeout=10)
    assert part.status_code == 206
    assert part.content == data[2880:5760]
    assert part.headers["Content-Range"] == f"bytes 2880-5759/{len(data)}"
    tail = requests.get(url, headers={"Range": "bytes=-100"}, timeout=10)
    assert tail.status_code == 206 and tail.content == data[-100:]
    beyond = requests.get(url, headers={"Range": f"bytes={len(data)}-"}, timeout=10)
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{len(data)}"
    head = requests.head(url, timeout=10)
    assert head.headers["Accept-Ranges"] == "bytes" and int(head.headers["Content-Length"]) == len(data)
    assert mast.bytes_sent == 2880 + 100
    # Several ranges, a malformed one among them (skipped): a multipart/byteranges reply.
    multi = requests.get(url, headers={"Range": "bytes=0-9, junk ,-5,20-29"}, timeout=10)
    assert multi.status_code == 206 and multi.headers["Content-Type"].startswith("multipart/byteranges")
    size = len(data)
    ranges = re.findall(rb"Content-Range: bytes (\d+)-(\d+)/(\d+)\r\n\r\n", multi.content)
    spans = [(int(first), int(last), int(total)) for first, last, total in ranges]
    assert spans == [(0, 9, size), (size - 5, size - 1, size), (20, 29, size)]
    for first, last, _ in spans:
        part = data[first : last + 1]
        assert multi.content.count(b"\r\n\r\n" + part + b"\r\n--") == 1
    assert [r.range for r in mast.requests("download")][:2] == ["bytes=2880-5759", "bytes=-100"]


def test_a_request_line_too_long_is_refused_at_once(mast):
    # Refused before the request is parsed, on a fresh connection: HTTP 414, not a dead handler.
    host, port = mast.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(b"GET /" + b"x" * 70_000 + b" HTTP/1.1\r\nHost: here\r\n\r\n")
        assert connection.recv(64).startswith(b"HTTP/1.1 414")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel stamps arrivals on Linux")
def test_latency_runs_from_a_requests_arrival_however_late_it_is_read(mast):
    # The new connection's handler is held before it reads (as the GIL holds one behind the
    # others' work): the reply still comes `latency` after the request arrived.
    mast.faults.latency = 0.5
    host, port = mast.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        with mast._records_lock:  # taken by the handler's setup, before it reads
            sent = time.monotonic()
            connection.sendall(b"GET /Santa-war/query?name=lmc HTTP/1.1\r\nHost: here\r\n\r\n")
            time.sleep(0.4)
        assert connection.recv(64).startswith(b"HTTP/1.1 200")
        answered = time.monotonic()
    # The kernel stamps arrivals with the wall clock; taken to the monotonic clock they can err
    # by milliseconds where the wall clock is being adjusted (seen: 2 ms early on a VM).
    assert sent - 0.05 <= mast.requests("resolver")[0].arrived < sent + 0.1
    assert 0.45 <= answered - sent < 0.8  # counted from the read: 0.9


@pytest.mark.parametrize(
    "kind, one, several",
    [
        # (status, Content-Type start, body) of a one-range and a three-range request
        ("multipart", (206, "application/octet-stream", "0-99"), (206, "multipart/byteranges", "parts")),
        ("first-range", (206, "application/octet-stream", "0-99"), (206, "application/octet-stream", "0-9")),
        ("one-range", (206, "application/octet-stream", "0-99"), (200, "application/octet-stream", "all")),
        ("no-range", (200, "application/octet-stream", "all"), (200, "application/octet-stream", "all")),
    ],
)
def test_every_kind_of_range_server(mast, lmc_archive, kind, one, several):
    mast.faults.ranges = kind
    data = (lmc_archive.directory / _layer_uri().split("/")[-1]).read_bytes()
    bodies = {"0-99": data[:100], "0-9": data[:10], "all": data}
    for byte_range, (status, content_type, body) in (("bytes=0-99", one), ("bytes=0-9,20-29,-5", several)):
        response = requests.get(file_url(_layer_uri()), headers={"Range": byte_range}, timeout=10)
        assert (response.status_code, response.headers["Content-Type"].split(";")[0]) == (
            status,
            content_type,
        )
        if body == "parts":
            assert response.content.count(b"Content-Range: bytes ") == 3
        else:
            assert response.content == bodies[body]
    assert ("Accept-Ranges" in response.headers) == (kind != "no-range")
    with pytest.raises(ValueError, match="Unknown range kind 'some'"):
        mast.faults.ranges = "some"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_file_requests_can_be_redirected_to_another_server(mast, lmc_archive, status):
    with MastServer(lmc_archive.directory) as storage:
        mast.faults.redirect_to, mast.faults.redirect_status = storage.url, status
        url = file_url(_layer_uri())
        response = requests.get(url, headers={"Range": "bytes=0-99"}, timeout=10)
        # requests follows it and keeps the Range header: the other server's 206.
        assert [r.status_code for r in response.history] == [status] and response.status_code == 206
        assert response.history[0].headers["Location"] == storage.url + url.removeprefix(mast.url)
        assert [r.status for r in storage.requests("download")] == [206]
    with pytest.raises(ValueError, match="200 is not a redirect"):
        mast.faults.redirect_status = 200


def test_unknown_files_are_404(mast):
    response = requests.get(file_url("mast:HST/product/../../etc/passwd"), timeout=10)
    assert response.status_code == 404
    assert requests.get(f"{mast.url}/elsewhere", timeout=10).status_code == 404


def test_injected_server_errors_then_recovery(mast):
    mast.faults.fail(503, count=2, scope="download")
    url = file_url(_layer_uri())
    assert [requests.head(url, timeout=10).status_code for _ in range(3)] == [503, 503, 200]
    mast.faults.fail(500, count=1, scope="query")
    assert requests.post(f"{mast.url}/api/v0/invoke", data={"request": "{}"}, timeout=10).status_code == 500


def test_dropped_connection_truncates_the_body(mast):
    mast.faults.drop(after_bytes=10_000, count=1)
    url = file_url(_layer_uri())
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(url, timeout=10).content  # noqa: B018 - reading the body is the test
    assert [r.bytes_sent for r in mast.requests("download")] == [10_000]
    assert len(requests.get(url, timeout=10).content) > 10_000  # one request only


def test_stall_mid_body_trips_a_read_timeout(mast):
    mast.faults.stall(1.5, scope="download", after_bytes=4096)
    with pytest.raises(requests.exceptions.ConnectionError):  # urllib3 ReadTimeoutError while streaming
        requests.get(file_url(_layer_uri()), timeout=(5, 0.3)).content  # noqa: B018


def test_stall_before_answer_trips_a_timeout(mast):
    mast.faults.stall(1.5, scope="query")
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{mast.url}/api/v0/invoke", data={"request": "{}"}, timeout=(5, 0.3))


def test_executing_replies_make_astroquery_poll(mast):
    mast.faults.executing = 3
    table = observations().query_criteria(
        coordinates=LMC, radius="15 arcsec", instrument_name="WFC3*", **SEED_CRITERIA
    )
    assert len(table) == 8
    assert len(mast.requests("Mast.Caom.Filtered.Position")) == 4


def test_command_line_serves_until_stopped(lmc_archive):
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "glue_mvmcut.testing.server", str(lmc_archive.directory), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        reply = requests.post(
            f"{url}/portal/Mashup/Mashup.asmx/columnsconfig",
            data={"colConfigId": "Mast.Caom.Cone"},
            timeout=10,
        )
        assert "instrument_name" in reply.json()
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


def test_context_manager_releases_the_port(lmc_archive):
    with MastServer(lmc_archive) as server:
        url = server.url
        assert requests.head(f"{url}{'/api/v0.1/Download/file'}?uri={_layer_uri()}", timeout=10).ok
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.head(url, timeout=2)


def test_plain_range_lists_are_parsed_as_any_other():
    # "a-b,c-d,..." (as clients send it) takes numpy's parser; with spaces after the commas the
    # same list takes the general one. Ends past the file are clipped, empty spans dropped.
    rng = np.random.default_rng(3)
    for _ in range(100):
        starts, lengths = rng.integers(0, 10**12, 50), rng.integers(-5, 10**6, 50)
        items = [f"{a}-{max(a + b, 0)}" for a, b in zip(starts.tolist(), lengths.tolist(), strict=True)]
        size = int(rng.integers(1, 10**12))
        plain = parse_ranges("bytes=" + ",".join(items), size)
        assert plain == parse_ranges("bytes=" + ", ".join(items), size)
        assert all(0 <= start <= end < size for start, end in plain)
    assert parse_ranges("bytes=1-99999999999999999999999", 100) == [(1, 99)]  # past int64


def _read_replies(connection: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """(status, body) of the next ``count`` replies on ``connection`` (each with a Content-Length)."""
    received, replies = b"", []
    while len(replies) < count:
        end = received.find(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", received[:end]).group(1)) if end >= 0 else -1
        if end < 0 or len(received) < end + 4 + length:
            received += connection.recv(1 << 16)
            continue
        replies.append((int(received.split(b" ", 2)[1]), received[end + 4 : end + 4 + length]))
        received = received[end + 4 + length :]
    return replies


def test_a_connection_takes_file_requests_and_queries_pipelined_in_order(mast, lmc_archive):
    # Plain file requests are answered by the stand-in's event loop; at a query (or a fault to
    # apply) the connection goes to a thread of its own with what was read of it, and every
    # reply still comes in the order asked.
    data = (lmc_archive.directory / _layer_uri().split("/")[-1]).read_bytes()
    target = "/api/v0.1/Download/file?uri=" + _layer_uri()
    get = "GET {} HTTP/1.1\r\nHost: here\r\nRange: bytes={}\r\n\r\n"
    host, port = mast.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            (
                get.format(target, "0-9")
                + get.format(target, "100-119")
                + get.format("/Santa-war/query?name=lmc", "0-0")
                + get.format(target, "5-6")
            ).encode()
        )
        replies = _read_replies(connection, 4)
        assert [status for status, _ in replies] == [206, 206, 200, 206]
        assert [replies[0][1], replies[1][1], replies[3][1]] == [data[:10], data[100:120], data[5:7]]
        assert b'"resolvedCoordinate"' in replies[2][1]
        mast.faults.fail(503, scope="download")  # a fault owed: the next request goes to a thread too
        connection.sendall(get.format(target, "0-9").encode())
        assert _read_replies(connection, 1)[0][0] == 503
    records = mast.requests()
    assert [(r.service, r.status, r.range) for r in records] == [
        ("download", 206, "bytes=0-9"),
        ("download", 206, "bytes=100-119"),
        ("resolver", 200, None),
        ("download", 206, "bytes=5-6"),
        ("download", 503, None),
    ]
    assert len({r.connection for r in records}) == 1
    assert [r.bytes_sent for r in records[:2]] == [10, 20]
