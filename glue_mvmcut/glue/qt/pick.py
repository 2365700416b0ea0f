"""An image-viewer tool: drag a box (or click) on any image with a celestial WCS, and the MVM
cutout dialog opens with that centre and size filled in."""

from glue.viewers.matplotlib.toolbar_mode import RectangleMode

from ..loader import box_from_pixels

__all__ = ["MVMPickTool"]


class MVMPickTool(RectangleMode):
    """Pick the box for MVM cutouts in a viewer that is already open."""

    icon = "glue_square"
    tool_id = "mvmcut:pick"
    action_text = "MVM cutouts of a box"
    tool_tip = "Drag a box (or click) on an image with a celestial WCS to get HST MVM cutouts of it"
    status_tip = "DRAG a box, or CLICK for a 20 arcsec box, to open the MVM cutout dialog"
    shortcut = None  # the inherited 'R' belongs to glue's own rectangle selection

    def __init__(self, viewer, **kwargs):
        super().__init__(viewer, roi_callback=self._picked, **kwargs)
        self.dialog = None

    def release(self, event) -> None:
        # glue's RectangleMode ignores a click without a drag; here a click picks a default box.
        clicked = not self._drag and self._start_event is not None and event.inaxes is self._axes
        super().release(event)
        if clicked and event.xdata is not None:
            self._open(event.xdata, event.xdata, event.ydata, event.ydata)

    def _picked(self, mode) -> None:
        roi = self.roi()
        self._open(roi.xmin, roi.xmax, roi.ymin, roi.ymax)

    def _open(self, xmin: float, xmax: float, ymin: float, ymax: float) -> None:
        from .dialog import show_dialog  # the dialog and viewers load only when asked for

        reference = self.viewer.state.reference_data
        coords = getattr(reference, "coords", None)
        if coords is None or not getattr(coords, "has_celestial", False):
            self.viewer.statusBar().showMessage(
                f"{getattr(reference, 'label', 'This image')} has no celestial WCS: pick on a sky image.",
                8000,
            )
            return
        # The ROI is in pixel coordinates of the reference data (x = last numpy axis).
        ra, dec, width, height = box_from_pixels(coords.celestial, xmin, xmax, ymin, ymax)
        self.dialog = show_dialog(self.viewer.session.application, ra=ra, dec=dec, width=width, height=height)
