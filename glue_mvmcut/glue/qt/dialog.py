"""The "MVM cutouts from MAST…" dialog: a target and a box, Search, tick layers, Cut and load.

All network and disk work runs on a worker thread (`WorkerDialog`): progress arrives through a
Qt signal, Cancel sets an event the pipeline checks between units of work, and errors are shown
in the dialog as one readable line.
"""

from pathlib import Path

from qtpy import QtCore, QtWidgets

from ...core.errors import MVMCutError
from ...core.names import LayerName
from .viewers import open_viewers, warm_up
from .worker import WorkerDialog, add_box_row, add_combiner_row, data_dir

__all__ = ["MVMCutDialog", "show_dialog"]

_DEFAULT_SIZE = 20.0
#: Where the dialog keeps what it remembers between uses (QSettings: organisation, application).
SETTINGS = ("glue-mvmcut", "dialog")
#: What "Load" offers: (label, whether cutouts are loaded too).
#: The dialog's choices of products (`~glue_mvmcut.core.pipeline.cutout_mosaic`'s
#: ``products``), written and loaded alike: mosaics in viewers, cutouts in the data collection.
PRODUCT_CHOICES = (
    ("Mosaics in viewers, cutouts in the data collection", "both"),
    ("Mosaics only", "mosaics"),
)


