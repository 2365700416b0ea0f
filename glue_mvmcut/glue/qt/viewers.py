"""Viewers for a load in the Qt Glue application: one image viewer per mosaic, in a tab of their
own named by the target and box, tiled inside the canvas."""

import gc
import importlib
import weakref
from collections import OrderedDict

import astropy.units as u
from echo import delay_callback
from glue_qt.viewers.image import ImageViewer
from qtpy import QtCore
from qtpy.shiboken import isValid  # PySide6's

from ..viewers import style_image_viewer

__all__ = ["open_viewers", "warm_up", "pace_draws", "collector", "reuse_colormap_pixmaps"]

#: What Glue imports when it makes its first image viewer (~0.45 s on the GUI thread: WCSAxes,
#: and pytest, which WCSAxes imports where it is installed).
_VIEWER_MODULES = ("astropy.visualization.wcsaxes",)


def warm_up() -> None:
    """Import what the first image viewer needs; call it on the worker that prepares a load, so
    that the GUI thread does not wait for the imports."""
    for name in _VIEWER_MODULES:
        importlib.import_module(name)


class _DrawPacer:
    """The GUI thread's work for viewers done one piece per turn of Qt's event loop: a canvas's
    draw, or a step handed to `later`; canvases draw only when they can be seen.

    Matplotlib's Qt canvas draws when asked (`draw_idle`) in a turn of its own, but every canvas
    asked in one turn draws in the next, and a window's paint draws every pending canvas in one
    pass: a load's five viewers (~50-100 ms each) drew together, 0.4-1.3 s of a frozen window;
    and a load's own steps, on a timer of their own, fell in the same turns as draws. Here both
    join one queue, and a timer takes the first piece per turn; paint events show what a canvas
    last drew meanwhile. A hidden canvas (a viewer in another tab) keeps its draw pending until
    it is shown: Glue redraws every viewer whose Data gain links, so each load redrew all
    earlier loads' viewers, ~1 s at the fifth. A canvas held (`hold`) keeps its draw pending
    until `release`: a new viewer drew empty when made and when the tab was tiled, then with its
    mosaic, and again once Glue's side panel had widened (~2.7 draws of ~0.1 s per viewer of a
    load, where one is seen).
    """

    def __init__(self, draw):
        self._draw = draw  # Matplotlib's own draw of a pending canvas (`_draw_idle`)
        self._queue: dict = {}  # canvases to draw and steps to run, in order (an ordered set)
        self._drawing = None
        self._waiting: list = []  # (canvases, callback) of `when_drawn`
        self._held = weakref.WeakSet()  # canvases that draw once released
        self._timer = QtCore.QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(1)  # 0 ms would run before the timers that came due meanwhile
        self._timer.timeout.connect(self._next)

    def _add(self, piece) -> None:
        self._queue[piece] = None
        self._wake()

    def _wake(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def ask(self, canvas) -> None:
        """Have ``canvas`` draw in a later turn (or when shown, if hidden)."""
        canvas._draw_pending = True  # Matplotlib's own flag: paint events draw it
        if canvas.isVisible() and canvas not in self._held:
            self._add(canvas)

    def hold(self, canvas) -> None:
        """Keep ``canvas`` from drawing until `release` (a viewer made empty, to be filled)."""
        self._held.add(canvas)

    def release(self, canvas) -> None:
        """Let ``canvas`` draw again, now if its draw is pending."""
        self._held.discard(canvas)
        if canvas._draw_pending:
            self.ask(canvas)

    def later(self, step) -> None:
        """Run ``step()`` in a turn of its own, after the pieces of work asked for before."""
        self._add(step)

    def when_drawn(self, canvases, callback) -> None:
        """Call ``callback()`` in a later turn, once none of ``canvases`` that can be seen waits
        to draw."""
        self._waiting.append((list(canvases), callback))
        self._wake()

    def idle(self) -> bool:
        """Whether no piece of work waits (hidden canvases aside)."""
        return not self._queue and not self._waiting

    def paint(self, canvas) -> None:
        """What a paint event of ``canvas`` draws: nothing but the canvas whose turn it is."""
        if canvas is self._drawing:
            self._draw(canvas)
        elif canvas._draw_pending:
            self.ask(canvas)

    def _next(self) -> None:
        try:
            self._take_first()
        finally:  # a piece that failed stops nothing after it
            if self._queue:
                self._timer.start()
            waiting, self._waiting = self._waiting, []
            for canvases, callback in waiting:
                if any(isValid(c) and c._draw_pending and c.isVisible() for c in canvases):
                    self._waiting.append((canvases, callback))
                else:
                    callback()

    def _take_first(self) -> None:
        """Run the first step, or draw the first canvas that waits to and can be seen."""
        while self._queue:
            piece = next(iter(self._queue))
            del self._queue[piece]
            if callable(piece):
                piece()
                return
            if isValid(piece) and piece._draw_pending and piece.isVisible() and piece not in self._held:
                self._drawing = piece
                try:
                    self._draw(piece)
                finally:
                    self._drawing = None
                return


class _CollectorInTurns:
    """Python's cyclic garbage collector run on the GUI thread, in turns of its own, while held
    (`hold`): while workers run, and while a load's viewers are made, filled and drawn.

    Left to itself the collector runs on whichever thread allocates as a threshold is crossed:
    during a load, mostly the worker's or the I/O loop's; a Qt object it frees there (a viewer
    the user closed, a dialog) is destroyed off the GUI thread, which Qt does not allow (a crash
    or a deadlock, now and then). On the GUI thread it ran inside the piece of work that crossed
    the threshold: a full collection (~50 ms at the fifth load) inside a viewer's making (~60 ms).
    While held, automatic collection is off and a timer has the pacer (`pace_draws`) collect the
    generations whose thresholds are crossed as a piece of work of its own, as pyqtgraph's
    ``GarbageCollector`` collects on a timer (Glue has none, and pyqtgraph is not ours to depend
    on). A process that had turned the collector off keeps it off.
    """

    def __init__(self):
        self._holds = 0
        self._enabled = False  # whether the collector was on before the first hold
        self._timer = QtCore.QTimer()  # made on the GUI thread: its timeouts run there
        self._timer.setInterval(100)
        self._timer.timeout.connect(lambda: pace_draws().later(self.collect))

    def hold(self) -> None:
        """Work that must not be interrupted by the collector starts."""
        if not self._holds:
            self._enabled = gc.isenabled()
            if self._enabled:
                gc.disable()
                self._timer.start()
        self._holds += 1

    def release(self) -> None:
        """Work that `hold` announced ended."""
        self._holds -= 1
        if not self._holds and self._enabled:
            self._timer.stop()
            gc.enable()

    @staticmethod
    def collect() -> None:
        """Collect the oldest generation whose threshold is crossed, as the collector would."""
        counts, thresholds = gc.get_count(), gc.get_threshold()
        for generation in (2, 1, 0):
            if thresholds[generation] and counts[generation] > thresholds[generation]:
                gc.collect(generation)
                return


_collector: _CollectorInTurns | None = None


def collector() -> _CollectorInTurns:
    """The GUI thread's garbage collector (`_CollectorInTurns`; made on first use, on the GUI
    thread)."""
    global _collector
    if _collector is None:
        _collector = _CollectorInTurns()
    return _collector


def pace_draws() -> _DrawPacer:
    """Have Glue's image and plot canvases draw one per turn of Qt's event loop, and only when
    they can be seen (`_DrawPacer`), and once after a resize (mpl-scatter-density, which Glue's
    image layers use, drew them a second time, at once). Idempotent; returns the pacer."""
    from glue.viewers.image.frb_artist import FRBArtist
    from glue_qt.viewers.matplotlib.widget import MplCanvas

    if isinstance(getattr(MplCanvas, "pacer", None), _DrawPacer):
        return MplCanvas.pacer
    MplCanvas.pacer = pacer = _DrawPacer(MplCanvas._draw_idle)

    def draw_idle(canvas):
        pacer.ask(canvas)

    def _draw_idle(canvas):  # what Matplotlib's paint event calls first
        pacer.paint(canvas)

    MplCanvas.draw_idle, MplCanvas._draw_idle = draw_idle, _draw_idle

    def _resize_start(self, event=None):
        # mpl-scatter-density's shows the old image stretched while a canvas is resized and
        # draws the canvas at once (`canvas.draw()`) 500 ms after the last resize, with the image
        # made anew: Glue re-tiles a tab's viewers when its layout shifts by a pixel after a
        # load, so all of them drew again in one turn half a second later, beside whatever ran
        # then (the next search: 0.3-0.5 s each). Here a resize draws once, in its turn, with
        # the image made for the new size.
        pass

    FRBArtist._resize_start = _resize_start
    return pacer


#: Colormap pixmaps kept by `reuse_colormap_pixmaps` (~12 kB each).
_KEPT_PIXMAPS = 256


def reuse_colormap_pixmaps() -> None:
    """Have glue-qt's colormap menus reuse the pixmap of a colormap painted at a size
    (idempotent), the last 256 used.

    Each image layer's style editor has a menu of Glue's colormaps, and glue-qt paints each one
    pixel by pixel (``glue_qt.utils.colors.cmap2pixmap``: 200 ``setPixel`` calls and colour
    conversions in Python) when the menu is made and again when it is resized: ~60 ms of each
    mosaic shown, painting the same pixmaps every time.
    """
    from glue_qt.utils import colors

    if getattr(colors.cmap2pixmap, "reused", False):
        return
    paint, kept = colors.cmap2pixmap, OrderedDict()

    def cmap2pixmap(cmap, steps=50, size=(100, 100)):
        key = (id(cmap), steps, tuple(size))  # (the colormap is kept too: its id stays its own)
        if key in kept:
            kept.move_to_end(key)
        else:
            kept[key] = (cmap, paint(cmap, steps=steps, size=size))
            if len(kept) > _KEPT_PIXMAPS:
                kept.popitem(last=False)
        return kept[key][1]

    cmap2pixmap.reused = True
    colors.cmap2pixmap = cmap2pixmap


def _tab_for(app, title: str):
    """The tab a load's viewers go to: the current one if it holds no viewer yet, else a new
    one; named ``title`` if there is one."""
    if app.current_tab.subWindowList():
        app.new_tab()
    if title:
        app.tab_bar.setTabText(app.tab_widget.currentIndex(), title)
    return app.current_tab


#: Hour-angle tick labels' separators: the font's own modifier letters (DejaVu Sans has them),
#: where WCSAxes writes Matplotlib mathtext (``$\mathregular{^h}$``), which Matplotlib parses
#: (pyparsing, ~10 ms) for each label it has not met: every box's right ascensions are new, and
#: parsing took a third of a viewer's draw. They look the same.
_HOUR_SEPARATORS = ("ʰ", "ᵐ", "ˢ")


def _plain_hour_labels(axes) -> None:
    """Have the WCS ``axes`` of an image viewer label hour angles with ``_HOUR_SEPARATORS``, also
    after Glue resets its WCS (a new reference Data)."""

    def separate():
        for coord in getattr(axes, "coords", ()):
            if coord.coord_type == "longitude" and coord.get_format_unit() == u.hourangle:
                coord.set_separator(_HOUR_SEPARATORS)

    reset_wcs = axes.reset_wcs

    def reset_then_separate(*args, **kwargs):
        reset_wcs(*args, **kwargs)
        separate()

    axes.reset_wcs = reset_then_separate
    separate()


def _show(viewer, data, title: str) -> None:
    """Show ``data`` in the empty image ``viewer``, styled.

    Glue resets the WCS axes up to four times while it adds a viewer's first layer, and WCSAxes
    recomputes every tick whenever an axis label is set: 15 times, ~190 ms. With the label
    callbacks delayed, they run once each (~60 ms in all).
    """
    _plain_hour_labels(viewer.axes)
    with delay_callback(viewer.state, "x_axislabel", "y_axislabel"):
        viewer.add_data(data)
    style_image_viewer(viewer, data, title)


def open_viewers(app, prepared, done=None) -> list:
    """One image viewer per mosaic of a `~glue_mvmcut.glue.loader.Prepared` load (the cutouts
    stay in the data collection, ready to add as layers), styled by
    `~glue_mvmcut.glue.viewers.style_image_viewer`, tiled in a tab named by the load's target
    and box. Returns the list of viewers.

    Given ``done``, the work is spread over turns of Qt's event loop, one piece per turn
    (`pace_draws`), so the window answers between them: each viewer is made in a turn and
    placed in the tab in the next, the tab tiled, then each shows its mosaic (~40 ms), and
    once all are filled and tiled anew each draws in a turn of its own, once (until then they
    are held: `_DrawPacer.hold`); ``done(viewers)`` is called once the viewers that can be seen
    have drawn. Meanwhile Python's garbage collector runs in turns of its own (`collector`).
    Without ``done``, all is done before this returns but the drawing.
    """
    pacer = pace_draws()
    viewers = []
    mosaics = prepared.mosaics
    tab = _tab_for(app, prepared.title) if mosaics else None

    # Glue's ``app.new_data_viewer(ImageViewer)`` in two turns: make the viewer (~35 ms), then
    # register it, add it to the tab and show it (a few ms, and Qt lays out and paints the tab
    # after it); in one turn, ~50 ms of Python and ~20 ms of Qt.
    def make():
        viewers.append(ImageViewer(app.session))
        pacer.hold(viewers[-1].axes.figure.canvas)  # drawn once filled and tiled (`release`)

    def place(index):
        def step():
            viewer = viewers[index]
            viewer.register_to_hub(app.session.hub)
            app.tab_widget.setCurrentWidget(tab)  # the user may have switched tabs meanwhile
            app.add_widget(viewer)
            viewer.show()
            if index == len(mosaics) - 1:
                tab.tileSubWindows()

        return step

    def show(data, index):
        return lambda: _show(viewers[index], data, prepared.title)

    def release():
        # Filling the viewer in focus widens Glue's side panel a little (its options list the
        # Data), which narrows the tab: tiled again before the viewers draw, each once (they
        # drew again at the size of the new tiling).
        tab.tileSubWindows()
        for viewer in viewers:
            pacer.release(viewer.axes.figure.canvas)

    steps = [step for index in range(len(mosaics)) for step in (make, place(index))]
    steps += [show(data, index) for index, data in enumerate(mosaics)]
    steps += [release] if mosaics else []
    if done is None:
        for step in steps:
            step()
        return viewers

    def end():
        collector().release()
        done(viewers)

    def when_drawn():  # a load ends when it can be seen
        pacer.when_drawn([v.axes.figure.canvas for v in viewers], end)

    collector().hold()  # collections between the steps and draws, not inside them
    pacer.later(_InTurns(pacer, [*steps, when_drawn]))  # after the turn that added the Data
    return viewers


class _InTurns:
    """Steps run one per turn by a `_DrawPacer`, each after the draws the one before asked for.

    An object, not a function that hands itself to the pacer again: such a function refers to
    itself, a reference cycle that kept all a load's steps hold (its cutouts' headers, ~18000
    cards) until Python's next full garbage collection, which then took ~0.1 s at the fifth
    load, on the GUI thread.
    """

    def __init__(self, pacer: _DrawPacer, steps: list):
        self._pacer = pacer
        self._steps = steps

    def __call__(self) -> None:
        step = self._steps.pop(0)
        try:
            step()
        finally:  # a step that failed stops nothing after it
            if self._steps:
                self._pacer.later(self)
