"""write_ecsv: the files astropy's ECSV writer writes, byte for byte."""

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Column, MaskedColumn, QTable, Table

from glue_mvmcut.core.ecsvfile import write_ecsv
from glue_mvmcut.core.mast import query_layers

LMC = (84.9208, -69.1467)


def _kinds() -> Table:
    """Every kind of value the fast path writes: quoting, masks, empty strings, special floats."""
    table = Table(
        {
            "name": ["plain", "two words", 'a "quoted" one', "", "ünïcode", "x,y"],
            "count": np.array([0, -1, 2**40, 7, 3, 9], dtype=np.int64),
            "small": np.array([1, 2, 3, 4, 5, 6], dtype=np.uint8),
            "flux": [0.1, np.nan, np.inf, -np.inf, 1e-300, 180.98895466913257],
            "single": np.array([0.1, 1.5, -2.25, 3e38, 0, 1], dtype=np.float32),
            "flag": [True, False, True, True, False, False],
        }
    )
    table["note"] = MaskedColumn(["a", "b", "", "d", "e", "f"], mask=[False, True, False, True, False, False])
    table["level"] = MaskedColumn([1, 2, 3, 4, 5, 6], mask=[True, False, False, False, False, True])
    table["ra"] = Column([1.5] * 6, unit="deg", format=".3f", description="right ascension")
    table.meta = {"server": "https://mast.example", "asked": 1.5}
    return table


def _astropy_and_ours(table, tmp_path) -> tuple[bytes, bytes]:
    table.write(tmp_path / "astropy.ecsv", format="ascii.ecsv")
    write_ecsv(table, tmp_path / "ours.ecsv")
    return (tmp_path / "astropy.ecsv").read_bytes(), (tmp_path / "ours.ecsv").read_bytes()


def test_a_query_table_is_written_as_astropy_writes_it(mast, tmp_path):
    table = query_layers(LMC, 20)
    assert len(table) == 20
    astropys, ours = _astropy_and_ours(table, tmp_path)
    assert ours == astropys
    assert b'"POLYGON ' in ours  # values with spaces, quoted
    write_ecsv(table[:3], tmp_path / "ours.ecsv")  # the same layout again: the header kept
    table[:3].write(tmp_path / "astropy.ecsv", format="ascii.ecsv", overwrite=True)
    assert (tmp_path / "ours.ecsv").read_bytes() == (tmp_path / "astropy.ecsv").read_bytes()


@pytest.mark.parametrize("rows", [slice(None), slice(0, 0), slice(2, 3)])
def test_every_kind_of_plain_value_is_written_as_astropy_writes_it(rows, tmp_path):
    astropys, ours = _astropy_and_ours(_kinds()[rows], tmp_path)
    assert ours == astropys


def test_a_table_of_another_meta_or_column_attribute_gets_its_own_header(tmp_path):
    table = _kinds()
    write_ecsv(table, tmp_path / "first.ecsv")
    table.meta["asked"] = 2.5
    table["ra"].unit = "hourangle"
    astropys, ours = _astropy_and_ours(table, tmp_path)
    assert ours == astropys
    assert b"asked: 2.5" in ours and b"unit: hourangle" in ours


@pytest.mark.parametrize(
    "column",
    [
        Column([[1, 2], [3, 4]], name="pair"),  # two-dimensional: JSON
        Column([{"a": 1}, [1]], name="thing", dtype=object),  # objects: JSON
        SkyCoord([1, 2], [3, 4], unit="deg"),  # a mixin
        [1, 2] * u.m,  # a quantity
    ],
    ids=["2-d", "object", "mixin", "quantity"],
)
def test_other_columns_are_written_by_astropy(column, tmp_path):
    table = QTable({"id": ["a", "b"], "column": column})
    astropys, ours = _astropy_and_ours(table, tmp_path)
    assert ours == astropys


def test_a_mask_serialized_as_data_and_mask_is_written_by_astropy(tmp_path):
    table = Table({"level": MaskedColumn([1, 2], mask=[True, False])})
    table["level"].info.serialize_method["ecsv"] = "data_mask"
    astropys, ours = _astropy_and_ours(table, tmp_path)
    assert ours == astropys and b"level.mask" in ours
