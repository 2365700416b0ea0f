"""Viewers for a load in the Qt Glue application: one image viewer per mosaic, in a tab of their
own named by the target and box, tiled inside the canvas."""

import importlib

from echo import delay_callback
from glue_qt.viewers.image import ImageViewer
from qtpy import QtCore

from ..viewers import style_image_viewer

__all__ = ["open_viewers", "warm_up", "defer_hidden_draws"]

#: What Glue imports when it makes its first image viewer (~0.45 s on the GUI thread: WCSAxes,
#: and pytest, which WCSAxes imports where it is installed).
_VIEWER_MODULES = ("astropy.visualization.wcsaxes",)


def warm_up() -> None:
    """Import what the first image viewer needs; call it on the worker that prepares a load, so
    that the GUI thread does not wait for the imports."""
    for name in _VIEWER_MODULES:
        importlib.import_module(name)


def defer_hidden_draws() -> None:
    """Have Glue's image and plot canvases draw only when they can be seen: one that is hidden (a
    viewer in another tab) keeps its draw pending, and Matplotlib's paint event does it when the
    viewer is shown. Idempotent.

    Glue redraws every viewer whose Data gain links, seen or not: each load links the earlier
    loads' Data to its own, so the n-th load redrew the 5·(n-1) viewers of the other tabs in one
    turn of the event loop (~50 ms each; 1 s of the GUI thread at the fifth load).
    """
    from glue_qt.viewers.matplotlib.widget import MplCanvas

    if getattr(MplCanvas.draw_idle, "defers_hidden", False):
        return
    draw_when_seen = MplCanvas.draw_idle

    def draw_idle(self):
        if self.isVisible():
            draw_when_seen(self)
        else:
            self._draw_pending = True  # what paintEvent draws (Matplotlib's own flag)

    draw_idle.defers_hidden = True
    MplCanvas.draw_idle = draw_idle


def _tab_for(app, title: str):
    """The tab a load's viewers go to: the current one if it holds no viewer yet, else a new
    one; named ``title`` if there is one."""
    if app.current_tab.subWindowList():
        app.new_tab()
    if title:
        app.tab_bar.setTabText(app.tab_widget.currentIndex(), title)
    return app.current_tab


def _show(viewer, data, title: str) -> None:
    """Show ``data`` in the empty image ``viewer``, styled.

    Glue resets the WCS axes up to four times while it adds a viewer's first layer, and WCSAxes
    recomputes every tick whenever an axis label is set: 15 times, ~190 ms. With the label
    callbacks delayed, they run once each (~60 ms in all).
    """
    with delay_callback(viewer.state, "x_axislabel", "y_axislabel"):
        viewer.add_data(data)
    style_image_viewer(viewer, data, title)


def open_viewers(app, prepared, done=None) -> list:
    """One image viewer per mosaic of a `~glue_mvmcut.glue.loader.Prepared` load (the cutouts
    stay in the data collection, ready to add as layers), styled by
    `~glue_mvmcut.glue.viewers.style_image_viewer`, tiled in a tab named by the load's target
    and box. Returns the list of viewers.

    Given ``done``, the work is spread over turns of Qt's event loop, so the window answers
    between them: the viewers are made one per turn (~60-100 ms each) and tiled, then each shows
    its mosaic in a turn of its own (~60 ms) and draws in a later one; ``done(viewers)`` is
    called after the last. Without it, all is done before this returns.
    """
    defer_hidden_draws()
    viewers = []
    mosaics = prepared.mosaics
    tab = _tab_for(app, prepared.title) if mosaics else None

    def make():
        app.tab_widget.setCurrentWidget(tab)  # the user may have switched tabs meanwhile
        viewers.append(app.new_data_viewer(ImageViewer))
        if len(viewers) == len(mosaics):  # tiled once: each tiling redraws every viewer
            tab.tileSubWindows()

    def show(data, index):
        return lambda: _show(viewers[index], data, prepared.title)

    steps = [make] * len(mosaics) + [show(data, index) for index, data in enumerate(mosaics)]
    if done is None:
        for step in steps:
            step()
        return viewers

    def next_step():
        if steps:
            steps.pop(0)()
            QtCore.QTimer.singleShot(10, next_step)  # 0 ms would starve timers and painting
        else:
            done(viewers)

    QtCore.QTimer.singleShot(10, next_step)  # after the turn that added the Data
    return viewers
