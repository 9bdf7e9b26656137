"""Trial checkpoints: the whole training state of a trial between two epochs, and the hook that saves it.

`study.training.trainer.run_trial` builds a `TrainingState` after an epoch and hands it to a `Checkpointer`;
the checkpointer decides where it goes (a folder for `cce-study train --checkpoint-dir`, Ray Tune's
checkpoints for a sweep: `study.sweep`) and when (`CheckpointPolicy`: at most every N epochs and M
minutes). A trial given a checkpointer first asks it for a state to continue from. The state holds
everything the rest of the trial depends on, so a trial continued from epoch k reaches the same
weights as one that never stopped (bit for bit on CPU): model, optimiser, every random generator
(python, numpy, torch CPU and CUDA, the batch shuffle's and the negative sampler's), the global step
(the seed of drawn negatives), the epoch records so far and the early-stopping state with the best
weights. No Ray and no remote storage here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"
# {"epoch", "global_step", "state_bytes", "config"}: what a checkpoint is, without loading it; written
# after the state file, whose size it gives, so a copy cut short is recognised as incomplete
INFO_FILE = "checkpoint.json"
MODEL_FILE = "model.pt"
# Settings that do not change what a trial computes: a checkpoint of another value still applies.
IGNORED_SETTINGS: tuple[str, ...] = ("progress",)


@dataclass(frozen=True)
class CheckpointPolicy:
    """Save after an epoch when at least `every_epochs` epochs and `every_minutes` minutes have passed
    since the last save (or the start); never after the last epoch, which the record itself covers."""

    every_epochs: int = 1
    every_minutes: float = 5.0

    def __post_init__(self) -> None:
        if isinstance(self.every_epochs, bool) or not isinstance(self.every_epochs, int) \
                or self.every_epochs < 1:
            raise ValueError(f"every_epochs: must be a positive integer, got {self.every_epochs!r}")
        if isinstance(self.every_minutes, bool) or not isinstance(self.every_minutes, int | float) \
                or not self.every_minutes >= 0:
            raise ValueError(f"every_minutes: must be a number >= 0, got {self.every_minutes!r}")


@dataclass
class TrainingState:
    """A trial after `epoch` completed epochs: what it needs to go on exactly as if never stopped."""

    config: dict[str, Any]  # TrainConfig.to_dict() of the trial that wrote it
    epoch: int  # epochs completed
    global_step: int  # optimiser steps so far (drawn negatives are seeded by it)
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Any]  # see capture_rng
    epochs: list[dict[str, Any]]  # the EpochRecords so far, as dicts
    best_score: float  # best validation score so far (-inf before any epoch)
    best_epoch: int | None
    best_val_metrics: dict[str, float]
    best_model: dict[str, torch.Tensor] | None  # the weights of the best epoch, on the CPU
    stale_epochs: int  # epochs since the best one (early stopping)
    elapsed_seconds: float  # trial time up to this state, over all attempts so far
    checkpoint_seconds: float  # time spent saving checkpoints up to this one (its own excluded)
    started_at: str | None  # when the trial's first attempt started

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainingState:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(values))
        if missing:
            raise ValueError(f"checkpoint: not a training state (missing {', '.join(missing)})")
        return cls(**{name: values[name] for name in names})


def save_state(state: TrainingState, folder: str | os.PathLike[str]) -> int:
    """Write `state` into `folder` (created if needed); returns the bytes of the state file.

    The state file is written under a temporary name and renamed, so a process killed mid-write leaves
    the previous checkpoint of the folder intact.
    """
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    state_path = target / STATE_FILE
    _atomic_torch_save(state.to_dict(), state_path)
    size = state_path.stat().st_size
    info = {"epoch": state.epoch, "global_step": state.global_step, "state_bytes": size,
            "config": state.config}
    _atomic_write_text(target / INFO_FILE, json.dumps(info, sort_keys=True))
    return size


def load_state(folder: str | os.PathLike[str]) -> TrainingState:
    """The state saved in `folder` by `save_state` (tensors on the CPU)."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint there")
    values = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: not a training state")
    return TrainingState.from_dict(values)


def read_info(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The small description of the checkpoint in `folder` (epoch, config), or None if there is none
    or its state file is incomplete (a copy cut short)."""
    path, state_path = Path(folder) / INFO_FILE, Path(folder) / STATE_FILE
    if not path.is_file() or not state_path.is_file():
        return None
    info = dict(json.loads(path.read_text()))
    return info if state_path.stat().st_size == info.get("state_bytes") else None


def check_same_config(saved: Mapping[str, Any], config: Mapping[str, Any], where: str) -> None:
    """ValueError naming the first setting in which a checkpoint's trial differs from this one."""
    for name in sorted(set(saved) | set(config)):
        if name in IGNORED_SETTINGS:
            continue
        if saved.get(name) != config.get(name):
            raise ValueError(f"{where}: holds a checkpoint of another configuration "
                             f"({name} {saved.get(name)!r} there, {config.get(name)!r} here)")


# ----------------------------------------------------------------------------------------------------
# random generators


def capture_rng(generators: Mapping[str, torch.Generator]) -> dict[str, Any]:
    """Every random generator a trial draws from: python, numpy, torch (CPU and each CUDA device: dropout),
    and the trial's own `generators` by name (batch shuffle, negative sampler)."""
    name, keys, position, has_gauss, cached_gauss = np.random.get_state(legacy=True)
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {
        "python": random.getstate(),
        "numpy": (str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(position),
                  int(has_gauss), float(cached_gauss)),
        "torch": torch.get_rng_state(),
        "cuda": list(cuda),
        "generators": {key: generator.get_state() for key, generator in generators.items()},
    }


def restore_rng(rng: Mapping[str, Any], generators: Mapping[str, torch.Generator]) -> None:
    """Put every generator back where `capture_rng` found it (the same `generators` by name)."""
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, position, has_gauss, cached_gauss = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gauss))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        if not torch.cuda.is_available():
            raise ValueError("checkpoint: written on a CUDA device, cannot continue without one")
        torch.cuda.set_rng_state_all(rng["cuda"])
    saved = rng["generators"]
    if set(saved) != set(generators):
        raise ValueError(f"checkpoint: holds generators {sorted(saved)}, the trial has {sorted(generators)}")
    for key, generator in generators.items():
        generator.set_state(saved[key])