def _home_relative(path: Path) -> str:
    """``path`` with the home folder written ``~``, as people read and type it."""
    try:
        return str(Path("~") / path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def _find_layers(target: str, size):
    """Resolve ``target`` (a position or an object name) and list the MVM layers over the box."""
    from ...core.mast import query_layers, resolve_target

    coord = resolve_target(target)
    return coord, query_layers(coord, size)


def _cut_and_prepare(coord, size, *, products: str, linked, title: str, **kwargs):
    """Worker step: cut, combine and write ``products`` (`~glue_mvmcut.core.pipeline.cutout_mosaic`),
    then build the Glue Data of the same products and their links
    (`~glue_mvmcut.glue.loader.prepare_result`): everything but adding them, which the GUI
    thread does in one batch, and the imports its viewers need (`~.viewers.warm_up`)."""
    from ...core.pipeline import cutout_mosaic
    from ..loader import prepare_result

    result = cutout_mosaic(coord, size, products=products, **kwargs)
    prepared = prepare_result(result, cutouts=products == "both", linked=linked, title=title)
    warm_up()
    return result, prepared


class MVMCutDialog(WorkerDialog):
    """Find the MVM layers over a box, let the user tick them, cut, combine and load them."""

    def __init__(self, app, parent=None, *, ra=None, dec=None, width=_DEFAULT_SIZE, height=_DEFAULT_SIZE):
        super().__init__(app, parent)
        self.setWindowTitle("MVM cutouts from MAST")
        self.target = QtWidgets.QLineEdit()
        self.target.setPlaceholderText("84.9208 -69.1467,  05:39:40.99 -69:08:48.1  or  NGC 1850")
        if ra is not None and dec is not None:
            self.target.setText(f"{ra:.6f} {dec:.6f}")
        self.search_button = QtWidgets.QPushButton("Search")
        self.layers = QtWidgets.QTreeWidget()
        self.layers.setHeaderLabels(["Layer", "Skycell", "Scale", "MB"])
        self.layers.setColumnWidth(0, 220)
        self.cut_button = QtWidgets.QPushButton("Cut and load")
        self.cut_button.setEnabled(False)
        self.status.setText("Enter a position or an object name and a box size, then Search.")
        self._settings = QtCore.QSettings(*SETTINGS)
        self.out_dir = QtWidgets.QLineEdit(
            str(self._settings.value("out_dir", _home_relative(data_dir() / "cutouts")))
        )
        self.out_dir.setToolTip("The cutouts and mosaics are written here (remembered for next time)")
        browse = QtWidgets.QPushButton("Choose…")
        browse.clicked.connect(self._choose_out_dir)
        self.products = QtWidgets.QComboBox()
        self.products.setToolTip("Written to the folder and loaded into Glue alike")
        for label, products in PRODUCT_CHOICES:
            self.products.addItem(label, products)

        form = QtWidgets.QFormLayout()
        form.addRow("Target (RA Dec or name)", self.target)
        self.width_box, self.height_box = add_box_row(form, width, height)
        self.combiner = add_combiner_row(form)
        folder = QtWidgets.QHBoxLayout()
        folder.addWidget(self.out_dir)
        folder.addWidget(browse)
        form.addRow("Write files to", folder)
        form.addRow("Products", self.products)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.search_button)
        buttons.addStretch()
        buttons.addWidget(self.cut_button)
        buttons.addWidget(self.cancel_button)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.layers)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addLayout(buttons)
        self.resize(640, 480)

        self._table = None
        self._coord = None  # the position the listed layers were found for
        self._target_text = ""  # ... as the user typed it, for titles
        self.search_button.clicked.connect(self.search)
        self.cut_button.clicked.connect(self.cut_and_load)
        self.target.textChanged.connect(self._forget_layers)
        self.width_box.valueChanged.connect(self._forget_layers)
        self.height_box.valueChanged.connect(self._forget_layers)
        self.loaded = []

    # -- steps ----------------------------------------------------------------------------------
    def _size(self) -> tuple[float, float]:
        return self.height_box.value(), self.width_box.value()

    def search(self) -> None:
        """Resolve the target and query MAST (off the GUI thread); list the layers, grouped by
        filter, all ticked."""
        target = self.target.text().strip()
        if not target:
            self.show_error(MVMCutError("Enter a position (RA Dec) or an object name first."))
            return
        self._target_text = target
        self.run(_find_layers, self._show_layers, f"Searching MAST for {target}…", target, self._size())

    def cut_and_load(self) -> None:
        """Cut the ticked layers, combine them, write them to the output folder and make Glue Data
        and links of them, all off the GUI thread; then add them to Glue in one batch."""
        from ..links import linked_so_far
        from ..loader import box_title

        ticked = self._ticked()
        chosen = self._table[[name in ticked for name in self._table["productFilename"]]]
        if not len(chosen):
            self.show_error(MVMCutError("Tick at least one layer."))
            return
        out_dir = self.out_dir.text().strip()
        if not out_dir:
            self.show_error(MVMCutError("Choose a folder to write the files to."))
            return
        self._settings.setValue("out_dir", out_dir)
        self.run(
            _cut_and_prepare,
            self._load,
            f"Cutting {len(chosen)} layers…",
            self._coord,
            self._size(),
            layers=chosen,
            combine=self.combiner.currentData(),
            out_dir=Path(out_dir).expanduser(),
            products=self.products.currentData(),
            linked=linked_so_far(self.app.data_collection),  # read here: Glue's state is the GUI's
            title=box_title(self._target_text, self._size()),
            cancellable=True,
        )

    def _choose_out_dir(self) -> None:
        chosen = QtWidgets.QFileDialog.getExistingDirectory(self, "Write files to", self.out_dir.text())
        if chosen:
            self.out_dir.setText(chosen)

    def _forget_layers(self) -> None:
        """The box changed: the listed layers belong to the old one."""
        if self._table is None:
            return
        self._table = self._coord = None
        self.layers.clear()
        self.cut_button.setEnabled(False)
        self.status.setStyleSheet("")
        self.status.setText("The target or box changed: Search again.")

    def set_busy(self, busy: bool) -> None:
        self.search_button.setEnabled(not busy)
        self.cut_button.setEnabled(not busy and self._table is not None and len(self._table) > 0)

    def _show_layers(self, found) -> None:
        self._coord, table = found
        self._table = table
        self.layers.clear()
        groups = {}
        for row in table:
            band = f"{row['instrument'].upper()}/{row['detector'].upper()} {row['filter'].upper()}"
            if band not in groups:
                groups[band] = QtWidgets.QTreeWidgetItem(self.layers, [band])
                groups[band].setFlags(
                    groups[band].flags() | QtCore.Qt.ItemIsAutoTristate | QtCore.Qt.ItemIsUserCheckable
                )
                groups[band].setCheckState(0, QtCore.Qt.Checked)
            name = LayerName.parse(str(row["productFilename"]))
            item = QtWidgets.QTreeWidgetItem(
                groups[band],
                [
                    f"exposure {name.exposure}" if name.exposure else "all exposures",
                    str(row["skycell"]),
                    str(row["scale"]),
                    f"{row['size'] / 1e6:.1f}",
                ],
            )
            item.setData(0, QtCore.Qt.UserRole, name.filename)
            item.setToolTip(0, name.filename)
            item.setFlags(item.flags() | QtCore.Qt.ItemIsUserCheckable)
            item.setCheckState(0, QtCore.Qt.Checked)
        self.layers.expandAll()
        where = self._coord.to_string("decimal", precision=5)
        self.finish(
            f"{len(table)} layers found at {where}. Untick what you do not want, then Cut and load."
            if len(table)
            else f"No MVM layers cover this box at {where}: try a larger box or another target."
        )

    def _ticked(self) -> set[str]:
        """File names of the ticked layers."""
        groups = (self.layers.topLevelItem(i) for i in range(self.layers.topLevelItemCount()))
        return {
            item.data(0, QtCore.Qt.UserRole)
            for group in groups
            for item in (group.child(j) for j in range(group.childCount()))
            if item.checkState(0) == QtCore.Qt.Checked
        }

    def _load(self, done) -> None:
        from ..loader import add_prepared

        result, prepared = done
        # The viewers' tab first (they are made in later turns): the earlier load's viewers are
        # hidden by then, and do not redraw now that their Data gain links to the new ones.
        open_viewers(self.app, prepared, done=lambda _: self._loaded(result, prepared))
        self.loaded = add_prepared(self.app, prepared)

    def _loaded(self, result, prepared) -> None:
        written = result.files()
        folder = Path(self.out_dir.text().strip()).expanduser()
        cutouts = len(self.loaded) - len(prepared.mosaics)
        self.finish(
            f"Wrote {len(written)} files to {folder}. Loaded {len(prepared.mosaics)} mosaics"
            + (f" and {cutouts} cutouts" if cutouts else "")
            + ", linked by WCS."
        )


def show_dialog(app, **values) -> MVMCutDialog:
    """Show the dialog on the Glue application ``app``; ``values`` (ra, dec, width, height)
    pre-fill it, e.g. from a box drawn in a viewer."""
    dialog = MVMCutDialog(app, parent=app, **values)
    dialog.show()
    return dialog
