"""Where a sweep keeps its trials' checkpoints and best models: a folder or a URI (s3://, gs://, hdfs://,
file://) that Ray Tune and this module both reach through pyarrow's filesystems.

Layout under the storage root (`cce-study sweep --storage`, `[checkpoint] storage`):

    <root>/<sweep>/run-<UTC time>-<pid>/             Ray Tune's experiment of one `cce-study sweep` run
        <trial id>-<Tune's trial id>/checkpoint_000004/state.pt, checkpoint.json
    <root>/<sweep>/models/<trial id>/model.pt        the best-validation model of an ok trial

A trial's checkpoints are found by its id (a hash of the sweep and configuration), so a later run of
the same sweep (`--resume` after the driver died) continues from them. Checkpoints of finished trials
are deleted; run folders that hold no checkpoint any more go with them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from study.training.checkpoint import INFO_FILE, MODEL_FILE, STATE_FILE

RUN_PREFIX = "run-"
CHECKPOINT_PREFIX = "checkpoint_"  # Ray Tune's name for a trial's checkpoint folders
MODELS_FOLDER = "models"


def absolute_root(root: str | os.PathLike[str]) -> str:
    """A local path made absolute (Ray and pyarrow need that); a URI as it is."""
    text = os.fspath(root)
    if _is_uri(text):
        return text
    return str(Path(text).expanduser().resolve())


def join(root: str, *parts: str) -> str:
    """`root` (a path or a URI, perhaps with ?query options) extended by path parts."""
    if not _is_uri(root):
        return str(Path(root, *parts))
    split = urlsplit(root)
    path = "/".join([split.path.rstrip("/"), *parts])
    return urlunsplit((split.scheme, split.netloc, path, split.query, split.fragment))


def filesystem(location: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path on it) of a local path or URI."""
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(absolute_root(location))
    except (ValueError, OSError) as exc:
        raise ValueError(f"storage: cannot open {location!r} ({exc})") from exc


def read_bytes(location: str) -> bytes:
    """The whole file at a local path or URI."""
    fs, path = filesystem(location)
    try:
        with fs.open_input_stream(path) as stream:
            return bytes(stream.read())
    except FileNotFoundError:
        raise FileNotFoundError(f"{location}: no such file") from None


@dataclass(frozen=True)
class FoundCheckpoint:
    location: str  # the checkpoint folder, as a path or URI under the root
    path: str  # the same on the store's filesystem
    epoch: int
    run: str


@dataclass(frozen=True)
class DiskUsage:
    checkpoint_bytes: int
    trials_with_checkpoints: int
    model_bytes: int
    models: int
    total_bytes: int  # everything under the sweep's folder (Tune's run files too)


