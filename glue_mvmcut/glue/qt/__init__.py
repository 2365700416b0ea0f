"""The Qt side of the Glue plugin: the "MVM cutouts from MAST…" menu action and its dialog."""

MENU_LABEL = "MVM cutouts from MAST…"

__all__ = ["MENU_LABEL", "open_dialog", "register"]


def open_dialog(session, data_collection=None, **values):
    """Open the dialog for the Glue application of ``session`` (the menu action).

    ``values`` (ra, dec, width, height) pre-fill it, e.g. from a box drawn in a viewer.
    """
    from .dialog import MVMCutDialog  # the dialog and viewers load only when asked for

    app = session.application
    dialog = MVMCutDialog(app, parent=app, **values)
    dialog.show()
    return dialog


def register() -> None:
    """Add the menu action under Plugins (once)."""
    from glue_qt.config import menubar_plugin

    if not any(label == MENU_LABEL for label, _ in menubar_plugin.members):
        menubar_plugin(MENU_LABEL)(open_dialog)
