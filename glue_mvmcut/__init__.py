"""glue-mvmcut: Hubble Multi-visit Mosaic cutouts and mosaics from MAST, for Python, the shell and Glue.

``import glue_mvmcut`` loads the GUI-free core only: no glue, no Qt, no tqdm, no files written,
no logging configured.
"""

from .core.config import conf
from .core.errors import (
    ArchiveError,
    InvalidCoordinateError,
    InvalidNameError,
    InvalidSizeError,
    MVMCutError,
    NoMVMDataWarning,
)
from .core.skycells import ProjectionCell, SkyCell, skycells_covering

try:
    from ._version import __version__
except ImportError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "__version__",
    "conf",
    "MVMCutError",
    "InvalidCoordinateError",
    "InvalidSizeError",
    "InvalidNameError",
    "ArchiveError",
    "NoMVMDataWarning",
    "SkyCell",
    "ProjectionCell",
    "skycells_covering",
]