class CheckpointStore:
    """A sweep's folder under a storage root; every method works the same on local and remote storage."""

    def __init__(self, root: str | os.PathLike[str], sweep: str) -> None:
        self.root = absolute_root(root)
        self.sweep = sweep
        self.location = join(self.root, sweep)  # Ray Tune's storage_path for this sweep's runs
        self.fs, self.path = filesystem(self.location)

    # -- naming

    @staticmethod
    def new_run_name() -> str:
        return f"{RUN_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"

    @staticmethod
    def trial_dirname(trial_id: str, tune_trial_id: str) -> str:
        # Tune's id keeps two Optuna samples of one configuration in one run apart
        return f"{trial_id}-{tune_trial_id}"

    def model_location(self, trial_id: str) -> str:
        return join(self.location, MODELS_FOLDER, trial_id, MODEL_FILE)

    # -- checkpoints

    def latest_checkpoint(self, trial_id: str) -> FoundCheckpoint | None:
        """The checkpoint of `trial_id` with the most epochs, over every run of the sweep."""
        best: FoundCheckpoint | None = None
        for run, trial_path in self._trial_folders({trial_id}):
            for checkpoint_path in self._children(trial_path, CHECKPOINT_PREFIX):
                info = self._read_info(checkpoint_path)
                if info is None:
                    continue  # being written, or left incomplete by a killed process
                epoch = int(info["epoch"])
                if best is None or (epoch, run) > (best.epoch, best.run):
                    relative = checkpoint_path[len(self.path):].lstrip("/")
                    best = FoundCheckpoint(join(self.location, *relative.split("/")), checkpoint_path,
                                           epoch, run)
        return best

    def download(self, found: FoundCheckpoint, folder: str | os.PathLike[str]) -> None:
        import pyarrow.fs

        Path(folder).mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(found.path, str(Path(folder).resolve()), source_filesystem=self.fs,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())

    def delete_checkpoints(self, trial_ids: Iterable[str]) -> None:
        """Delete every checkpoint of these trials, in every run (their kept models stay)."""
        wanted = set(trial_ids)
        if not wanted:
            return
        for _, trial_path in self._trial_folders(wanted):
            for checkpoint_path in self._children(trial_path, CHECKPOINT_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.delete_dir(checkpoint_path)

    def checkpointed_trials(self) -> set[str]:
        """Ids of the trials that hold at least one checkpoint, in any run."""
        found = set()
        for run_path in self._children(self.path, RUN_PREFIX):
            for trial_path in self._children(run_path, ""):
                if self._children(trial_path, CHECKPOINT_PREFIX):
                    found.add(trial_path.rsplit("/", 1)[-1].rsplit("-", 1)[0])
        return found

    def remove_finished_runs(self, *, keep: str | None = None) -> None:
        """Delete the run folders (but `keep`) that hold no checkpoint any more: Tune's files of runs
        whose every trial has finished."""
        for run_path in self._children(self.path, RUN_PREFIX):
            if Path(run_path).name == keep:
                continue
            if not any(self._children(trial, CHECKPOINT_PREFIX) for trial in self._children(run_path, "")):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.delete_dir(run_path)

    # -- models

    def put_model(self, payload: dict[str, Any], trial_id: str) -> str:
        """Write a model payload as the trial's kept model; returns its location."""
        import torch

        location = self.model_location(trial_id)
        _, path = filesystem(location)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / MODEL_FILE
            torch.save(payload, local)
            partial = f"{path}.partial"
            with self.fs.open_output_stream(partial) as stream, local.open("rb") as source:
                while chunk := source.read(1 << 24):
                    stream.write(chunk)
            self.fs.move(partial, path)
        return location

    # -- space

    def disk_usage(self) -> DiskUsage:
        import pyarrow.fs

        checkpoint_bytes = model_bytes = total = 0
        trials: set[str] = set()
        models: set[str] = set()
        try:
            infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.path, recursive=True,
                                                                  allow_not_found=True))
        except FileNotFoundError:
            infos = []
        for info in infos:
            if info.type != pyarrow.fs.FileType.File:
                continue
            size = int(info.size or 0)
            total += size
            parts = info.path[len(self.path):].strip("/").split("/")
            if parts[0] == MODELS_FOLDER and len(parts) >= 3:
                model_bytes += size
                models.add(parts[1])
            elif (parts[0].startswith(RUN_PREFIX) and len(parts) >= 4
                  and parts[2].startswith(CHECKPOINT_PREFIX)):
                checkpoint_bytes += size
                trials.add(parts[1])
        return DiskUsage(checkpoint_bytes, len(trials), model_bytes, len(models), total)

    # -- listing

    def _children(self, path: str, prefix: str) -> list[str]:
        import pyarrow.fs

        try:
            infos = self.fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(info.path for info in infos
                      if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith(prefix))

    def _trial_folders(self, trial_ids: set[str]) -> Iterator[tuple[str, str]]:
        """(run name, trial folder) of every folder of these trials in every run."""
        for run_path in self._children(self.path, RUN_PREFIX):
            for trial_path in self._children(run_path, ""):
                name = trial_path.rsplit("/", 1)[-1]
                if name.rsplit("-", 1)[0] in trial_ids or name in trial_ids:
                    yield run_path.rsplit("/", 1)[-1], trial_path

    def _read_info(self, checkpoint_path: str) -> dict[str, Any] | None:
        """The checkpoint's description, or None unless its state file is complete."""
        try:
            with self.fs.open_input_stream(f"{checkpoint_path}/{INFO_FILE}") as stream:
                info = dict(json.load(io.BytesIO(stream.read())))
            state = self.fs.get_file_info(f"{checkpoint_path}/{STATE_FILE}")
        except (FileNotFoundError, ValueError):
            return None
        return info if state.size is not None and state.size == info.get("state_bytes") else None


def _is_uri(text: str) -> bool:
    return "://" in text


__all__ = ["CheckpointStore", "FoundCheckpoint", "DiskUsage", "absolute_root", "join", "filesystem",
           "read_bytes", "RUN_PREFIX", "MODELS_FOLDER"]
