"""Loading, validation errors, deduplication, k-core and id remapping."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from study.data import DataError, Interactions, load_dataset, load_interactions, prepare_interactions


def _random_log(rng: np.random.Generator, rows: int, users: int, items: int) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": rng.integers(100, 100 + users, rows),
        "item_id": rng.integers(5000, 5000 + items, rows),
        "timestamp": rng.integers(10**9, 10**9 + 10**6, rows),
    })


def test_ml100k_loads_with_published_counts(shared_data: Path) -> None:
    raw = load_interactions(shared_data / "ml-100k" / "interactions.csv.gz")
    assert list(raw.columns) == ["user_id", "item_id", "timestamp"]
    assert raw["timestamp"].dtype == np.int64
    data = load_dataset(str(shared_data / "ml-100k"))
    assert (data.num_users, data.num_items, len(data.frame)) == (943, 1682, 100_000)
    _check_remapped(data)
    # The remapping is a bijection back to the file's own (user, item, timestamp) rows.
    restored = pd.DataFrame({
        "user_id": data.user_labels[data.frame["user"]],
        "item_id": data.item_labels[data.frame["item"] - 1],
        "timestamp": data.frame["timestamp"],
    })
    pd.testing.assert_frame_equal(
        restored.sort_values(list(restored.columns)).reset_index(drop=True),
        raw.sort_values(list(raw.columns)).reset_index(drop=True),
        check_dtype=False,
    )


def _check_remapped(data: Interactions) -> None:
    frame = data.frame
    assert frame["user"].dtype == np.int64 and frame["item"].dtype == np.int64
    assert set(np.unique(frame["user"])) == set(range(data.num_users))
    assert set(np.unique(frame["item"])) == set(range(1, data.num_items + 1))
    keys = frame[["user", "timestamp"]].to_numpy()
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    assert np.array_equal(order, np.arange(len(frame))), "rows must be sorted by (user, timestamp)"


def test_formats_and_column_names_agree(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    log = _random_log(rng, 300, 20, 40).rename(columns={"user_id": "u", "item_id": "i", "timestamp": "t"})
    log["rating"] = rng.random(len(log))
    log.to_csv(tmp_path / "log.csv", index=False)
    log.to_csv(tmp_path / "log.csv.gz", index=False)
    log.to_parquet(tmp_path / "log.parquet", index=False)
    frames = [load_interactions(tmp_path / name, user_col="u", item_col="i", time_col="t")
              for name in ("log.csv", "log.csv.gz", "log.parquet")]
    expected = log[["u", "i", "t"]].set_axis(["user_id", "item_id", "timestamp"], axis=1)
    for frame in frames:
        pd.testing.assert_frame_equal(frame, expected, check_dtype=False)


def test_duplicates_dropped_and_ties_keep_file_order() -> None:
    raw = pd.DataFrame({
        "user_id": ["b", "a", "a", "a", "a", "b"],
        "item_id": [7, 9, 3, 9, 3, 7],
        "timestamp": [5, 2, 2, 2, 1, 5],
    })
    data = prepare_interactions(raw, name="tiny")
    # Rows 3 and 5 repeat rows 1 and 0 exactly; repeat consumption at another time (a,3 at 1 and 2) is kept.
    assert len(data.frame) == 4
    user_a = data.frame[data.frame["user"] == 0]
    labels = data.item_labels[user_a["item"].to_numpy() - 1]
    assert list(labels) == [3, 9, 3]  # time 1, then the tie at time 2 in file order (9 before 3)
    assert list(data.user_labels) == ["a", "b"]


@pytest.mark.parametrize("k", [2, 5])
def test_kcore_every_survivor_has_k_and_nothing_more_is_removed(k: int) -> None:
    rng = np.random.default_rng(k)
    raw = _random_log(rng, 3000, 150, 300)
    raw["item_id"] = 5000 + (300 * rng.random(len(raw)) ** 3).astype(np.int64)  # a long tail of rare items
    data = prepare_interactions(raw, name="random", kcore=k)
    assert data.frame.groupby("user").size().min() >= k
    assert data.frame.groupby("item").size().min() >= k
    # Reference: the maximal k-core by plain iteration over pandas counts.
    reference = raw.drop_duplicates()
    while True:
        user_ok = reference.groupby("user_id")["item_id"].transform("size") >= k
        item_ok = reference.groupby("item_id")["user_id"].transform("size") >= k
        if (user_ok & item_ok).all():
            break
        reference = reference[user_ok & item_ok]
    assert 0 < len(data.frame) == len(reference) < len(raw.drop_duplicates())
    assert data.num_users == reference["user_id"].nunique()
    assert data.num_items == reference["item_id"].nunique()


def test_a_given_catalogue_keeps_items_that_never_occur_under_their_catalogue_position() -> None:
    raw = pd.DataFrame({"user_id": ["b", "a", "a", "b", "c"], "item_id": ["z", "x", "z", "z", "x"],
                        "timestamp": [3, 1, 2, 1, 5]})
    catalogue = np.array(["w", "x", "y", "z", "v"], dtype=object)  # y, w and v never occur
    data = prepare_interactions(raw, name="shop", catalogue=catalogue)
    assert data.num_items == 5 and list(data.item_labels) == ["w", "x", "y", "z", "v"]
    assert data.frame["item"].tolist() == [2, 4, 4, 4, 2]  # a: x, z; b: z, z; c: x
    dense = prepare_interactions(raw, name="shop")
    assert dense.num_items == 2 and list(dense.item_labels) == ["x", "z"]
    # 2-core filtering removes interactions (c's; then x, left with one; then a): the catalogue stays whole
    filtered = prepare_interactions(raw, name="shop", kcore=2, catalogue=catalogue)
    assert filtered.num_items == 5 and list(filtered.user_labels) == ["b"]
    assert filtered.frame["item"].tolist() == [4, 4]


def test_a_catalogue_missing_a_logged_item_or_listing_one_twice_is_refused() -> None:
    raw = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [10, 11, 12], "timestamp": [1, 2, 3]})
    with pytest.raises(DataError, match=r"^shop: item 12 \(row 2\) is not in the catalogue of 2 items$"):
        prepare_interactions(raw, name="shop", catalogue=np.array([10, 11]))
    with pytest.raises(DataError, match=r"^shop: the catalogue lists item 11 more than once$"):
        prepare_interactions(raw, name="shop", catalogue=np.array([10, 11, 12, 11]))


def test_empty_after_kcore_is_an_error() -> None:
    raw = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [1, 2, 3], "timestamp": [1, 2, 3]})
    with pytest.raises(DataError, match="no interactions left after 2-core"):
        prepare_interactions(raw, name="sparse", kcore=2)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_interactions(tmp_path / "absent.csv")
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(str(tmp_path / "absent.csv"))


def test_missing_column_is_named_with_the_columns_found(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item,timestamp\n1,2,3\n")
    with pytest.raises(DataError, match=r"missing column 'item_id'.*columns found: user_id, item, timestamp"):
        load_interactions(path)


def test_non_numeric_timestamp_names_column_and_line(tmp_path: Path) -> None:
    path = tmp_path / "log.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("user_id,item_id,when\n1,2,100\n1,3,101\n2,3,yesterday\n2,4,oops\n")
    message = r"column 'when' is not a finite number at line 4 \(value 'yesterday'\)"
    with pytest.raises(DataError, match=message):
        load_interactions(path, time_col="when")


def test_missing_id_names_column_and_line(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\n1,2,100\n,3,101\n")
    with pytest.raises(DataError, match=r"column 'user_id' has a missing value at line 3"):
        load_interactions(path)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\n")
    with pytest.raises(DataError, match="no interactions"):
        load_dataset(str(path))


def test_float_timestamps_stay_float(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\n1,2,100.5\n1,3,100.25\n")
    data = load_dataset(str(path))
    assert data.frame["timestamp"].dtype == np.float64
    assert list(data.frame["timestamp"]) == [100.25, 100.5]


def test_parquet_bad_timestamp_reports_the_row(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    log = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [4, 5, 6], "timestamp": ["10", "11", "late"]})
    log.to_parquet(path)
    message = r"column 'timestamp' is not a finite number at row 2 \(value 'late'\)"
    with pytest.raises(DataError, match=message):
        load_interactions(path)


def test_unsupported_file_type(tmp_path: Path) -> None:
    path = tmp_path / "log.json"
    path.write_text("{}")
    with pytest.raises(DataError, match="unsupported file type"):
        load_dataset(str(path))


def test_infinite_timestamp_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\n1,2,100.5\n1,3,inf\n")
    with pytest.raises(DataError, match="not a finite number at line 3"):
        load_interactions(path)


def test_csv_ids_are_text_so_leading_zeros_keep_ids_apart(tmp_path: Path) -> None:
    (tmp_path / "codes.csv").write_text("user_id,item_id,timestamp\n1,007,1\n1,7,2\n2,007,3\n2,42,4\n")
    frame = load_interactions(tmp_path / "codes.csv")
    assert frame["item_id"].tolist() == ["007", "7", "007", "42"]
    assert frame["user_id"].tolist() == [1, 1, 2, 2]
    # Plain integer ids stay integers (and so sort as numbers).
    (tmp_path / "numbers.csv").write_text("user_id,item_id,timestamp\n10,2,1\n10,10,2\n-3,2,3\n")
    numbers = load_interactions(tmp_path / "numbers.csv")
    assert numbers["item_id"].dtype == "int64" and numbers["item_id"].tolist() == [2, 10, 2]
    assert numbers["user_id"].tolist() == [10, 10, -3]
    # "7.0" is not a plain integer: the column stays text.
    (tmp_path / "floats.csv").write_text("user_id,item_id,timestamp\n1,7.0,1\n1,7,2\n")
    assert load_interactions(tmp_path / "floats.csv")["item_id"].tolist() == ["7.0", "7"]


def test_truncated_gzip_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    whole = tmp_path / "whole.csv.gz"
    pd.DataFrame({"user_id": rng.integers(1, 300, 30000), "item_id": rng.integers(1, 700, 30000),
                  "timestamp": np.arange(30000)}).to_csv(whole, index=False)
    data = whole.read_bytes()
    for cut_at in (len(data) // 2, 30):  # in the body; in the header line
        cut = tmp_path / f"cut{cut_at}.csv.gz"
        cut.write_bytes(data[:cut_at])
        with pytest.raises(DataError, match=f"{cut.name}: cannot read.*truncated"):
            load_interactions(cut)
