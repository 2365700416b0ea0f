"""glue-mvmcut: Hubble Multi-visit Mosaic cutouts and mosaics from MAST, for Python, the shell and Glue.

``import glue_mvmcut`` imports nothing but the standard library and writes no files: every name
below (the configuration, the errors, the pipeline functions, the skycell tessellation) is
imported on first use, so that registering the Glue plugin and starting the ``mvmcut`` command
stay quick, and ``mvmcut`` can take Ctrl-C from its first instant. Messages go to the
``glue_mvmcut`` logger (`log`), which prints them as astropy's and astroquery's do (astropy's
handler, at astropy's ``log_level``)."""

import importlib

try:
    from ._version import __version__
except ImportError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

_LAZY = {
    "log": "core",
    "conf": "core.config",
    **dict.fromkeys(
        (
            "MVMCutError",
            "InvalidCoordinateError",
            "InvalidSizeError",
            "InvalidNameError",
            "ArchiveError",
            "UnsafeNameError",
            "UnsafePathError",
            "NotMVMFileError",
            "CompressedLayerError",
            "OutsideFootprintError",
            "OutputFolderError",
            "Cancelled",
            "InvalidTargetsError",
            "NoMVMDataWarning",
        ),
        "core.errors",
    ),
    "cutout_mosaic": "core.pipeline",
    "CutoutResult": "core.pipeline",
    "cutout_batch": "core.batch",
    "read_targets": "core.targets",
    "query_layers": "core.mast",
    "cut_layer": "core.cutout",
    "combine_cutouts": "core.combine",
    "check_server": "core.probe",
    "SkyCell": "core.skycells",
    "ProjectionCell": "core.skycells",
    "skycells_covering": "core.skycells",
    "mvm_id_filenames": "hapcut",
    "mvm_retrieve_files": "hapcut",
    "make_the_cut": "hapcut",
    "mvm_combine": "hapcut",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
