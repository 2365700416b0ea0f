"""glue-mvmcut: Hubble Multi-visit Mosaic cutouts and mosaics from MAST, for Python, the shell and Glue.

``import glue_mvmcut`` loads the GUI-free core only: no glue, no Qt, no tqdm, no files written.
The pipeline functions and the skycell tessellation (which need astroquery, reproject,
astropy's coordinates and tables) are imported on first use, so that registering the Glue plugin
and starting the ``mvmcut`` command stay quick. Messages go to the ``glue_mvmcut`` logger (`log`), which
prints them as astropy's and astroquery's do (astropy's handler, at astropy's ``log_level``).
"""

import importlib
import logging

from astropy.logger import StreamHandler
from astropy.logger import conf as _astropy_log_conf

from .core.config import conf
from .core.errors import (
    ArchiveError,
    Cancelled,
    CompressedLayerError,
    InvalidCoordinateError,
    InvalidNameError,
    InvalidSizeError,
    InvalidTargetsError,
    MVMCutError,
    NoMVMDataWarning,
    NotMVMFileError,
    OutputFolderError,
    OutsideFootprintError,
    UnsafeNameError,
    UnsafePathError,
)


def _init_log() -> logging.Logger:
    """The package's logger, printing through astropy's handler (as astroquery's does); its
    modules' loggers (``glue_mvmcut.core.mast``, ...) pass their records to it."""
    logger = logging.getLogger(__name__)
    if not any(isinstance(handler, StreamHandler) for handler in logger.handlers):
        handler = StreamHandler()
        handler.addFilter(_with_origin)
        logger.addHandler(handler)
        logger.setLevel(_astropy_log_conf.log_level)
    return logger


def _with_origin(record: logging.LogRecord) -> bool:
    # astropy's handler names where a message comes from with ``origin``, which only its own
    # logger class sets: here, the module's logger name.
    record.origin = getattr(record, "origin", record.name)
    return True


log = _init_log()

try:
    from ._version import __version__
except ImportError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

_LAZY = {
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

__all__ = [
    "__version__",
    "conf",
    "log",
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
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
