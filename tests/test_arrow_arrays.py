"""Arrow arrays built from buffers are the arrays pa.array makes, and building them imports no pandas."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbert_cli.errors import InputDataError
from sbert_cli.io.arrow_arrays import bool_array, id_array, numeric_array
from tests.conftest import ROOT

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@settings(deadline=None)
@given(st.one_of(st.lists(INT64, max_size=30), st.lists(st.text(max_size=12), max_size=30)))
def test_ids_are_what_pa_array_makes(ids: list) -> None:
    expected = pa.array(ids)
    if not ids:
        expected = pa.array(ids, type=pa.null())
    built = id_array(ids, None, 0)
    if ids:
        assert built.equals(expected) and built.type == expected.type
    built.validate(full=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8, np.uint8, np.int32, np.int64])
def test_numbers_and_booleans_are_what_pa_array_makes(dtype: type) -> None:
    values = (np.arange(-5, 12) * 3).astype(dtype)
    assert numeric_array(values).equals(pa.array(values))
    flags = values > 4
    assert bool_array(flags).equals(pa.array(flags))


def test_ids_that_change_type_or_mix_are_one_line() -> None:
    first = id_array([1, 2], None, 0)
    with pytest.raises(InputDataError) as later:
        id_array(["a", "b"], first.type, 2)
    assert str(later.value) == "ids from row 2 on mix types (str) or differ from earlier ids (int64); use an id column of one type"
    with pytest.raises(InputDataError) as mixed:
        id_array([1, "a"], None, 0)
    assert str(mixed.value) == "ids from row 0 on mix types (int, str) or differ from earlier ids (None); use an id column of one type"


def test_ids_past_the_fast_cases_still_go_through_pa_array() -> None:
    with pytest.raises(InputDataError):  # past int64: pa.array refuses it too
        id_array([2**63], None, 0)
    assert id_array([1.5, 2.0], None, 0).equals(pa.array([1.5, 2.0]))
    assert id_array(["a"], pa.large_string(), 5).equals(pa.array(["a"], type=pa.large_string()))


def test_writing_a_parquet_output_imports_no_pandas(tmp_path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from sbert_cli.io.parquet_out import ParquetWriter\n"
        "from sbert_cli.io.writers import WriterSpec\n"
        f"writer = ParquetWriter(WriterSpec({str(tmp_path / 'out.parquet')!r}, 4, {{}}, 'float32', 8))\n"
        "writer.write(['a', 'b'], np.ones((2, 4), np.float32), [3, 9])\n"
        "writer.write(['c'], np.ones((1, 4), np.float32), [2])\n"
        "print('pandas' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
