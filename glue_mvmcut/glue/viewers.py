"""Image viewers for a load, Qt-free: the look every mosaic's viewer gets, and the viewers of
glue-jupyter's application (``glue_jupyter.jglue()``), shown below the notebook cell."""

__all__ = ["style_image_viewer", "open_jupyter_viewers"]


def style_image_viewer(viewer, data, title: str = "") -> None:
    """Show ``data``'s SCI in ``viewer`` with an arcsinh stretch over the 99.5% interval, which
    suits HST imaging; title it with the band and the load's ``title`` (target and box)."""
    viewer.state.title = f"{data.label} · {title}" if title else data.label
    layer = viewer.state.layers[0]
    layer.attribute = data.id["SCI"]
    layer.stretch = "arcsinh"
    layer.percentile = 99.5


def open_jupyter_viewers(app, prepared, show: bool = True) -> list:
    """One bqplot image viewer per mosaic of a `~glue_mvmcut.glue.loader.Prepared` load in a
    glue-jupyter application, styled by `style_image_viewer`, shown in the notebook unless
    ``show`` is false. Returns the viewers."""
    viewers = []
    for data in prepared.mosaics:
        viewer = app.imshow(data=data, show=show)
        style_image_viewer(viewer, data, prepared.title)
        viewers.append(viewer)
    return viewers
