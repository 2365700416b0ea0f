"""Exceptions and warnings raised by glue-mvmcut."""

from astropy.utils.exceptions import AstropyUserWarning

__all__ = [
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
]


class MVMCutError(Exception):
    """Base class of every error glue-mvmcut raises on purpose."""


class InvalidCoordinateError(MVMCutError, ValueError):
    """A sky position that cannot be used (off the sky, not a number, unparsable)."""


class InvalidSizeError(MVMCutError, ValueError):
    """A cutout size that is negative, zero, not finite, of the wrong unit or absurdly large."""


class InvalidNameError(MVMCutError, ValueError):
    """A skycell, projection cell or product name that does not follow the MVM grammar."""


class ArchiveError(MVMCutError):
    """The archive (MAST or a stand-in) failed or answered something unusable."""


class UnsafeNameError(ArchiveError, ValueError):
    """A product name from the archive that could write outside the output or cache folder."""


class UnsafePathError(MVMCutError, OSError):
    """A path where a file was to be written or read that is a link or not a regular file
    (someone else may have planted it there)."""


class NotMVMFileError(MVMCutError, ValueError):
    """A file that is not a readable MVM layer, cutout or mosaic (wrong name, missing SCI/WHT,
    no celestial WCS, truncated or corrupt)."""


class CompressedLayerError(ArchiveError):
    """A layer whose SCI or WHT is tile-compressed: ranged reads cannot cut it; a whole-file
    download can (astropy decompresses only the tiles a cutout needs)."""


class OutsideFootprintError(MVMCutError, ValueError):
    """A cutout box that lies wholly outside a layer."""


class OutputFolderError(MVMCutError, OSError):
    """An output folder that cannot be made or written to."""


class Cancelled(MVMCutError):
    """The caller's cancel flag stopped the work; nothing half-written was left behind."""


class InvalidTargetsError(MVMCutError, ValueError):
    """A target table that cannot be used as a whole (unreadable, no position columns, duplicate ids)."""


class NoMVMDataWarning(AstropyUserWarning):
    """No MVM layer covers the requested box (an astropy warning, as astroquery's
    ``NoResultsWarning`` is)."""
