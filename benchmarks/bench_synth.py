"""Write one synthetic MVM layer of more than 1 GB per array and print time and peak memory.

The layer is streamed in row chunks, so peak memory stays a small fraction of the file size.

    python benchmarks/bench_synth.py [OUTDIR]
"""

import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from glue_mvmcut.core.skycells import SKYCELL_SIDE, SkyCell
from glue_mvmcut.testing.synth import Field, LayerSpec, build_archive

# A 340" disc at the centre of skycell p1889x07y13 (439" half-side; neighbours reach 20" in):
# one layer of ~17000 x 17000 px, 1.1 GiB per array.
_MIDDLE = (SKYCELL_SIDE - 1) / 2
_RA, _DEC = SkyCell.from_name("p1889x07y13").wcs().pixel_to_world_values(_MIDDLE, _MIDDLE)
DEEP = Field(
    "deep",
    float(_RA),
    float(_DEC),
    radius=340.0,
    layers=(LayerSpec("acs", "wfc", "f814w"),),
    n_stars=3000,
    n_galaxies=60,
)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="mvm-deep-"))
    start = time.perf_counter()
    archive = build_archive(out, DEEP, overwrite=True)
    seconds = time.perf_counter() - start
    (rec,) = archive.layers
    array_bytes = rec.shape[0] * rec.shape[1] * 4
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        f"layer {rec.filename}: {rec.shape[1]} x {rec.shape[0]} px, "
        f"{array_bytes / 2**30:.2f} GiB per array, file {rec.size / 2**30:.2f} GiB"
    )
    print(
        f"written in {seconds:.0f} s; peak RSS {peak / 2**20:.0f} MiB ({peak / array_bytes:.1%} of one array)"
    )
    if len(sys.argv) == 1:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
