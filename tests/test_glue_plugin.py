"""The Glue plugin is registered through the glue.plugins entry point and loads in Glue."""

from importlib.metadata import entry_points

import pytest


def test_entry_point_is_declared():
    (plugin,) = [ep for ep in entry_points(group="glue.plugins") if ep.name == "glue_mvmcut"]
    assert plugin.value == "glue_mvmcut.glue:setup"
    assert callable(plugin.load())


def test_glue_application_loads_the_plugin(qtbot):
    pytest.importorskip("glue_qt")
    import glue.main
    from glue_qt.app import GlueApplication

    app = GlueApplication()
    try:
        assert "glue_mvmcut.glue" in glue.main._loaded_plugins
    finally:
        app.close()
