"""Arrow arrays built from their buffers: pyarrow's pa.array imports pandas wherever it is installed (0.4 s of a
one-row run), and a column of numbers, strings or booleans needs nothing of it."""

from __future__ import annotations

from typing import Any

import numpy as np

from sbert_cli.errors import InputDataError


def numeric_array(values: np.ndarray) -> Any:
    """A 1-d numpy array of numbers as the Arrow array of its type, sharing its memory."""
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def bool_array(values: np.ndarray) -> Any:
    """A 1-d numpy bool array as Arrow's bit-packed booleans."""
    import pyarrow as pa

    bits = np.packbits(np.asarray(values, dtype=bool), bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])


def string_array(texts: list[str]) -> Any:
    """Python strings as an Arrow string array: their UTF-8 bytes end to end and the offsets between them (a
    UnicodeEncodeError for a lone surrogate, an OverflowError past 2 GiB: pa.array's cases)."""
    import pyarrow as pa

    encoded = [text.encode("utf-8") for text in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(value) for value in encoded], out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise OverflowError("more than 2 GiB of strings")
    return pa.Array.from_buffers(pa.string(), len(encoded), [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))])


def id_array(ids: list[Any], id_type: Any, first_row: int) -> Any:
    """The id column of one window, of the type the first window set (`id_type`; None: this is the first): built
    from buffers when the ids are all ints or all strings (row numbers, most id columns), else by pa.array."""
    import pyarrow as pa

    kinds = {type(value) for value in ids}
    built = None
    try:
        if kinds == {int}:
            built = numeric_array(np.array(ids, dtype=np.int64))
        elif kinds == {str}:
            built = string_array(ids)
    except (OverflowError, UnicodeEncodeError):
        built = None  # past int64, or text no codec takes: pa.array says what it makes of them
    if built is not None and (id_type is None or built.type == id_type):
        return built
    try:
        return pa.array(ids, type=id_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        names = sorted(kind.__name__ for kind in kinds)
        raise InputDataError(
            f"ids from row {first_row} on mix types ({', '.join(names)}) or differ from earlier ids ({id_type}); "
            "use an id column of one type"
        ) from None
