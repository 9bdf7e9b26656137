"""Find a dataset by name or path: local folders, the cache, or a download from the original source."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from study.data.errors import DataError
from study.data.loading import is_table_file, load_interactions
from study.data.preprocess import Interactions, prepare_interactions
from study.data.sources import SOURCES, Source, fetch_source, parse_source, source_for_file
from study.data.synthetic import (
    canonical_synthetic_name,
    generate_synthetic,
    is_synthetic,
    parse_synthetic_spec,
    synthetic_catalogue,
)

DATA_PATH_VARIABLE = "CCE_STUDY_DATA_PATH"
CACHE_VARIABLE = "CCE_STUDY_CACHE"
FOLDER_FILES = ("interactions.csv.gz", "interactions.csv", "interactions.parquet")


@dataclass(frozen=True)
class ResolvedDataset:
    name: str  # as given
    path: Path
    source: Source | None  # None: a table with configurable columns; else a source's original format


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "cce-study").expanduser()


def resolve_dataset(name_or_path: str, *, cache_dir: str | Path | None = None,
                    download: bool = True, progress: bool = True) -> ResolvedDataset:
    """Locate a dataset.

    A path may name a file (csv, csv.gz, parquet, or a source's original archive such as ml-1m.zip) or a
    folder holding interactions.csv.gz. A bare name is looked up in `<dir>/<name>/interactions.csv.gz`
    for each dir of $CCE_STUDY_DATA_PATH, then in the cache ($CCE_STUDY_CACHE, default ~/.cache/cce-study),
    and for ml-100k, ml-1m, ml-20m and gowalla finally downloaded from the original source into the cache.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        source = None if is_table_file(path) else source_for_file(path)
        if source is None and not is_table_file(path):
            raise DataError(f"{path}: unsupported file type (expected csv, csv.gz, parquet or a source "
                            f"archive named {', '.join(s.filename for s in SOURCES.values())})")
        return ResolvedDataset(name_or_path, path, source)
    looks_like_path = os.sep in name_or_path or "/" in name_or_path or is_table_file(path) or not name_or_path
    if path.is_dir():
        found = _folder_file(path)
        if found is not None:
            return ResolvedDataset(name_or_path, found, None)
        if looks_like_path or name_or_path not in SOURCES:
            raise DataError(f"{path}: folder has none of {', '.join(FOLDER_FILES)}")
        # A bare known name that happens to match an unrelated folder here is still looked up as a name.
    elif looks_like_path:
        raise DataError(f"{name_or_path}: no such file or folder")

    name = name_or_path
    data_dirs = [d for d in os.environ.get(DATA_PATH_VARIABLE, "").split(os.pathsep) if d]
    searched = [Path(d).expanduser() / name for d in data_dirs]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    searched.append(cache / name)
    for folder in searched:
        found = _folder_file(folder) if folder.is_dir() else None
        if found is not None:
            return ResolvedDataset(name, found, None)
    looked = _where_looked(searched, data_dirs)
    source = SOURCES.get(name)
    if source is None:
        raise DataError(f"{name}: unknown dataset; {looked}; downloadable: {', '.join(SOURCES)}. "
                        f"{_how_to_point_at(name)}")
    archive = cache / name / source.filename
    if not archive.is_file():
        if not download:
            raise DataError(f"{name}: not found ({looked}) and downloads are off. {_how_to_point_at(name)}")
        try:
            archive = fetch_source(source, cache, progress=progress)
        except DataError as error:
            raise DataError(f"{name}: not found ({looked}), and {error}. {_how_to_point_at(name)}") from error
    return ResolvedDataset(name, archive, source)


def _where_looked(searched: list[Path], data_dirs: list[str]) -> str:
    where = f"looked in {', '.join(map(str, searched))}"
    if not data_dirs:
        where += f" (${DATA_PATH_VARIABLE} is not set)"
    return where


def _how_to_point_at(name: str) -> str:
    return (f"To use local data, put it at DIR/{name}/interactions.csv.gz (columns user_id, item_id, "
            f"timestamp) and run `export {DATA_PATH_VARIABLE}=DIR`, or pass a file path as the dataset")


def _folder_file(folder: Path) -> Path | None:
    return next((folder / f for f in FOLDER_FILES if (folder / f).is_file()), None)


def read_resolved(resolved: ResolvedDataset, *, user_col: str = "user_id", item_col: str = "item_id",
                  time_col: str = "timestamp") -> pd.DataFrame:
    if resolved.source is not None:
        return parse_source(resolved.source, resolved.path)
    return load_interactions(resolved.path, user_col=user_col, item_col=item_col, time_col=time_col)


def load_dataset(
    name_or_path: str,
    *,
    kcore: int = 0,
    cache_dir: str | Path | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    download: bool = True,
    progress: bool = True,
) -> Interactions:
    """Load, deduplicate, k-core filter and remap a dataset given by name, path or `synthetic:...` spec."""
    catalogue = None  # the items that occur; a synthetic log with catalogue=full keeps every generated item
    if is_synthetic(name_or_path):
        spec = parse_synthetic_spec(name_or_path)
        raw = generate_synthetic(spec)
        catalogue = synthetic_catalogue(spec)
        source = canonical_synthetic_name(spec)
        digest = hashlib.sha256(source.encode()).hexdigest()
    else:
        resolved = resolve_dataset(name_or_path, cache_dir=cache_dir, download=download, progress=progress)
        raw = read_resolved(resolved, user_col=user_col, item_col=item_col, time_col=time_col)
        source, digest = str(resolved.path.resolve()), file_sha256(resolved.path)
    data = prepare_interactions(raw, name=name_or_path, kcore=kcore, catalogue=catalogue)
    data.source, data.sha256 = source, digest
    return data


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes: the identity of the copy of a dataset that was read."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
