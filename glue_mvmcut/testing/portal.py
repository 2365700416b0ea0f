"""What MAST's portal knows and says: the observations and products of synthetic archives, as
``astroquery.mast``'s ``PortalAPI`` (0.4.11) asks for them.

- ``POST /portal/Mashup/Mashup.asmx/columnsconfig`` (``colConfigId=Mast.Caom.Cone``):
  `columns_config`, which must describe every column a filter may name;
- ``POST /api/v0/invoke``: `Catalogue.invoke` for ``Mast.Caom.Filtered.Position`` /
  ``Mast.Caom.Filtered`` (filters with wildcards, ``COUNT_BIG(*)``, a real cone-versus-footprint
  test) and ``Mast.Caom.Products`` (with previews, trailers and single-visit products as decoys);
- ``GET /Santa-war/query?name=...`` (MAST's name resolver): `Catalogue.resolve`.

Replies are plain dicts, for `~glue_mvmcut.testing.server` to send as JSON.
"""

import math
import re
from pathlib import Path

from ..core.footprints import Footprint, parse_region, separation_deg
from .synth import Archive

__all__ = [
    "INVOKE_PATH",
    "COLUMNS_CONFIG_PATH",
    "DOWNLOAD_PATH",
    "RESOLVER_PATH",
    "URI_PREFIX",
    "OBSERVATION_COLUMNS",
    "PRODUCT_COLUMNS",
    "columns_config",
    "Catalogue",
    "table_reply",
    "hostile_products",
]

INVOKE_PATH = "/api/v0/invoke"
COLUMNS_CONFIG_PATH = "/portal/Mashup/Mashup.asmx/columnsconfig"
DOWNLOAD_PATH = "/api/v0.1/Download/file"
RESOLVER_PATH = "/Santa-war/query"
URI_PREFIX = "mast:HST/product/"

# CAOM observation columns: name -> (type, separator). Every column a filter may name is here.
OBSERVATION_COLUMNS = {
    "intentType": ("string", None),
    "obs_collection": ("string", ";"),
    "provenance_name": ("string", None),
    "instrument_name": ("string", None),
    "project": ("string", ";"),
    "filters": ("string", ";"),
    "wavelength_region": ("string", ";"),
    "target_name": ("string", None),
    "target_classification": ("string", ";"),
    "obs_id": ("string", None),
    "s_ra": ("float", None),
    "s_dec": ("float", None),
    "dataproduct_type": ("string", None),
    "proposal_pi": ("string", None),
    "calib_level": ("int", None),
    "t_min": ("float", None),
    "t_max": ("float", None),
    "t_exptime": ("float", None),
    "em_min": ("float", None),
    "em_max": ("float", None),
    "obs_title": ("string", None),
    "t_obs_release": ("float", None),
    "proposal_id": ("string", None),
    "proposal_type": ("string", None),
    "sequence_number": ("int", None),
    "s_region": ("string", None),
    "jpegURL": ("string", None),
    "dataURL": ("string", None),
    "dataRights": ("string", None),
    "mtFlag": ("boolean", None),
    "srcDen": ("float", None),
    "obsid": ("string", None),
    "objID": ("string", None),
}
PRODUCT_COLUMNS = {
    "obsID": "string",
    "obs_collection": "string",
    "dataproduct_type": "string",
    "obs_id": "string",
    "description": "string",
    "type": "string",
    "dataURI": "string",
    "productType": "string",
    "productGroupDescription": "string",
    "productSubGroupDescription": "string",
    "productDocumentationURL": "string",
    "project": "string",
    "prvversion": "string",
    "proposal_id": "string",
    "productFilename": "string",
    "size": "int",
    "parent_obsid": "string",
    "dataRights": "string",
    "calib_level": "int",
    "filters": "string",
}
_VOT_TYPES = {"string": "char", "float": "double", "int": "int", "boolean": "boolean"}


def columns_config() -> dict:
    """The ``Mast.Caom.Cone`` columns config: what astroquery needs to build filters."""
    config = {"_selected_": {"text": "selected", "add": True, "type": "boolean", "hidden": True}}
    for name, (kind, separator) in OBSERVATION_COLUMNS.items():
        entry = {"text": name, "vot.datatype": _VOT_TYPES[kind], "vot.ID": name, "vot.name": name}
        if separator:
            entry["separator"] = separator
        config[name] = entry
    return config


