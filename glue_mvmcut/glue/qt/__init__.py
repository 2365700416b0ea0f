"""The Qt side of the Glue plugin: the "MVM cutouts from MAST…" menu action and its dialog, the
"MVM cutouts for these rows…" layer action for catalogues, and the viewer tool."""

MENU_LABEL = "MVM cutouts from MAST…"
BATCH_LABEL = "MVM cutouts for these rows…"

__all__ = [
    "MENU_LABEL",
    "BATCH_LABEL",
    "open_dialog",
    "import_dialog",
    "open_batch_dialog",
    "open_in_glue",
    "register",
]


def _glue_application(data_collection=None):
    """The running Glue application (callbacks that get only a data collection need it): the one
    holding ``data_collection`` if given, else the one shown (a process may hold closed ones)."""
    from glue_qt.app import GlueApplication
    from qtpy import QtWidgets

    apps = [w for w in QtWidgets.QApplication.topLevelWidgets() if isinstance(w, GlueApplication)]
    if data_collection is not None:
        return next(app for app in apps if app.data_collection is data_collection)
    return next((app for app in apps if app.isVisible()), apps[-1])


def open_dialog(session, data_collection=None, **values):
    """Open the dialog for the Glue application of ``session`` (the menu action).

    ``values`` (ra, dec, width, height) pre-fill it, e.g. from a box drawn in a viewer.
    """
    from .dialog import show_dialog  # the dialog and viewers load only when asked for

    return show_dialog(session.application, **values)


def import_dialog() -> list:
    """File → Import data entry: the dialog, modal, on the running Glue application.

    The dialog adds and links what it loads itself (Glue's importer route would add the Data
    again and open its autolinking dialog), so this returns an empty list.
    """
    from .dialog import MVMCutDialog

    app = _glue_application()
    MVMCutDialog(app, parent=app).exec_()
    return []


def open_batch_dialog(layer, data_collection=None):
    """Layer action on a catalogue Data or subset: the batch dialog for its rows."""
    from .batch import BatchDialog

    app = _glue_application(data_collection)
    dialog = BatchDialog(app, layer, parent=app)
    dialog.show()
    return dialog


def open_in_glue(paths, title: str = ""):
    """A Glue application with the MVM files ``paths`` loaded, linked by WCS, one viewer per
    mosaic in a tab named ``title`` (e.g. "LMC · 20″"), tiled, shown; call its ``start()`` to
    hand control to the user."""
    from glue_qt.app import GlueApplication

    from ..links import wcs_links
    from ..loader import Prepared, add_prepared, read_mvm
    from .viewers import open_viewers

    data = [read_mvm(path) for path in paths]
    prepared = Prepared(data, wcs_links(data), title)
    app = GlueApplication()
    add_prepared(app, prepared)
    open_viewers(app, prepared)
    app.show()
    return app


def register() -> None:
    """Add the menu action under Plugins and File → Import data, the layer action for catalogues,
    and the pick tool to image viewers made from now on; have Glue's canvases draw one per turn
    of the event loop, hidden ones when shown (`~.viewers.pace_draws`), its data collection tree
    react once per turn to what is added (`~.collection.tree_reacts_once_per_turn`) and its
    colormap menus reuse their pixmaps (`~.viewers.reuse_colormap_pixmaps`) (once)."""
    from glue.config import importer, viewer_tool
    from glue_qt.config import layer_action, menubar_plugin
    from glue_qt.viewers.image import ImageViewer

    from .collection import tree_reacts_once_per_turn
    from .pick import MVMPickTool
    from .viewers import pace_draws, reuse_colormap_pixmaps

    pace_draws()
    tree_reacts_once_per_turn()
    reuse_colormap_pixmaps()

    if not any(label == MENU_LABEL for label, _ in menubar_plugin.members):
        menubar_plugin(MENU_LABEL)(open_dialog)
    if not any(label == MENU_LABEL for label, _ in importer.members):
        importer(MENU_LABEL)(import_dialog)
    if not any(item.label == BATCH_LABEL for item in layer_action.members):
        layer_action(
            BATCH_LABEL,
            tooltip="Cut the same box out of the MVM layers around every selected row (RA/Dec columns)",
            single=True,
            data=True,
            subset=True,
        )(open_batch_dialog)
    if MVMPickTool.tool_id not in viewer_tool.members:
        viewer_tool(MVMPickTool)
    if MVMPickTool.tool_id not in ImageViewer.tools:
        ImageViewer.tools = [*ImageViewer.tools, MVMPickTool.tool_id]
