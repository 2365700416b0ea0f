"""Glue under load: the GUI thread's largest stall and the wall time of each of five loads of 25
Data through the dialog, in one session, then the time to draw a subset across all of them
(until the data collection tree and every viewer that can be seen show it) and the largest
stall meanwhile.
For each load, the longest the GUI thread spent at once on each kind of work (timed by wrapping
them here): adding the load's Data and links, making a viewer, placing it in its tab, showing a
mosaic in it, drawing a canvas, and Python's garbage collection (any thread's: it holds the GIL).

Run from the repository root (offscreen is fine): ``QT_QPA_PLATFORM=offscreen python
benchmarks/bench_glue.py``. Each load is a search and a "Cut and load" of a 6″ box at a slightly
different position on the synthetic LMC field (20 layers: 5 mosaics, 20 cutouts and the query
table written per load), served by the stand-in MAST on 127.0.0.1.
"""

import gc
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from glue.core.roi import RectangularROI
from glue.core.subset import RoiSubsetState
from glue.main import load_plugins
from glue_qt.app import GlueApplication
from matplotlib.backends.backend_qt import FigureCanvasQT
from qtpy import QtCore, QtWidgets

from glue_mvmcut.core.endpoints import using_server
from glue_mvmcut.glue import loader
from glue_mvmcut.glue.qt import open_dialog, viewers
from glue_mvmcut.testing.server import MastServer
from glue_mvmcut.testing.synth import build_archive

LOADS = 5
LMC = (84.9208, -69.1467)


#: The longest single call of each kind of work in the current load (seconds).
LONGEST = defaultdict(float)


def timed(kind: str, func):
    """``func``, noting in LONGEST how long its longest call took."""

    def call(*args, **kwargs):
        started = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            LONGEST[kind] = max(LONGEST[kind], time.perf_counter() - started)

    return call


def time_the_work() -> None:
    """Wrap the kinds of GUI-thread work a load does, and time the garbage collector."""
    loader.add_prepared = timed("add Data", loader.add_prepared)
    viewers._show = timed("show mosaic", viewers._show)
    viewers.ImageViewer = timed("make viewer", viewers.ImageViewer)
    GlueApplication.add_widget = timed("place viewer", GlueApplication.add_widget)
    FigureCanvasQT._draw_idle = timed("draw", FigureCanvasQT._draw_idle)  # before pace_draws takes it
    collecting = {}

    def on_gc(phase, info):
        if phase == "start":
            collecting[threading.get_ident()] = time.perf_counter()
        elif threading.get_ident() in collecting:
            seconds = time.perf_counter() - collecting.pop(threading.get_ident())
            LONGEST["garbage collection"] = max(LONGEST["garbage collection"], seconds)

    gc.callbacks.append(on_gc)


def wait_until(condition, timeout=300.0):
    """Run Qt's event loop until ``condition()`` holds."""
    end = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > end:
            raise TimeoutError("the dialog did not finish")
        QtWidgets.QApplication.processEvents(QtCore.QEventLoop.AllEvents, 20)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="mvmcut-bench-glue-") as folder:
        _loads(Path(folder))


def _loads(work: Path) -> None:
    """Five loads through the dialog and a subset across them, with everything under ``work``."""
    archive = build_archive(work / "archive", "lmc")
    QtCore.QSettings.setPath(QtCore.QSettings.NativeFormat, QtCore.QSettings.UserScope, str(work / "cfg"))
    time_the_work()
    load_plugins(require_qt_plugins=True)  # as the glue command does, before any Data
    with MastServer(archive) as server, using_server(server.url):
        app = GlueApplication()
        app.resize(1400, 900)
        app.show()
        dialog = open_dialog(app.session)
        dialog.out_dir.setText(str(work / "out"))
        beats = []
        heartbeat = QtCore.QTimer()
        heartbeat.setInterval(10)
        heartbeat.timeout.connect(lambda: beats.append(time.perf_counter()))
        heartbeat.start()
        kinds = ("add Data", "make viewer", "place viewer", "show mosaic", "draw", "garbage collection")
        print("load  Data  seconds  largest GUI stall (s)  longest: " + ", ".join(kinds))
        for load in range(1, LOADS + 1):
            ra, dec = LMC[0] + 0.0005 * load, LMC[1]
            dialog.target.setText(f"{ra:.5f} {dec:.5f}")
            dialog.width_box.setValue(6)
            dialog.height_box.setValue(6)
            beats.clear()
            LONGEST.clear()
            started = time.perf_counter()
            dialog.search_button.click()
            wait_until(dialog.cut_button.isEnabled)
            dialog.cut_button.click()
            wait_until(lambda: dialog.status.text().startswith("Wrote "))
            seconds = time.perf_counter() - started
            stall = float(np.max(np.diff(beats))) if len(beats) > 1 else seconds
            longest = ", ".join(f"{LONGEST[kind]:.3f}" for kind in kinds)
            print(f"{load:4d}  {len(dialog.loaded):4d}  {seconds:7.2f}  {stall:.3f}  {longest}")
        fine = dialog.loaded[0]
        ny, nx = fine.shape
        state = RoiSubsetState(
            xatt=fine.pixel_component_ids[1],
            yatt=fine.pixel_component_ids[0],
            roi=RectangularROI(nx / 4, 3 * nx / 4, ny / 4, 3 * ny / 4),
        )
        pacer = viewers.pace_draws()
        beats.clear()
        started = time.perf_counter()
        app.data_collection.new_subset_group(label="box", subset_state=state)
        wait_until(pacer.idle)  # the data collection tree's reaction and the viewers' draws too
        seconds = time.perf_counter() - started
        heartbeat.stop()
        stall = float(np.max(np.diff([started, *beats])))
        selected = sum(int(d.subsets[-1].to_mask().sum()) for d in app.data_collection)
        print(
            f"a subset drawn across {len(app.data_collection)} Data and {sum(map(len, app.viewers))} "
            f"viewers: {seconds:.2f} s, largest GUI stall {stall:.3f} s ({selected} pixels selected)"
        )
        app.close()


if __name__ == "__main__":
    main()