# ----------------------------------------------------------------------------------------------------
# the trainer's hook


class Checkpointer:
    """Where a trial's checkpoints and best model go; the trainer calls, in this order:

    `load()` once (a state to continue from, or None), `start(epoch)` with the epoch it starts after,
    then after each epoch `due(epoch)` and, when due, `save(state)`; at the end of an `ok` trial
    `keep_model(payload)` if `keeps_model`; and `finish()` when the trial has its record (whatever its
    status). Subclasses implement `load`, `_write` and `_keep`, and may override `finish`.
    """

    def __init__(self, policy: CheckpointPolicy | None = None, *, keep_model: bool = True) -> None:
        self.policy = policy or CheckpointPolicy()
        self.keeps_model = keep_model
        self._last_epoch = 0
        self._last_time = time.monotonic()

    def load(self) -> TrainingState | None:
        raise NotImplementedError

    def start(self, epoch: int) -> None:
        self._last_epoch, self._last_time = epoch, time.monotonic()

    def due(self, epoch: int) -> bool:
        minutes = (time.monotonic() - self._last_time) / 60.0
        return epoch - self._last_epoch >= self.policy.every_epochs and minutes >= self.policy.every_minutes

    def save(self, state: TrainingState) -> int:
        """Save `state`; returns the bytes it takes."""
        size = self._write(state)
        self.start(state.epoch)
        return size

    def keep_model(self, payload: dict[str, Any]) -> str:
        """Keep the trial's best model (a `study.training.export` model payload); returns where it is."""
        return self._keep(payload)

    def finish(self) -> None:
        """The trial is over: its checkpoints are no longer needed (here: nothing to do)."""

    def _write(self, state: TrainingState) -> int:
        raise NotImplementedError

    def _keep(self, payload: dict[str, Any]) -> str:
        raise NotImplementedError


class FolderCheckpointer(Checkpointer):
    """Checkpoints in one local folder: `state.pt` (the latest only, replaced atomically) and, at the end,
    `model.pt` (the best-validation model). A trial started on a folder holding a checkpoint of the same
    configuration continues from it (of another configuration: ValueError from the trainer); a trial
    that ends removes its state, keeping model.pt."""

    def __init__(self, folder: str | os.PathLike[str], policy: CheckpointPolicy | None = None, *,
                 keep_model: bool = True) -> None:
        super().__init__(policy, keep_model=keep_model)
        self.folder = Path(folder)

    def load(self) -> TrainingState | None:
        if read_info(self.folder) is None:
            return None
        return load_state(self.folder)

    def finish(self) -> None:
        """The trial is over: its state goes (the same command then starts afresh); model.pt stays."""
        for name in (INFO_FILE, STATE_FILE):
            (self.folder / name).unlink(missing_ok=True)

    def _write(self, state: TrainingState) -> int:
        return save_state(state, self.folder)

    def _keep(self, payload: dict[str, Any]) -> str:
        path = self.folder / MODEL_FILE
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_torch_save(payload, path)
        return str(path.resolve())


def estimate_checkpoint_bytes(num_items: int, *, hidden: int, max_len: int, blocks: int) -> int:
    """Bytes of a SASRec trial's checkpoint state: float32 weights, Adam's two moments, and the best
    epoch's copy of the weights (4 x the parameters), without the small RNG and record part."""
    per_block = 3 * hidden * hidden + 3 * hidden + hidden * hidden + hidden  # attention: qkv, out
    per_block += 2 * (hidden * hidden + hidden)  # feed-forward
    per_block += 2 * 2 * hidden  # two LayerNorms
    parameters = (num_items + 1) * hidden + max_len * hidden + blocks * per_block + 2 * hidden
    return 4 * 4 * parameters


def _atomic_torch_save(values: Any, path: Path) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        temporary = Path(handle.name)
    try:
        torch.save(values, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _atomic_write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


__all__ = [
    "CheckpointPolicy", "TrainingState", "Checkpointer", "FolderCheckpointer", "save_state", "load_state",
    "read_info", "check_same_config", "capture_rng", "restore_rng", "estimate_checkpoint_bytes",
    "STATE_FILE", "INFO_FILE", "MODEL_FILE",
]
