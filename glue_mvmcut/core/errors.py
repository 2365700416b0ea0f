"""Exceptions and warnings raised by glue-mvmcut."""

__all__ = [
    "MVMCutError",
    "InvalidCoordinateError",
    "InvalidSizeError",
    "InvalidNameError",
    "ArchiveError",
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


class NoMVMDataWarning(UserWarning):
    """No MVM layer covers the requested box."""
