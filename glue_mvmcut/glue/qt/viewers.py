"""Viewers for a load in the Qt Glue application: one image viewer per mosaic, in a tab of their
own named by the target and box, tiled inside the canvas."""

from glue_qt.viewers.image import ImageViewer
from qtpy import QtCore

from ..viewers import style_image_viewer

__all__ = ["open_viewers"]


def _tab_for(app, title: str):
    """The tab a load's viewers go to: the current one if it holds no viewer yet, else a new
    one; named ``title`` if there is one."""
    if app.current_tab.subWindowList():
        app.new_tab()
    if title:
        app.tab_bar.setTabText(app.tab_widget.currentIndex(), title)
    return app.current_tab


def _image_viewer(app, data, title: str):
    viewer = app.new_data_viewer(ImageViewer, data=data)
    style_image_viewer(viewer, data, title)
    return viewer


def open_viewers(app, prepared, done=None) -> list:
    """One image viewer per mosaic of a `~glue_mvmcut.glue.loader.Prepared` load (the cutouts
    stay in the data collection, ready to add as layers), styled by
    `~glue_mvmcut.glue.viewers.style_image_viewer`, tiled in a tab named by the load's target
    and box. Returns the list of viewers.

    Glue takes ~0.25 s to make an image viewer. Given ``done``, the viewers are made one per turn
    of Qt's event loop, so the window answers between them, and ``done(viewers)`` is called
    after the last; without it, all are made before this returns.
    """
    viewers = []
    mosaics = prepared.mosaics
    if not mosaics:
        if done:
            done(viewers)
        return viewers
    tab = _tab_for(app, prepared.title)

    def next_viewer():
        app.tab_widget.setCurrentWidget(tab)  # the user may have switched tabs meanwhile
        viewers.append(_image_viewer(app, mosaics[len(viewers)], prepared.title))
        tab.tileSubWindows()
        if len(viewers) < len(mosaics):
            if done:
                QtCore.QTimer.singleShot(10, next_viewer)  # 0 ms would starve timers and painting
            else:
                next_viewer()
        elif done:
            done(viewers)

    next_viewer()
    return viewers
