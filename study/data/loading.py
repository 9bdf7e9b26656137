"""Read interaction tables (CSV, CSV.gz, Parquet) into validated frames with canonical column names."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from study.data.errors import DataError

CANONICAL_COLUMNS = ("user_id", "item_id", "timestamp")
TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
# What reading a damaged file raises besides OSError / ValueError: a truncated .gz raises EOFError,
# a corrupt deflate stream zlib.error.
READ_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, EOFError, zlib.error)


def is_table_file(path: Path) -> bool:
    return path.name.lower().endswith(TABLE_SUFFIXES)


def load_interactions(
    path: str | Path,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
) -> pd.DataFrame:
    """Read a CSV / CSV.gz / Parquet interaction log.

    Returns the rows in file order with columns renamed to `user_id`, `item_id`, `timestamp`
    (ids keep their original values and dtype; timestamps are int64 or float64). CSV ids are read as
    text, so "007" and "7" stay two ids; a column whose every id is a plain integer ("7", "-3", not
    "007" or "7.0") becomes int64.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if not is_table_file(path):
        raise DataError(f"{path}: unsupported file type (expected one of {', '.join(TABLE_SUFFIXES)})")
    wanted = {user_col: "user_id", item_col: "item_id", time_col: "timestamp"}
    if len(wanted) != 3:
        raise DataError(f"{path}: user_col, item_col and time_col must be three different columns")
    is_parquet = path.name.lower().endswith((".parquet", ".pq"))
    try:
        if is_parquet:
            found = list(pq.read_schema(path).names)
        else:
            found = list(pd.read_csv(path, nrows=0).columns)
    except READ_ERRORS as error:
        raise DataError(f"{path}: cannot read the header ({_describe(error)})") from error
    for column, role in ((user_col, "user_col"), (item_col, "item_col"), (time_col, "time_col")):
        if column not in found:
            raise DataError(f"{path}: missing column {column!r} ({role}); columns found: {', '.join(found)}")
    try:
        if is_parquet:
            frame = pd.read_parquet(path, columns=list(wanted))
        else:
            frame = pd.read_csv(path, usecols=list(wanted), dtype={user_col: str, item_col: str})
            for column in (user_col, item_col):
                frame[column] = _integers_if_canonical(frame[column])
    except READ_ERRORS as error:
        raise DataError(f"{path}: cannot read ({_describe(error)})") from error
    frame = frame.rename(columns=wanted)[list(CANONICAL_COLUMNS)]
    # CSV data starts on line 2 (line 1 is the header); Parquet has no lines, so report row numbers.
    return validate_interactions(frame, source=str(path), first_line=None if is_parquet else 2,
                                 column_names=(user_col, item_col, time_col))


def _describe(error: BaseException) -> str:
    if isinstance(error, EOFError):
        return f"the file is truncated: {error}"
    return str(error)


def _integers_if_canonical(ids: pd.Series) -> pd.Series:
    """int64 ids when every (non-missing) text is a canonical integer, else the texts unchanged."""
    present = ids.dropna()
    if present.empty or not present.str.fullmatch(r"-?(0|[1-9][0-9]*)").all():
        return ids
    values = pd.to_numeric(ids, errors="coerce")
    if values.isna().any() or values.abs().max() >= 2**63:
        return ids
    return values.astype(np.int64)


def validate_interactions(
    frame: pd.DataFrame,
    *,
    source: str,
    first_line: int | None,
    column_names: tuple[str, str, str] = CANONICAL_COLUMNS,
) -> pd.DataFrame:
    """Check a frame with canonical columns: no missing ids, numeric timestamps.

    `first_line` is the file line of row 0 (None: the source has no lines, report row numbers);
    `column_names` are the names the file uses, for the messages.
    """
    frame = frame.reset_index(drop=True)
    user_name, item_name, time_name = column_names

    def where(row: int) -> str:
        return f"row {row}" if first_line is None else f"line {row + first_line}"

    for canonical, name in (("user_id", user_name), ("item_id", item_name)):
        missing = frame[canonical].isna().to_numpy()
        if missing.any():
            row = int(np.argmax(missing))
            raise DataError(f"{source}: column {name!r} has a missing value at {where(row)}")
    timestamps = frame["timestamp"]
    if not (pd.api.types.is_numeric_dtype(timestamps) and not pd.api.types.is_bool_dtype(timestamps)):
        timestamps = pd.to_numeric(timestamps, errors="coerce")
    bad = ~np.isfinite(timestamps.to_numpy(dtype=np.float64, na_value=np.nan))
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"{source}: column {time_name!r} is not a finite number at {where(row)} "
                        f"(value {frame['timestamp'].iloc[row]!r})")
    whole = pd.api.types.is_integer_dtype(timestamps) or (
        (timestamps == np.floor(timestamps)).all() and timestamps.abs().max() < 2**53)
    if whole:
        timestamps = timestamps.astype(np.int64)
    else:
        timestamps = timestamps.astype(np.float64)
    frame["timestamp"] = timestamps
    return frame
