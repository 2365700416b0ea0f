"""What the tests of ranged reads compare: a cutout's bytes, ranged against local."""

import io

from glue_mvmcut.core.cutout import cut_layer
from glue_mvmcut.core.transport import TransferStats

#: The Range of a layer's first read on a first contact: its headers (128 KB) and one byte as
#: far beyond, which asks how the server answers several ranges.
FIRST_CONTACT = "bytes=0-131071,262144-262144"


def hdul_bytes(hdul) -> bytes:
    """The bytes ``hdul`` writes as a FITS file."""
    buffer = io.BytesIO()
    hdul.writeto(buffer)
    return buffer.getvalue()


def same_as_local(archive_dir, name, coord, size, **kwargs) -> TransferStats:
    """Cut layer ``name`` from the archive in range (``kwargs`` for `cut_layer`), check it is
    byte for byte the same cut from the local file in ``archive_dir``, and return what it cost."""
    stats = kwargs.pop("stats", None) or TransferStats()
    remote = cut_layer(f"mast:HST/product/{name}", coord, size, stats=stats, **kwargs)
    assert hdul_bytes(remote) == hdul_bytes(cut_layer(archive_dir / name, coord, size))
    return stats