class Catalogue:
    """The observations and products the server knows, built from archive manifests."""

    def __init__(self, archives: list[Archive]):
        self.archives = archives
        self.observations = []
        self.products: dict[str, list[dict]] = {}
        self.files: dict[str, Path] = {}
        for archive in archives:
            self._add(archive)
        self._footprints = {obs["obsid"]: _footprint(obs) for obs in self.observations}

    def _add(self, archive: Archive) -> None:
        for rec in archive.layers:
            self.files[rec.filename] = archive.directory / rec.filename
            obs = self._observation(
                obs_id=rec.obs_id,
                obsid=rec.obsid,
                project="HAP",
                instrument=f"{rec.instrument.upper()}/{rec.detector.upper()}",
                filt=rec.filter.upper(),
                s_ra=rec.s_ra,
                s_dec=rec.s_dec,
                s_region=rec.s_region,
                exptime=rec.weight,
            )
            obs["dataURL"] = URI_PREFIX + rec.filename
            self.observations.append(obs)
            preview = rec.filename.replace(".fits", ".jpg")
            subgroup = rec.kind.upper()
            self.products[rec.obsid] = [
                self._product(obs, rec.filename, subgroup, "SCIENCE", rec.size),
                self._product(obs, preview, subgroup, "PREVIEW", 51234),
                self._product(obs, rec.obs_id + "_trl.txt", "TRL", "AUXILIARY", 4321),
            ]
        for decoy in archive.decoys:
            obs = self._observation(
                obs_id=decoy["obs_id"],
                obsid=decoy["obsid"],
                project=decoy["project"],
                instrument=decoy["instrument"],
                filt=decoy["filter"],
                s_ra=decoy["s_ra"],
                s_dec=decoy["s_dec"],
                s_region=decoy["s_region"],
                exptime=1000.0,
            )
            self.observations.append(obs)
            self.products[decoy["obsid"]] = [
                self._product(
                    obs,
                    name,
                    name.rsplit("_", 1)[-1].split(".")[0].upper(),
                    "SCIENCE" if name.endswith(".fits") else "AUXILIARY",
                    1234567,
                )
                for name in decoy["products"]
            ]
        # Real MAST lists a visit's single-visit products under the skycell layers built from it.
        svm = next((d for d in archive.decoys if d["project"] == "HAP"), None)
        if svm is not None:
            for rec in archive.layers:
                self.products[rec.obsid].append(self.products[svm["obsid"]][0])

    @staticmethod
    def _observation(*, obs_id, obsid, project, instrument, filt, s_ra, s_dec, s_region, exptime):
        return {
            "intentType": "science",
            "obs_collection": "HST",
            "provenance_name": "HAP-MVM" if obs_id.startswith("hst_skycell") else "CALACS",
            "instrument_name": instrument,
            "project": project,
            "filters": filt,
            "wavelength_region": "IR" if "/IR" in instrument else "OPTICAL",
            "target_name": "ANY",
            "target_classification": "",
            "obs_id": obs_id,
            "s_ra": s_ra,
            "s_dec": s_dec,
            "dataproduct_type": "image",
            "proposal_pi": "",
            "calib_level": 3,
            "t_min": 56000.0,
            "t_max": 59000.0,
            "t_exptime": exptime,
            "em_min": 700.0,
            "em_max": 900.0,
            "obs_title": "",
            "t_obs_release": 59001.0,
            "proposal_id": "",
            "proposal_type": "",
            "sequence_number": None,
            "s_region": s_region,
            "jpegURL": None,
            "dataURL": None,
            "dataRights": "PUBLIC",
            "mtFlag": False,
            "srcDen": None,
            "obsid": obsid,
            "objID": str(int(obsid) + 10**9),
        }

    @staticmethod
    def _product(obs, filename, subgroup, product_type, size):
        return {
            "obsID": obs["obsid"],
            "obs_collection": "HST",
            "dataproduct_type": "image",
            "obs_id": filename.rsplit("_", 1)[0],
            "description": f"{subgroup} {product_type.lower()}",
            "type": "D",
            "dataURI": URI_PREFIX + filename,
            "productType": product_type,
            "productGroupDescription": "Minimum Recommended Products" if product_type == "SCIENCE" else "",
            "productSubGroupDescription": subgroup,
            "productDocumentationURL": "",
            "project": obs["project"],
            "prvversion": "1.0",
            "proposal_id": "",
            "productFilename": filename,
            "size": size,
            "parent_obsid": obs["obsid"],
            "dataRights": "PUBLIC",
            "calib_level": 3,
            "filters": obs["filters"],
        }

    def query(self, filters: list[dict], position: str | None) -> list[dict]:
        rows = [obs for obs in self.observations if all(_matches(obs, f) for f in filters)]
        if position:
            ra, dec, radius = (float(v) for v in position.split(","))
            rows = [
                dict(obs, distance=separation_deg(ra, dec, obs["s_ra"], obs["s_dec"]) * 3600.0)
                for obs in rows
                if self._footprints[obs["obsid"]].hits_cone(ra, dec, radius)
            ]
        return rows

    def invoke(self, request: dict, *, hostile_names: bool = False, missing_columns=()) -> dict:
        """The reply to an ``/api/v0/invoke`` request (its decoded ``request`` JSON); with
        ``hostile_names``, skycell products listed under names that try to leave a folder; the
        ``missing_columns`` left out of table replies."""
        service, params = request["service"], request.get("params", {})
        page, pagesize = int(request.get("page", 1)), int(request.get("pagesize", 50000))
        if service in ("Mast.Caom.Filtered.Position", "Mast.Caom.Filtered"):
            rows = self.query(params.get("filters", []), params.get("position"))
            if params.get("columns") == "COUNT_BIG(*)":
                return table_reply({"Column1": "string"}, [{"Column1": len(rows)}], 1, 1)
            fields = {name: kind for name, (kind, _) in OBSERVATION_COLUMNS.items()}
            if params.get("position"):
                fields["distance"] = "float"
        elif service == "Mast.Caom.Products":
            wanted = [v.strip() for v in str(params.get("obsid", "")).split(",") if v.strip()]
            rows = [p for obsid in wanted for p in self.products.get(obsid, [])]
            if hostile_names:
                rows = hostile_products(rows)
            fields = PRODUCT_COLUMNS
        else:
            return {"status": "ERROR", "msg": f"Unknown service {service}", "data": [], "fields": []}
        fields = {name: kind for name, kind in fields.items() if name not in missing_columns}
        return table_reply(fields, rows, page, pagesize)

    def resolve(self, name: str) -> dict:
        """The name resolver's reply for ``name``: each served field's name resolves to its centre."""
        name = name.strip().lower()
        found = [
            {
                "searchString": name,
                "resolver": "SIMBAD",
                "cached": True,
                "canonicalName": f"SYNTHETIC {archive.field.name.upper()}",
                "ra": archive.field.ra,
                "decl": archive.field.dec,
            }
            for archive in self.archives
            if archive.field.name.lower() == name
        ]
        return {"resolvedCoordinate": found[:1]}


