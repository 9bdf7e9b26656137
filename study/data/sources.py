"""Public datasets from their original sources: download into the cache, verify, parse the source format."""

from __future__ import annotations

import hashlib
import io
import re
import sys
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
from tqdm import tqdm

from study.data.errors import DataError
from study.data.loading import READ_ERRORS, validate_interactions


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    md5_url: str | None  # the checksum file the source publishes next to the archive, if it does
    format: str  # a key of PARSERS

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_GROUPLENS = "https://files.grouplens.org/datasets/movielens"
SOURCES: dict[str, Source] = {
    **{
        name: Source(name, f"{_GROUPLENS}/{name}.zip", f"{_GROUPLENS}/{name}.zip.md5",
                     f"movielens-{name.removeprefix('ml-')}")
        for name in ("ml-100k", "ml-1m", "ml-20m")
    },
    "gowalla": Source("gowalla", "https://snap.stanford.edu/data/loc-gowalla_totalCheckins.txt.gz", None,
                      "snap-gowalla"),
}


def _zip_member(path: Path, basename: str) -> bytes:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n == basename or n.endswith("/" + basename)]
            if not names:
                raise DataError(f"{path}: the archive has no {basename}")
            return archive.read(names[0])
    except (zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise DataError(f"{path}: not a valid zip archive ({error})") from error


def _read_delimited(data: bytes | Path, *, source: str, sep: str, header: bool, columns: dict[int, str],
                    compression: Literal["infer"] | None = None) -> pd.DataFrame:
    """Read selected columns (position -> canonical name) of a delimited text; line numbers count from 1."""
    buffer = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        frame = pd.read_csv(buffer, sep=sep, header=None, skiprows=1 if header else 0, usecols=list(columns),
                            compression=compression)
    except READ_ERRORS as error:
        raise DataError(f"{source}: cannot parse ({error})") from error
    return frame.rename(columns=columns)


def parse_movielens_100k(path: Path) -> pd.DataFrame:
    """`u.data`: tab-separated user id, item id, rating, Unix time; no header."""
    source = f"{path}:u.data"
    frame = _read_delimited(_zip_member(path, "u.data"), source=source, sep="\t", header=False,
                            columns={0: "user_id", 1: "item_id", 3: "timestamp"})
    return validate_interactions(frame[["user_id", "item_id", "timestamp"]], source=source, first_line=1)


def parse_movielens_1m(path: Path) -> pd.DataFrame:
    """`ratings.dat`: UserID::MovieID::Rating::Timestamp; no header."""
    source = f"{path}:ratings.dat"
    # '::' would force pandas' slow Python parser; a one-byte separator keeps the C parser.
    data = _zip_member(path, "ratings.dat").replace(b"::", b"\t")
    frame = _read_delimited(data, source=source, sep="\t", header=False,
                            columns={0: "user_id", 1: "item_id", 3: "timestamp"})
    return validate_interactions(frame[["user_id", "item_id", "timestamp"]], source=source, first_line=1)


def parse_movielens_20m(path: Path) -> pd.DataFrame:
    """`ratings.csv`: header userId,movieId,rating,timestamp."""
    source = f"{path}:ratings.csv"
    frame = _read_delimited(_zip_member(path, "ratings.csv"), source=source, sep=",", header=True,
                            columns={0: "user_id", 1: "item_id", 3: "timestamp"})
    return validate_interactions(frame[["user_id", "item_id", "timestamp"]], source=source, first_line=2)


def parse_snap_gowalla(path: Path) -> pd.DataFrame:
    """`loc-gowalla_totalCheckins.txt.gz`: user, ISO 8601 check-in time, latitude, longitude, location id."""
    source = str(path)
    frame = _read_delimited(path, source=source, sep="\t", header=False, compression="infer",
                            columns={0: "user_id", 1: "time", 4: "item_id"})
    times = pd.to_datetime(frame["time"], format="%Y-%m-%dT%H:%M:%SZ", errors="coerce", utc=True)
    bad = times.isna().to_numpy()
    if bad.any():
        row = int(bad.argmax())
        raise DataError(f"{source}: check-in time (column 2) is not an ISO 8601 time at line {row + 1} "
                        f"(value {frame['time'].iloc[row]!r})")
    epoch = pd.Timestamp("1970-01-01", tz="UTC")
    frame["timestamp"] = (times - epoch) // pd.Timedelta(seconds=1)
    return validate_interactions(frame[["user_id", "item_id", "timestamp"]], source=source, first_line=1)


PARSERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    "movielens-100k": parse_movielens_100k,
    "movielens-1m": parse_movielens_1m,
    "movielens-20m": parse_movielens_20m,
    "snap-gowalla": parse_snap_gowalla,
}


def source_for_file(path: Path) -> Source | None:
    """The source whose original archive has this file name (ml-1m.zip, loc-gowalla_totalCheckins.txt.gz)."""
    return next((s for s in SOURCES.values() if s.filename == path.name), None)


def parse_source(source: Source, path: Path) -> pd.DataFrame:
    return PARSERS[source.format](path)


def fetch_source(source: Source, cache_dir: Path, *, progress: bool = True) -> Path:
    """The source's archive in `<cache_dir>/<name>/`, downloaded and verified on first use."""
    destination = cache_dir / source.name / source.filename
    if destination.is_file():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    try:
        download(source.url, partial, progress=progress)
        verify(source, partial)
        partial.replace(destination)
    finally:
        partial.unlink(missing_ok=True)
    return destination


def download(url: str, destination: Path, *, progress: bool = True) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as out:
            size = response.headers.get("Content-Length")
            with tqdm(total=int(size) if size else None, unit="B", unit_scale=True, file=sys.stderr,
                      desc=f"downloading {url.rsplit('/', 1)[-1]}", disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as error:
        raise DataError(f"{url}: download failed ({error})") from error


def verify(source: Source, path: Path) -> None:
    """Check the published MD5 when the source publishes one; always record and print the SHA-256."""
    published = _published_md5(source.md5_url) if source.md5_url else None
    if published is not None:
        actual = _file_digest(path, "md5")
        if actual != published:
            raise DataError(f"{source.url}: MD5 mismatch (got {actual}, the source publishes {published})")
    sha256 = _file_digest(path, "sha256")
    sha_file = path.parent / (source.filename + ".sha256")
    sha_file.write_text(f"{sha256}  {source.filename}\n")
    how = "MD5 verified" if published else "no published checksum"
    print(f"{source.name}: {how}; sha256 {sha256} recorded in {sha_file}", file=sys.stderr)


def _published_md5(url: str) -> str | None:
    """The MD5 in a published checksum file, or None when the source publishes none."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            text = response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        if error.code in (403, 404, 410):  # the source publishes no checksum for this archive
            return None
        raise DataError(f"{url}: cannot fetch the checksum ({error})") from error
    except urllib.error.URLError as error:
        if isinstance(error.reason, FileNotFoundError):  # a file:// mirror without a checksum file
            return None
        raise DataError(f"{url}: cannot fetch the checksum ({error})") from error
    except OSError as error:
        raise DataError(f"{url}: cannot fetch the checksum ({error})") from error
    match = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if match is None:
        raise DataError(f"{url}: no MD5 digest in the published checksum file")
    return match.group(0).lower()


def _file_digest(path: Path, algorithm: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()
