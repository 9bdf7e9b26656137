"""Original source formats, the dataset registry's lookup order, and downloads (local file:// URLs only)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from study.data import DataError, Interactions, load_dataset, resolve_dataset
from study.data import sources as sources_module
from study.data.registry import CACHE_VARIABLE, DATA_PATH_VARIABLE
from study.data.sources import SOURCES

# (user, item, rating, unix time) rows shared by the MovieLens fixtures.
RATINGS = [(3, 50, 4, 881250949), (1, 20, 5, 881250950), (3, 10, 3, 881250900), (2, 50, 1, 891717742),
           (1, 30, 2, 881250940), (2, 10, 4, 891717700)]


@pytest.fixture(autouse=True)
def _isolated_lookup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(DATA_PATH_VARIABLE, raising=False)
    monkeypatch.setenv(CACHE_VARIABLE, str(tmp_path / "cache"))


def _write_zip(path: Path, member: str, text: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, text)
    return path


def _ml100k(folder: Path) -> Path:
    text = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS)
    return _write_zip(folder / "ml-100k.zip", "ml-100k/u.data", text)


def _expected_movielens_rows() -> list[tuple[int, int, int]]:
    return sorted((u, i, t) for u, i, _, t in RATINGS)


def _rows(data: Interactions) -> list[tuple[int, int, int]]:
    """The (raw user, raw item, timestamp) rows, sorted, mapped back through the id remapping."""
    users = data.user_labels[data.frame["user"]]
    items = data.item_labels[data.frame["item"] - 1]
    return sorted(zip(users.tolist(), items.tolist(), data.frame["timestamp"].tolist()))


def test_movielens_100k_u_data(tmp_path: Path) -> None:
    data = load_dataset(str(_ml100k(tmp_path)))
    assert _rows(data) == _expected_movielens_rows()
    assert (data.num_users, data.num_items) == (3, 4)


def test_movielens_1m_ratings_dat(tmp_path: Path) -> None:
    text = "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in RATINGS)
    data = load_dataset(str(_write_zip(tmp_path / "ml-1m.zip", "ml-1m/ratings.dat", text)))
    assert _rows(data) == _expected_movielens_rows()


def test_movielens_20m_ratings_csv(tmp_path: Path) -> None:
    text = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r}.5,{t}\n" for u, i, r, t in RATINGS)
    data = load_dataset(str(_write_zip(tmp_path / "ml-20m.zip", "ml-20m/ratings.csv", text)))
    assert _rows(data) == _expected_movielens_rows()


def test_movielens_bad_timestamp_reports_archive_member_and_line(tmp_path: Path) -> None:
    text = "1\t2\t3\t881250949\n1\t3\t3\tnever\n"
    path = _write_zip(tmp_path / "ml-100k.zip", "ml-100k/u.data", text)
    with pytest.raises(DataError, match=r"u\.data: column 'timestamp' is not a finite number at line 2"):
        load_dataset(str(path))


def _gowalla(folder: Path) -> Path:
    path = folder / "loc-gowalla_totalCheckins.txt.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("0\t2010-10-19T23:55:27Z\t30.2359091167\t-97.7951395833\t22847\n"
                     "0\t2010-10-18T22:17:43Z\t30.2691029532\t-97.7493953705\t420315\n"
                     "7\t2010-10-17T23:42:03Z\t30.2557309927\t-97.7633857727\t22847\n")
    return path


def test_snap_gowalla_checkins(tmp_path: Path) -> None:
    data = load_dataset(str(_gowalla(tmp_path)))
    expected = sorted([
        (0, 22847, int(pd.Timestamp("2010-10-19T23:55:27Z").timestamp())),
        (0, 420315, int(pd.Timestamp("2010-10-18T22:17:43Z").timestamp())),
        (7, 22847, int(pd.Timestamp("2010-10-17T23:42:03Z").timestamp())),
    ])
    assert _rows(data) == expected
    assert expected[1][2] == 1287440263  # 2010-10-18T22:17:43Z, checked independently of pandas


def test_snap_gowalla_bad_time_names_line(tmp_path: Path) -> None:
    path = tmp_path / "loc-gowalla_totalCheckins.txt.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("0\t2010-10-19T23:55:27Z\t30.2\t-97.7\t22847\n0\tlast tuesday\t30.2\t-97.7\t1\n")
    with pytest.raises(DataError, match=r"not an ISO 8601 time at line 2"):
        load_dataset(str(path))


def _point_source_at(monkeypatch: pytest.MonkeyPatch, name: str, archive: Path, md5_text: str | None) -> None:
    md5_url = None
    if md5_text is not None:
        md5_file = archive.with_name(archive.name + ".md5")
        md5_file.write_text(md5_text)
        md5_url = md5_file.as_uri()
    mirrored = dataclasses.replace(SOURCES[name], url=archive.as_uri(), md5_url=md5_url)
    monkeypatch.setitem(SOURCES, name, mirrored)


def test_download_verifies_published_md5_and_caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = _ml100k(mirror)
    digest = hashlib.md5(archive.read_bytes()).hexdigest()
    _point_source_at(monkeypatch, "ml-100k", archive, f"MD5 (ml-100k.zip) = {digest}\n")

    data = load_dataset("ml-100k")
    cached = tmp_path / "cache" / "ml-100k" / "ml-100k.zip"
    assert cached.read_bytes() == archive.read_bytes()
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert (cached.parent / "ml-100k.zip.sha256").read_text().split()[0] == sha256
    assert "MD5 verified" in capsys.readouterr().err
    assert _rows(data) == _expected_movielens_rows()

    archive.unlink()  # the second load must come from the cache, not the network
    assert resolve_dataset("ml-100k").path == cached


def test_download_md5_mismatch_raises_and_leaves_no_file(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = _ml100k(mirror)
    wrong = hashlib.md5(b"something else").hexdigest()
    _point_source_at(monkeypatch, "ml-100k", archive, f"{wrong}  ml-100k.zip\n")
    with pytest.raises(DataError, match=f"MD5 mismatch.*{wrong}"):
        load_dataset("ml-100k")
    assert not any((tmp_path / "cache" / "ml-100k").iterdir())


def test_download_without_published_checksum_records_sha256(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = _gowalla(mirror)
    _point_source_at(monkeypatch, "gowalla", archive, None)
    data = load_dataset("gowalla")
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert sha256 in capsys.readouterr().err
    assert (tmp_path / "cache" / "gowalla" / f"{archive.name}.sha256").read_text().startswith(sha256)
    assert len(data.frame) == 3


def test_download_failure_is_a_data_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(SOURCES, "ml-1m", dataclasses.replace(
        SOURCES["ml-1m"], url=(tmp_path / "nowhere" / "ml-1m.zip").as_uri(), md5_url=None))
    with pytest.raises(DataError, match="download failed"):
        load_dataset("ml-1m")


def test_download_can_be_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not download")
    monkeypatch.setattr(sources_module, "download", no_network)
    with pytest.raises(DataError, match="downloads are off"):
        resolve_dataset("ml-20m", download=False)


def test_data_path_is_searched_in_order_before_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         shared_data: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    cached = tmp_path / "cache" / "ml-100k"
    cached.mkdir(parents=True)
    pd.DataFrame({"user_id": [1], "item_id": [1], "timestamp": [1]}).to_csv(
        cached / "interactions.csv.gz", index=False)
    monkeypatch.setenv(DATA_PATH_VARIABLE, os.pathsep.join((str(empty), str(shared_data))))
    assert resolve_dataset("ml-100k").path == shared_data / "ml-100k" / "interactions.csv.gz"
    monkeypatch.setenv(DATA_PATH_VARIABLE, str(empty))
    assert resolve_dataset("ml-100k").path == cached / "interactions.csv.gz"
    assert len(load_dataset("ml-100k").frame) == 1


def test_unknown_name_lists_where_it_looked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_PATH_VARIABLE, str(tmp_path / "a"))
    with pytest.raises(DataError, match=r"unknown dataset.*a/no-such-set.*downloadable: ml-100k"):
        resolve_dataset("no-such-set")


def test_folder_without_interactions_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="folder has none of interactions.csv.gz"):
        resolve_dataset(str(tmp_path))


def test_corrupt_archive_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "ml-1m.zip"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="ml-1m.zip: not a valid zip archive"):
        load_dataset(str(path))


def test_download_failure_says_where_it_looked_and_how_to_use_local_data(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    monkeypatch.setitem(SOURCES, "ml-1m", dataclasses.replace(
        SOURCES["ml-1m"], url=(tmp_path / "nowhere" / "ml-1m.zip").as_uri(), md5_url=None))
    with pytest.raises(DataError) as caught:
        load_dataset("ml-1m")
    message = str(caught.value)
    assert "\n" not in message
    assert f"looked in {tmp_path / 'cache' / 'ml-1m'} ($CCE_STUDY_DATA_PATH is not set)" in message
    assert "download failed" in message
    assert "DIR/ml-1m/interactions.csv.gz" in message and f"export {DATA_PATH_VARIABLE}=DIR" in message
    # with the variable set, the folders searched are listed instead
    monkeypatch.setenv(DATA_PATH_VARIABLE, str(tmp_path / "mine"))
    with pytest.raises(DataError, match=r"looked in .*mine/ml-1m, .*cache/ml-1m\),"):
        load_dataset("ml-1m")
