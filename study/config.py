"""The typed configuration of one training trial, parsed once at the edge (CLI or sweep spec)."""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass
from typing import Any, Literal

LossName = Literal["ce", "ce-neg", "bce", "gbce"]
SplitName = Literal["loo", "temporal"]
SamplingName = Literal["uniform", "popularity"]
# batch: one [K] set shared by the batch; sequence: [B, K]; position: [B, L, K] drawn on the host;
# drawn: per position, drawn inside the fused kernel from a seed (no index memory; negative k uniform on the
# k-th of K catalogue slices, see kernels/draw.py).
NegativeScope = Literal["batch", "sequence", "position", "drawn"]
LossImpl = Literal["auto", "triton", "torch"]
DeviceName = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "bf16", "fp32"]

METRIC_KS: tuple[int, ...] = (1, 5, 10, 20, 100)


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


@dataclass(frozen=True)
class TrainConfig:
    # data
    dataset: str = "ml-100k"
    split: SplitName = "loo"
    kcore: int = 0  # 0: no k-core filtering; k: iterate until every user and item has >= k interactions
    # loss
    loss: LossName = "ce"
    num_negatives: int = 256
    sampling: SamplingName = "uniform"
    negative_scope: NegativeScope = "batch"
    logq_correction: bool = False
    gbce_t: float = 0.75
    loss_impl: LossImpl = "auto"
    # model
    max_len: int = 200
    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.1
    # optimisation
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 100
    patience: int = 10  # stop once this many epochs passed since the best validation NDCG@10
    time_limit_s: float | None = None
    max_steps_per_epoch: int | None = None
    # evaluation
    eval_batch_size: int = 512
    eval_every: int = 1  # validate every this many epochs (and always at the last epoch trained)
    exclude_seen: bool = True
    # runtime
    device: DeviceName = "auto"
    precision: Precision = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    seed: int = 0
    memory_budget: str | None = None  # "40GiB", "8000MiB", "0.5" (fraction of the card)
    progress: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            allowed = _literal_values(f.name)
            if allowed is not None and value not in allowed:
                raise ConfigError(f"{f.name}: {value!r} is not one of {', '.join(map(str, allowed))}")
            if isinstance(value, float) and not math.isfinite(value):  # nan would pass every range check
                raise ConfigError(f"{f.name}: must be a finite number, got {value!r}")
        positive = ("num_negatives", "max_len", "hidden", "blocks", "heads", "batch_size", "epochs",
                    "patience", "eval_batch_size", "eval_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
        if self.hidden % self.heads:
            raise ConfigError(f"heads: hidden={self.hidden} is not divisible by heads={self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr: must be positive, got {self.lr!r}")
        if self.kcore < 0:
            raise ConfigError(f"kcore: must be >= 0, got {self.kcore!r}")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise ConfigError(f"time_limit_s: must be positive, got {self.time_limit_s!r}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError(f"max_steps_per_epoch: must be >= 1, got {self.max_steps_per_epoch!r}")
        if not 0.0 <= self.gbce_t <= 1.0:
            raise ConfigError(f"gbce_t: must be in [0, 1], got {self.gbce_t!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown trial setting(s): {', '.join(unknown)}")
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


@functools.cache
def _type_hints() -> dict[str, Any]:
    # Resolving the hints costs ~1 ms per field; specs build thousands of configs.
    return typing.get_type_hints(TrainConfig)


def _literal_values(name: str) -> tuple[Any, ...] | None:
    hint = _type_hints()[name]
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    return None


def config_fields() -> dict[str, Any]:
    """Field name -> resolved type hint, for parsers (CLI, sweep spec) that validate against it."""
    return dict(_type_hints())


__all__ = ["TrainConfig", "ConfigError", "METRIC_KS", "config_fields"]
