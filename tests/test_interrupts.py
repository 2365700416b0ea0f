"""Ctrl-C and SIGTERM: one line, status 130 or 143, nothing after it, nothing half-written —
whenever they come (signals sent to a real ``mvmcut`` process at moments the stand-in sees)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from glue_mvmcut.core.files import fits_problem

#: ``mvmcut`` as its console script runs it, pointed at the stand-in (``argv[1]``).
SCRIPT = """
import sys
from glue_mvmcut.core.endpoints import using_server
from glue_mvmcut.cli import run
with using_server(sys.argv[1]):
    run(sys.argv[2:])
"""
LMC = ["84.9208", "-69.1467"]


def _start(mast, tmp_path, *args):
    env = {**os.environ, "MVMCUT_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, mast.url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _when(condition, process, what: str) -> None:
    """Wait until ``condition()`` (the stand-in saw the moment), failing if the run ended first."""
    deadline = time.monotonic() + 120
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"mvmcut ended before {what}: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"never reached {what}")
        time.sleep(0.01)


def _reading(mast) -> bool:
    """The layers are being read: the product list was answered, and a request is under way
    (a file's, then: every later request is)."""
    return bool(mast.requests("Mast.Caom.Products")) and mast.in_flight > 0


def _check_ended(process, sig, out_dir):
    stdout, stderr = process.communicate(timeout=120)
    expected = "interrupted" if sig == signal.SIGINT else "terminated"
    assert process.returncode == 128 + sig, (stdout, stderr)
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1] == f"mvmcut: {expected}", stderr
    assert sum("mvmcut:" in line for line in lines) == 1 and "Traceback" not in stderr
    assert "Error" not in stderr and "exception" not in stderr.lower(), stderr
    for path in out_dir.glob("*.fits") if out_dir.exists() else []:
        assert fits_problem(path) is None  # whatever has a final name is whole


@pytest.mark.parametrize(
    ("moment", "sig"),
    [("query", signal.SIGINT), ("first pixels", signal.SIGTERM), ("mid-body", signal.SIGINT)],
)
def test_a_cut_ends_in_one_line_whenever_interrupted(mast, tmp_path, moment, sig):
    # Headers come (a first read of 128 KB), then the box's rows start to arrive and the server
    # goes silent: the cut cannot end before the signal comes, however fast this machine is.
    mast.faults.latency = 0.05
    mast.faults.stall(30.0, count=200, scope="download", after_bytes=200_000)
    out = tmp_path / "out"
    process = _start(mast, tmp_path, "cut", *LMC, "--size", "30", "--out", str(out), "--fetch", "ranged")
    if moment == "query":
        _when(lambda: mast.requests("Mast.Caom.Filtered.Position"), process, "the query")
    elif moment == "first pixels":
        _when(lambda: mast.requests("download"), process, moment)
    else:
        _when(lambda: _reading(mast), process, moment)
    process.send_signal(sig)
    _check_ended(process, sig, out)


def test_a_batch_ends_in_one_line_when_interrupted(mast, tmp_path):
    targets = tmp_path / "targets.csv"
    targets.write_text(
        "id,ra,dec\n" + "".join(f"t{i},{84.9208 + i * 0.001:.4f},-69.1467\n" for i in range(6))
    )
    # The rows of the boxes start to arrive, then the server goes silent: the batch cannot end
    # before the signal comes, however fast this machine is.
    mast.faults.stall(60.0, count=200, scope="download", after_bytes=20_000)
    out = tmp_path / "batch"
    process = _start(mast, tmp_path, "batch", str(targets), "--size", "10", "--out", str(out))
    _when(lambda: _reading(mast), process, "the layers' reads")
    process.send_signal(signal.SIGINT)
    _check_ended(process, signal.SIGINT, out)


#: ``mvmcut`` as its console script starts, Ctrl-C coming the moment numpy starts to load (with
#: astropy, the slow part of its start): the signal comes while the modules load, on any machine.
STARTUP = """
import os, signal, sys

class CtrlCWhenNumpyLoads:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy":
            sys.meta_path.remove(self)
            print("signal sent", flush=True)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlCWhenNumpyLoads())
from glue_mvmcut.cli import run
run(sys.argv[1:])
"""


def test_ctrl_c_while_mvmcut_starts_is_one_line(tmp_path):
    process = subprocess.run(
        [sys.executable, "-c", STARTUP, "cut", *LMC, "--size", "20", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.stdout == "signal sent\n"  # numpy did load: the signal came mid-start
    assert process.returncode == 130, process.stderr
    assert process.stderr == "mvmcut: interrupted\n"
    assert not (tmp_path / "out").exists()


#: ``mvmcut demo`` as its console script runs it, Ctrl-C coming at a moment of the test's choice:
#: once the first synthetic layer is written ("archive"), or once the stand-in the demo serves
#: has answered its first download request ("cut"). The moments are reached on any machine.
DEMO = """
import os, signal, sys
import glue_mvmcut.testing.server as server
import glue_mvmcut.testing.synth as synth

def interrupt_after(function, when=lambda *args: True):
    first = iter([True])  # next() on it is atomic: one of the server's threads gets True
    def then_ctrl_c(*args, **kwargs):
        function(*args, **kwargs)
        if when(*args) and next(first, False):  # once: a second Ctrl-C ends the process at once
            os.kill(os.getpid(), signal.SIGINT)  # handled by the main thread, wherever it is
    return then_ctrl_c

if sys.argv[1] == "archive":
    synth._write_layer = interrupt_after(synth._write_layer)
else:  # a request's record is made once it is answered
    server.MastServer._record_request = interrupt_after(
        server.MastServer._record_request, lambda owner, method, path, service, *rest: service == "download"
    )
from glue_mvmcut.cli import run
run(sys.argv[2:])
"""


@pytest.mark.parametrize("moment", ["archive", "cut"])
def test_the_demo_ends_in_one_line_when_interrupted(tmp_path, moment):
    out = tmp_path / "demo"
    process = subprocess.run(
        [sys.executable, "-c", DEMO, moment, "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MVMCUT_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert process.returncode == 130, process.stderr
    lines = [line for line in process.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1] == "mvmcut: interrupted" and sum("mvmcut:" in line for line in lines) == 1
    assert "Traceback" not in process.stderr and "Error" not in process.stderr
    fits_files = list(out.rglob("*.fits")) if out.exists() else []
    assert all(fits_problem(path) is None for path in fits_files)  # whatever has a final name is whole
    if moment == "cut":
        assert "Stand-in MAST serving 20 layers" in process.stdout
