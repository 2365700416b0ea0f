"""A synthetic MVM archive whose every pixel value is known analytically.

Layers have real skycell names and WCS (from `glue_mvmcut.core.skycells`), are trimmed to the
subarray that covers the observed disc (the same subarray for every layer of a skycell, CRPIX
shifted like real files), and hold::

    SCI = gain * sky(ra, dec) + offset(skycell)   where observed, else 0.0
    WHT = weight(skycell, layer)                  where observed, else 0.0

``sky`` is a smooth background plus compact-support sources ("stars" and "galaxies"), so a value
can be recomputed exactly for any position: tests assert pixels, not impressions. Layers of any
size are written in row chunks, never held in memory whole.

``python -m glue_mvmcut.testing.synth OUTDIR [--field lmc]`` writes an archive and its
``manifest.json``.
"""

import argparse
import dataclasses
import json
import math
import zlib
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from ..core.files import write_atomically
from ..core.names import LayerName
from ..core.skycells import SCALES, SKYCELL_SIDE, SkyCell, skycells_covering
from . import headers

__all__ = ["LayerSpec", "Field", "FIELDS", "LayerRecord", "Archive", "build_archive", "sky"]

MANIFEST = "manifest.json"
#: Written into the manifest; an archive written in another format is written anew (3: layers
#: with headers as long as real MVM layers', and CTX).
FORMAT = 3
_ROWS_PER_CHUNK = 64  # ~20 MB of float64 temporaries per chunk for a 20000-px-wide layer


@dataclass(frozen=True)
class LayerSpec:
    """One band of a synthetic field: which layers every skycell of the field gets.

    ``coverage`` is the observed radius as a fraction of the field radius; ``gain`` scales the
    sky; ``weight`` is the WHT of the first skycell (later skycells get more, see `Archive`).
    """

    instrument: str
    detector: str
    filter: str
    scale: str = "fine"
    exposure: str | None = None
    gain: float = 1.0
    weight: float = 1000.0
    coverage: float = 1.0


@dataclass(frozen=True)
class Field:
    """A synthetic field: an observed disc on the sky and the bands observed there.

    ``gap`` = (skycell name, east offset min, east offset max), arcsec: a strip where that skycell
    has no data (WHT 0), like a chip gap, so combining must not average its zeros in.
    ``wcs_form``: how the layers' headers write their WCS's linear part, one of
    `~glue_mvmcut.testing.headers.WCS_FORMS` (``"cd"``, as real MVM layers do).
    """

    name: str
    ra: float
    dec: float
    radius: float
    layers: tuple[LayerSpec, ...]
    seed: int = 1
    n_stars: int = 60
    n_galaxies: int = 5
    gap: tuple[str, float, float] | None = None
    proposal: str = "15629"
    wcs_form: str = "cd"


_ACS_WFC3 = (
    LayerSpec("acs", "wfc", "f658n", gain=0.3, weight=2000.0),
    LayerSpec("acs", "wfc", "f814w", gain=1.0, weight=1000.0),
    LayerSpec("acs", "wfc", "f814w", exposure="jbp505jg", gain=1.0, weight=500.0, coverage=0.6),
    LayerSpec("wfc3", "ir", "f160w", gain=2.0, weight=800.0, coverage=0.8),
    LayerSpec("wfc3", "ir", "f160w", scale="coarse", gain=2.0, weight=800.0, coverage=0.8),
)

_TWO_BANDS = (
    LayerSpec("acs", "wfc", "f814w", gain=1.0, weight=1000.0),
    LayerSpec("wfc3", "ir", "f160w", scale="coarse", gain=2.0, weight=800.0),
)