def _footprint(observation: dict) -> Footprint:
    """An observation's footprint; MAST's own geometry where the stand-in cannot read it (a
    test's garbled ``s_region``): its centre."""
    try:
        return parse_region(observation["s_region"])
    except ValueError:
        return Footprint(circles=((observation["s_ra"], observation["s_dec"], 0.0),))


_HOSTILE_PATTERNS = ("../../{}", "/tmp/{}", "{}\n.fits", "sub\\..\\..\\{}")


def hostile_products(rows: list[dict]) -> list[dict]:
    """Products whose skycell layer names try to climb out of the download folder."""
    out, replaced = [], 0
    for row in rows:
        name = row["productFilename"]
        if name.startswith("hst_skycell") and name.endswith(".fits"):
            bad = _HOSTILE_PATTERNS[replaced % len(_HOSTILE_PATTERNS)].format(name)
            row = dict(row, productFilename=bad, dataURI=URI_PREFIX + bad)
            replaced += 1
        out.append(row)
    return out


def _like(pattern: str, value: str) -> bool:
    regex = ".*".join(re.escape(part) for part in pattern.split("%"))
    return re.fullmatch(regex, value, flags=re.IGNORECASE) is not None


def _matches(obs: dict, flt: dict) -> bool:
    name = flt["paramName"]
    if name not in OBSERVATION_COLUMNS:
        return False
    value = obs.get(name)
    values = flt.get("values", [])
    if values and isinstance(values[0], dict):  # continuous: [{"min": a, "max": b}]
        return value is not None and float(values[0]["min"]) <= float(value) <= float(values[0]["max"])
    separator = OBSERVATION_COLUMNS[name][1]
    parts = str(value).split(separator) if separator else [str(value)]
    wanted = {str(v).lower() for v in values}
    hit = any(part.lower() in wanted for part in parts)
    if flt.get("freeText"):
        hit = hit or any(_like(flt["freeText"], part) for part in parts)
    return hit


def table_reply(fields: dict, rows: list[dict], page: int, pagesize: int, status: str = "COMPLETE") -> dict:
    """A portal table reply: ``fields`` (name → type) and page ``page`` of ``rows``."""
    total = len(rows)
    pages = max(1, math.ceil(total / pagesize))
    chunk = rows[(page - 1) * pagesize : page * pagesize]
    return {
        "status": status,
        "msg": "",
        "fields": [{"name": n, "type": t} for n, t in fields.items()],
        "data": [{n: r.get(n) for n in fields} for r in chunk],
        "paging": {
            "page": page,
            "pageSize": pagesize,
            "pagesFiltered": pages,
            "rows": len(chunk),
            "rowsFiltered": total,
            "rowsTotal": total,
        },
    }
