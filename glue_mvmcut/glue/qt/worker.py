"""What the plugin's dialogs share: work on a `glue_qt.utils.threading.Worker` thread, a progress
bar fed through a Qt signal, a Cancel button backed by a `threading.Event`, errors shown as one
readable line, and Python's garbage collector kept on the GUI thread while a worker runs
(`~glue_mvmcut.glue.qt.viewers.collector`)."""

import threading
from pathlib import Path

from glue_qt.utils.threading import Worker
from qtpy import QtCore, QtWidgets

from ...core.combiners import COMBINERS
from ...core.errors import Cancelled, MVMCutError
from .viewers import collector

__all__ = ["WorkerDialog", "add_box_row", "add_combiner_row", "data_dir"]


def data_dir() -> Path:
    """Where the dialogs write files unless told otherwise: ``glue-mvmcut`` in the user's data
    directory (``~/.local/share/glue-mvmcut`` on Linux)."""
    base = QtCore.QStandardPaths.writableLocation(QtCore.QStandardPaths.GenericDataLocation)
    return Path(base) / "glue-mvmcut"


class _Progress(QtCore.QObject):
    """Carries the pipeline's progress callbacks from the worker thread to the GUI thread."""

    changed = QtCore.Signal(int, int, str)


def _arcsec_box(value: float) -> QtWidgets.QDoubleSpinBox:
    box = QtWidgets.QDoubleSpinBox()
    box.setRange(0.1, 3600.0)
    box.setDecimals(1)
    box.setSuffix(" arcsec")
    box.setValue(value)
    return box


def add_box_row(form: QtWidgets.QFormLayout, width: float, height: float):
    """Add a "Box (width × height)" row of two arcsec spin boxes to ``form``; return them."""
    width_box, height_box = _arcsec_box(width), _arcsec_box(height)
    sizes = QtWidgets.QHBoxLayout()
    sizes.addWidget(width_box)
    sizes.addWidget(QtWidgets.QLabel("×"))
    sizes.addWidget(height_box)
    form.addRow("Box (width × height)", sizes)
    return width_box, height_box


def add_combiner_row(form: QtWidgets.QFormLayout) -> QtWidgets.QComboBox:
    """Add a "Combine overlaps by" row to ``form``: the combiners of
    `~glue_mvmcut.core.combiners`, the WHT-weighted mean first; ``currentData()`` is the name."""
    combiner = QtWidgets.QComboBox()
    for name, what in COMBINERS.items():
        combiner.addItem(f"{what} ({name})", name)
    combiner.setToolTip("How overlapping cutouts of one band make a mosaic pixel")
    form.addRow("Combine overlaps by", combiner)
    return combiner


class WorkerDialog(QtWidgets.QDialog):
    """A dialog that runs long steps off the GUI thread.

    Subclasses add their widgets, lay out ``progress``, ``status`` and ``cancel_button``, and
    enable their own buttons in `set_busy`.
    """

    #: Shown when the user cancels.
    cancelled_message = "Cancelled. Nothing was loaded."

    def __init__(self, app, parent=None):
        super().__init__(parent)
        self.app = app
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QtWidgets.QProgressBar()
        self.status = QtWidgets.QLabel()
        self.status.setWordWrap(True)
        self._workers = []  # running, or not long finished: a QThread dropped while it runs aborts
        self._cancel = threading.Event()
        self._progress = _Progress()
        self._progress.changed.connect(self._on_progress)
        self.cancel_button.clicked.connect(self._cancel.set)

    def set_busy(self, busy: bool) -> None:
        """Enable or disable the subclass's buttons while work runs."""

    def run(self, func, on_result, message: str, *args, cancellable: bool = False, **kwargs) -> None:
        """Run ``func(*args, **kwargs)`` on a worker thread; ``on_result`` gets its result on the
        GUI thread. A cancellable step gets ``progress`` and ``cancel`` keyword arguments."""
        self.status.setStyleSheet("")
        self.status.setText(message)
        self.set_busy(True)
        self.progress.setRange(0, 0)  # busy until the first progress report
        if cancellable:
            self._cancel.clear()
            kwargs.update(progress=self._progress.changed.emit, cancel=self._cancel.is_set)
        self.cancel_button.setEnabled(cancellable)
        self._workers = [w for w in self._workers if not w.isFinished()]
        worker = Worker(func, *args, **kwargs)
        worker.finished.connect(self._ended)  # however the thread ends (queued to the GUI thread)
        worker.result.connect(on_result)
        worker.error.connect(self._on_error)
        self._workers.append(worker)
        collector().hold()
        worker.start()

    def finish(self, message: str, *, error: bool = False, done: bool = True) -> None:
        """Show ``message`` (in red for an error) and make the dialog ready for the next step; the
        progress bar full if the step was ``done``, cleared if it failed or was cancelled."""
        self.status.setText(message)
        self.status.setStyleSheet("color: #b00020" if error else "")
        self.set_busy(False)
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)
        if done and not error:
            self.progress.setValue(1)
        else:
            self.progress.reset()

    def show_error(self, exc: BaseException) -> None:
        """One readable line: our own errors as they are, anything else named as unexpected."""
        if isinstance(exc, Cancelled):
            self.finish(self.cancelled_message, done=False)
            return
        if isinstance(exc, MVMCutError):
            self.finish(str(exc), error=True)
        else:  # a bug: say so, and how to get it fixed
            self.finish(
                f"Unexpected error: {exc!r}. Please report it to the glue-mvmcut developers with the "
                "target and box you used; Glue itself is unaffected.",
                error=True,
            )

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.progress.setRange(0, total)
        self.progress.setValue(done)
        self.status.setText(message)

    def _ended(self) -> None:
        collector().release()

    def _on_error(self, exc_info) -> None:
        self.show_error(exc_info[1])