#: Named fields.
#:
#: - ``lmc``: the seed's example, a crowded field; four skycells of p0081 meet at its centre.
#: - ``twocells``: in the overlap of projection cells 1889 and 1890 (different tangent points).
#: - ``polar``: Dec +87.9, where projection cells 2635, 2636 and the polar cap 2643 overlap.
#: - ``ra0``: straddles RA = 0 (skycell p0635x11y11).
#: - ``tiny``: one small disc inside a single skycell (p1889x07y13), one band: quick to build.
FIELDS = {
    "lmc": Field(
        "lmc",
        84.9208,
        -69.1467,
        radius=24.0,
        layers=_ACS_WFC3,
        gap=("p0081x15y14", -2.5, -0.5),
        n_stars=300,
        n_galaxies=12,
    ),
    "twocells": Field("twocells", 182.2, 26.0, radius=12.0, layers=_TWO_BANDS, seed=2),
    "polar": Field("polar", 45.0, 87.9, radius=12.0, layers=_TWO_BANDS, seed=3),
    "ra0": Field("ra0", 0.0005, -30.0, radius=12.0, layers=_TWO_BANDS, seed=4),
    "tiny": Field(
        "tiny",
        181.0,
        26.5,
        radius=3.0,
        layers=(LayerSpec("acs", "wfc", "f814w"),),
        n_stars=4,
        n_galaxies=1,
    ),
}


@dataclass(frozen=True)
class _Source:
    east: float  # arcsec east of the field centre
    north: float  # arcsec north of the field centre
    amplitude: float
    radius: float  # arcsec; the profile is exactly 0 beyond


@cache
def _sources(f: Field) -> tuple[_Source, ...]:
    rng = np.random.default_rng(f.seed)
    sources = []
    for count, (amp_lo, amp_hi), (r_lo, r_hi) in (
        (f.n_stars, (-0.3, 2.5), (0.12, 0.3)),
        (f.n_galaxies, (0.3, 0.8), (1.5, 3.0)),
    ):
        for _ in range(count):
            rho = f.radius * 1.1 * math.sqrt(rng.uniform())
            phi = rng.uniform(0, 2 * math.pi)
            sources.append(
                _Source(
                    rho * math.cos(phi),
                    rho * math.sin(phi),
                    10 ** rng.uniform(amp_lo, amp_hi),
                    rng.uniform(r_lo, r_hi),
                )
            )
    return tuple(sources)


def _offsets(f: Field, ra, dec):
    """East and north offsets (arcsec) from the field centre; RA wrapped across 0/360."""
    d_ra = (np.asarray(ra, dtype=float) - f.ra + 180.0) % 360.0 - 180.0
    east = d_ra * math.cos(math.radians(f.dec)) * 3600.0
    north = (np.asarray(dec, dtype=float) - f.dec) * 3600.0
    return east, north


def sky(f: Field, ra, dec) -> np.ndarray:
    """The analytic sky of field ``f`` at (``ra``, ``dec``) degrees, float64, before gain/offset."""
    east, north = _offsets(f, ra, dec)
    value = 0.2 + 0.05 * np.sin(east / 1.7 + 0.3) * np.cos(north / 2.3) + 0.002 * east
    if east.size == 0:
        return value
    e_lo, e_hi, n_lo, n_hi = east.min(), east.max(), north.min(), north.max()
    for s in _sources(f):
        if s.east + s.radius < e_lo or s.east - s.radius > e_hi:
            continue
        if s.north + s.radius < n_lo or s.north - s.radius > n_hi:
            continue
        r2 = ((east - s.east) ** 2 + (north - s.north) ** 2) / s.radius**2
        value = value + s.amplitude * np.where(r2 < 1.0, (1.0 - np.minimum(r2, 1.0)) ** 4, 0.0)
    return value


@dataclass
class LayerRecord:
    """What the manifest says about one layer file."""

    filename: str
    obs_id: str
    obsid: str
    skycell: str
    instrument: str
    detector: str
    filter: str
    scale: str
    exposure: str | None
    kind: str
    shape: tuple[int, int]  # (ny, nx) of the trimmed subarray
    origin: tuple[int, int]  # (x0, y0): subarray offset in the full skycell, in its own pixels
    gain: float
    offset: float
    weight: float
    radius: float  # observed radius, arcsec
    size: int = 0
    s_ra: float = 0.0
    s_dec: float = 0.0
    s_region: str = ""

    def wcs(self) -> WCS:
        """WCS of the trimmed layer."""
        wcs = SkyCell.from_name(self.skycell).wcs(self.scale)
        wcs.wcs.crpix = wcs.wcs.crpix - np.array(self.origin, dtype=float)
        wcs.wcs.set()
        wcs.pixel_shape = (self.shape[1], self.shape[0])
        return wcs


