"""The "MVM cutouts for these rows…" layer action: a catalogue (or a subset of one) → the batch
pipeline off the GUI thread → every target's mosaics in the collection, linked by WCS."""

from pathlib import Path

from qtpy import QtWidgets

from ...core.batch import STATUSES, cutout_batch
from ...core.names import safe_filename
from ..links import linked_so_far
from ..loader import add_prepared, prepare_batch, targets_from_layer
from .worker import WorkerDialog, add_box_row, add_combiner_row, data_dir

__all__ = ["BatchDialog", "default_out_dir"]

_DEFAULT_SIZE = 20.0


def default_out_dir(label: str) -> Path:
    """``batches/<catalogue label>`` in the dialogs' data folder (`data_dir`), with the label made
    safe for a folder name."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label).strip("._") or "catalogue"
    return data_dir() / "batches" / safe_filename(safe)


def _batch_and_prepare(targets, *, out_dir, linked, **kwargs):
    """Worker step: run the batch, then read every finished target's mosaics into Glue Data and
    link them (`~glue_mvmcut.glue.loader.prepare_batch`); the GUI thread only adds them."""
    manifest = cutout_batch(targets, out_dir=out_dir, **kwargs)
    return manifest, prepare_batch(manifest, out_dir, linked=linked)


class BatchDialog(WorkerDialog):
    """Cut the same box around every row of a catalogue layer and load the mosaics.

    Parameters
    ----------
    app : Glue application
    layer : `~glue.core.Data` or `~glue.core.Subset`
        A table with RA/Dec columns, or a subset of one (e.g. sources picked in a scatter plot).
    """

    cancelled_message = "Cancelled. Finished targets are kept; Start again to do the rest."

    def __init__(self, app, layer, parent=None):
        super().__init__(app, parent)
        self.setWindowTitle("MVM cutouts for these rows")
        self.layer = layer
        self.filters = QtWidgets.QLineEdit()
        self.filters.setPlaceholderText("all filters, or e.g. f814w, f160w")
        self.out_dir = QtWidgets.QLineEdit(str(default_out_dir(layer.label)))
        self.start_button = QtWidgets.QPushButton("Cut and load")
        self.loaded = []

        form = QtWidgets.QFormLayout()
        self.width_box, self.height_box = add_box_row(form, _DEFAULT_SIZE, _DEFAULT_SIZE)
        form.addRow("Filters", self.filters)
        self.combiner = add_combiner_row(form)
        form.addRow("Output folder", self.out_dir)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addStretch()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addLayout(buttons)
        self.resize(560, 240)
        self.start_button.clicked.connect(self.start)

        try:
            self.targets = targets_from_layer(layer)
        except ValueError as exc:
            self.targets = None
            self.finish(str(exc), error=True)
            return
        self.status.setText(
            f"{len(self.targets)} targets from {layer.label}. Choose a box, then Cut and load."
        )

    def set_busy(self, busy: bool) -> None:
        self.start_button.setEnabled(not busy and self.targets is not None)

    def start(self) -> None:
        """Run the batch (resuming any earlier run into the same folder) off the GUI thread."""
        filters = [f.strip() for f in self.filters.text().replace(";", ",").split(",") if f.strip()]
        self.run(
            _batch_and_prepare,
            self._load,
            f"Cutting around {len(self.targets)} targets…",
            self.targets,
            out_dir=self.out_dir.text().strip(),
            linked=linked_so_far(self.app.data_collection),  # read here: Glue's state is the GUI's
            size=self.width_box.value(),
            size_y=self.height_box.value(),
            filters=filters or None,
            combine=self.combiner.currentData(),
            cancellable=True,
        )

    def _load(self, done) -> None:
        manifest, prepared = done
        self.loaded = add_prepared(self.app, prepared)  # no viewers: a catalogue has many targets
        counts = {s: int((manifest["status"] == s).sum()) for s in STATUSES}
        message = (
            f"Loaded {len(self.loaded)} mosaics of {counts['done']} targets, linked by WCS; "
            f"{counts['no data']} without MVM data"
        )
        if counts["failed"]:
            first = manifest[manifest["status"] == "failed"][0]
            message += f"; {counts['failed']} failed (first: {first['id']}: {first['error']})"
        self.finish(message + f". Manifest: {Path(self.out_dir.text().strip()) / 'manifest.ecsv'}")