class Archive:
    """A synthetic archive on disk: its directory, field and layer records.

    Use `Archive.load` for one that exists, `build_archive` to make one.
    """

    def __init__(self, directory: Path, field_: Field, layers: list[LayerRecord], decoys: list):
        self.directory = Path(directory)
        self.field = field_
        self.layers = layers
        self.decoys = decoys

    @classmethod
    def load(cls, directory) -> "Archive":
        """Read ``manifest.json`` from ``directory``."""
        directory = Path(directory)
        data = json.loads((directory / MANIFEST).read_text())
        layers = [
            LayerRecord(**{**rec, "shape": tuple(rec["shape"]), "origin": tuple(rec["origin"])})
            for rec in data["layers"]
        ]
        spec = data["field"]
        field_ = Field(
            **{
                **spec,
                "layers": tuple(LayerSpec(**layer) for layer in spec["layers"]),
                "gap": tuple(spec["gap"]) if spec["gap"] else None,
            }
        )
        return cls(directory, field_, layers, data["decoys"])

    def layer(self, filename: str) -> LayerRecord:
        """The record of layer ``filename``."""
        return next(rec for rec in self.layers if rec.filename == filename)

    def observed(self, rec: LayerRecord, ra, dec) -> np.ndarray:
        """True where layer ``rec`` has data at (``ra``, ``dec``)."""
        east, north = _offsets(self.field, ra, dec)
        mask = east**2 + north**2 <= rec.radius**2
        gap = self.field.gap
        if gap is not None and gap[0] == rec.skycell:
            mask &= ~((east >= gap[1]) & (east <= gap[2]))
        return mask

    def truth(self, rec: LayerRecord, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """(SCI, WHT) layer ``rec`` holds at (``ra``, ``dec``), as float32 like the file."""
        mask = self.observed(rec, ra, dec)
        sci = np.where(mask, rec.gain * sky(self.field, ra, dec) + rec.offset, 0.0)
        wht = np.where(mask, rec.weight, 0.0)
        return sci.astype(np.float32), wht.astype(np.float32)


def _subarray(f: Field, skycell: SkyCell) -> tuple[int, int, int, int] | None:
    """Fine-pixel bounds (x0, x1, y0, y1) of the observed disc in ``skycell``, or None."""
    wcs = skycell.wcs("fine")
    phi = np.linspace(0, 2 * np.pi, 181)
    margin = f.radius + 1.0
    ra = f.ra + margin * np.cos(phi) / 3600.0 / math.cos(math.radians(f.dec))
    dec = f.dec + margin * np.sin(phi) / 3600.0
    x, y = wcs.world_to_pixel_values(ra, dec)
    cx, cy = wcs.world_to_pixel_values(f.ra, f.dec)
    nearest = np.clip([cx, cy], -0.5, SKYCELL_SIDE - 0.5)
    if math.hypot(nearest[0] - cx, nearest[1] - cy) * SCALES["fine"] > f.radius:
        return None
    x0, y0 = (max(0, int(math.floor(v.min()))) for v in (x, y))
    x1, y1 = (min(SKYCELL_SIDE, int(math.ceil(v.max())) + 1) for v in (x, y))
    return x0, x1, y0, y1


def _write_layer(path: Path, archive: Archive, rec: LayerRecord) -> None:
    """Write one layer in row chunks to ``path`` (atomically)."""
    write_atomically(path, lambda part: _write_layer_to(part, archive, rec))


def _write_layer_to(part: Path, archive: Archive, rec: LayerRecord) -> None:
    wcs = rec.wcs()
    ny, nx = rec.shape
    inputs = headers.input_names(rec.filename, rec.exposure)
    part.unlink(missing_ok=True)
    observed = 0
    # Primary first, then SCI, WHT and CTX streamed (a pass over the rows each), then HDRTAB.
    primary = headers.primary_header(
        filename=rec.filename,
        instrument=rec.instrument,
        detector=rec.detector,
        filter_=rec.filter,
        skycell=rec.skycell,
        obs_id=rec.obs_id,
        scale=SCALES[rec.scale],
        weight=rec.weight,
        inputs=inputs,
    )
    fits.PrimaryHDU(header=primary).writeto(part)
    for extname in ("SCI", "WHT", "CTX"):
        header = headers.image_header(wcs, extname, rec.shape, SCALES[rec.scale], archive.field.wcs_form)
        stream = fits.StreamingHDU(str(part), header)
        xs = np.arange(nx, dtype=float)
        for row0 in range(0, ny, _ROWS_PER_CHUNK):
            rows = np.arange(row0, min(row0 + _ROWS_PER_CHUNK, ny), dtype=float)
            ra, dec = wcs.pixel_to_world_values(*np.meshgrid(xs, rows))
            if extname == "SCI":
                stream.write(archive.truth(rec, ra, dec)[0])
                continue
            mask = archive.observed(rec, ra, dec)
            if extname == "WHT":
                observed += int(np.count_nonzero(mask))
                stream.write(np.where(mask, rec.weight, 0.0).astype(np.float32))
            else:
                stream.write(headers.context(inputs, mask))
        stream.close()
    hdrtab = headers.hdrtab(inputs, rec.filter, rec.weight)
    fits.append(part, hdrtab.data, header=hdrtab.header)
    with fits.open(part, mode="update") as hdul:
        hdul[0].header["NPIXFRAC"] = round(observed / (nx * ny), 6)


def _footprint(rec: LayerRecord) -> tuple[float, float, str]:
    wcs = rec.wcs()
    ny, nx = rec.shape
    ra, dec = wcs.pixel_to_world_values([-0.5, nx - 0.5, nx - 0.5, -0.5], [-0.5, -0.5, ny - 0.5, ny - 0.5])
    c_ra, c_dec = wcs.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
    points = " ".join(f"{a:.8f} {d:.8f}" for a, d in zip(ra, dec, strict=True))
    return float(c_ra), float(c_dec), f"POLYGON ICRS {points}"


def build_archive(out_dir, field_: str | Field = "lmc", *, overwrite: bool = False) -> Archive:
    """Write the synthetic archive of a field (a `Field` or a name in `FIELDS`) into ``out_dir``.

    Deterministic: the same field always gives the same bytes. An existing complete archive
    (its manifest present, of this `FORMAT`) is reused unless ``overwrite``.

    Returns
    -------
    Archive
    """
    out = Path(out_dir)
    if (out / MANIFEST).exists() and not overwrite:
        if json.loads((out / MANIFEST).read_text()).get("format") == FORMAT:
            return Archive.load(out)
        overwrite = True  # written in another format: every layer anew
    f = FIELDS[field_] if isinstance(field_, str) else field_
    out.mkdir(parents=True, exist_ok=True)
    skycells = [s for s in skycells_covering((f.ra, f.dec), 2 * f.radius + 2) if _subarray(f, s)]
    layers = []
    for index, skycell in enumerate(skycells):
        x0, x1, y0, y1 = _subarray(f, skycell)
        for spec_index, spec in enumerate(f.layers):
            factor = round(SCALES[spec.scale] / SCALES["fine"])  # 1 (fine) or 3 (coarse)
            cx0, cy0 = x0 // factor, y0 // factor
            cx1, cy1 = -(-x1 // factor), -(-y1 // factor)
            name = LayerName(
                skycell=skycell,
                instrument=spec.instrument,
                detector=spec.detector,
                filter=spec.filter,
                scale=spec.scale,
                exposure=spec.exposure,
                kind="drz" if spec.detector == "ir" else "drc",
            )
            rec = LayerRecord(
                filename=name.filename,
                obs_id=name.obs_id,
                obsid=str(_obsid_base(f) + 100 * index + spec_index),
                skycell=skycell.name,
                instrument=spec.instrument,
                detector=spec.detector,
                filter=spec.filter,
                scale=spec.scale,
                exposure=spec.exposure,
                kind=name.kind,
                shape=(cy1 - cy0, cx1 - cx0),
                origin=(cx0, cy0),
                gain=spec.gain,
                offset=round(0.05 * index - 0.02, 4),
                weight=spec.weight * (1 + 0.5 * index),
                radius=f.radius * spec.coverage,
            )
            rec.s_ra, rec.s_dec, rec.s_region = _footprint(rec)
            layers.append(rec)
    archive = Archive(out, f, layers, _decoys(f))
    for rec in layers:
        path = out / rec.filename
        if overwrite or not path.exists():
            _write_layer(path, archive, rec)
        rec.size = path.stat().st_size
    manifest = {
        "format": FORMAT,
        "field": asdict(f),
        "layers": [asdict(rec) for rec in layers],
        "decoys": archive.decoys,
    }
    write_atomically(out / MANIFEST, lambda part: part.write_text(json.dumps(manifest, indent=1)))
    return archive


def _obsid_base(f: Field) -> int:
    """Product group ids unique across fields, so one server can serve several archives."""
    return 2_600_000_000 + zlib.crc32(f.name.encode()) % 10_000 * 10_000


def _decoys(f: Field) -> list[dict]:
    """Observations near the field that are not MVM layers: a single-visit HAP product and a
    classic HST (non-HAP) product. A query must never return them."""
    half = 100.0 / 3600.0
    cos_dec = math.cos(math.radians(f.dec))
    corners = [
        (f.ra - half / cos_dec, f.dec - half),
        (f.ra + half / cos_dec, f.dec - half),
        (f.ra + half / cos_dec, f.dec + half),
        (f.ra - half / cos_dec, f.dec + half),
    ]
    region = "POLYGON ICRS " + " ".join(f"{a % 360:.8f} {d:.8f}" for a, d in corners)
    svm = f"hst_{f.proposal}_07_acs_wfc_f814w_jdxk07"
    return [
        {
            "obs_id": svm,
            "obsid": str(_obsid_base(f) - 2),
            "project": "HAP",
            "instrument": "ACS/WFC",
            "filter": "F814W",
            "s_ra": f.ra,
            "s_dec": f.dec,
            "s_region": region,
            "products": [f"{svm}_drc.fits", f"{svm}_drc.jpg", f"{svm}_trl.txt"],
        },
        {
            "obs_id": "jdxk07010",
            "obsid": str(_obsid_base(f) - 1),
            "project": "HST",
            "instrument": "ACS/WFC",
            "filter": "F814W",
            "s_ra": f.ra,
            "s_dec": f.dec,
            "s_region": region,
            "products": ["jdxk07010_drc.fits"],
        },
    ]


def main(argv=None) -> None:
    """Command line: ``python -m glue_mvmcut.testing.synth OUTDIR [--field NAME] [--wcs-form FORM]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--field", default="lmc", choices=sorted(FIELDS))
    parser.add_argument(
        "--wcs-form",
        default="cd",
        choices=headers.WCS_FORMS,
        help="how the layers write their WCS: a CD matrix (as MVM layers do, default), PC + CDELT, "
        "CDELT alone or CDELT + CROTA2",
    )
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    field_ = dataclasses.replace(FIELDS[args.field], wcs_form=args.wcs_form)
    archive = build_archive(args.out_dir, field_, overwrite=args.overwrite)
    total = sum(rec.size for rec in archive.layers)
    print(f"{len(archive.layers)} layers, {total / 1e6:.1f} MB in {archive.directory}")


if __name__ == "__main__":
    main()
