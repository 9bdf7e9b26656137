"""The typed configuration of one training trial, parsed once at the edge (CLI or sweep spec).

Every rule about a trial's settings is stated here, once:
- each field's type and range (`check_field`), checked for every field when a TrainConfig is made;
- the rules between fields (`check_combinations`), checked when a TrainConfig is made, so that no
  entry point (`train`, `plan`, a sweep specification, a sweep's worker) can hold a configuration the
  trainer would refuse;
- the rule that needs the catalogue size, known once the dataset is loaded (`check_for_catalogue`).

Each field also carries its command-line flag and help (`OPTIONS`, from the field's metadata): the
options of `cce-study train` and the axes of `cce-study plan` are built from them. `FieldType`,
`checked_value` and `value_from_text` unwrap a field's type hint and convert values for every parser.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from study.units import TiB, parse_budget

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
# Full-catalogue evaluation scores users in chunks of at most this many scores ([rows, items] float32:
# 64 MiB). Larger chunks are faster on a GPU, where ranking a chunk is bound by kernel launches, and take
# more memory (BENCHMARKS.md section 4: 2^26 scores, 2.8-3.5x faster, +0.2-0.4 GiB of peak).
DEFAULT_EVAL_MAX_SCORES = 1 << 24


def eval_chunk_rows(max_scores: int, num_items: int) -> int:
    """Users scored at once when at most `max_scores` scores of `num_items` items may exist: one at least."""
    return max(1, max_scores // num_items)


BINARY_LOSSES: tuple[str, ...] = ("bce", "gbce")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


class FieldError(ConfigError):
    """One field's value is invalid on its own: `field` and `reason` for parsers that name it their way."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _option(default: Any, flag: str, help: str, *, sets: bool | None = None) -> Any:
    """A field with its command-line option. `sets`: for a boolean field, the value its flag (which
    takes no argument) sets."""
    metadata: dict[str, Any] = {"flag": flag, "help": help}
    if sets is not None:
        metadata["sets"] = sets
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TrainConfig:
    # data
    dataset: str = _option("ml-100k", "--dataset",
                           "dataset name, folder or interaction file (CSV / CSV.gz / Parquet)")
    split: SplitName = _option("loo", "--split", "evaluation split")
    # k: iterate until every user and item has >= k interactions
    kcore: int = _option(0, "--kcore", "k-core filter (0: none)")
    # loss
    loss: LossName = _option("ce", "--loss", "training loss")
    num_negatives: int = _option(256, "--negatives", "negatives per row for ce-neg, bce and gbce")
    sampling: SamplingName = _option("uniform", "--sampling", "how negatives are sampled")
    negative_scope: NegativeScope = _option("batch", "--negative-scope",
                                            "who shares a set of negatives (drawn: inside the kernel)")
    logq_correction: bool = _option(False, "--logq", "apply the logQ correction to sampled negatives",
                                    sets=True)
    gbce_t: float = _option(0.75, "--gbce-t", "gBCE calibration parameter t")
    loss_impl: LossImpl = _option("auto", "--impl",
                                  "loss implementation for ce and ce-neg (auto: triton on CUDA)")
    # model
    max_len: int = _option(200, "--max-len", "sequence length (most recent items)")
    hidden: int = _option(64, "--hidden", "embedding and hidden size")
    blocks: int = _option(2, "--blocks", "transformer blocks")
    heads: int = _option(1, "--heads", "attention heads")
    dropout: float = _option(0.1, "--dropout", "dropout rate")
    # optimisation
    batch_size: int = _option(128, "--batch-size", "training sequences per step")
    lr: float = _option(1e-3, "--lr", "Adam learning rate")
    weight_decay: float = _option(0.0, "--weight-decay", "Adam weight decay")
    epochs: int = _option(100, "--epochs", "maximum number of epochs")
    patience: int = _option(10, "--patience", "epochs without a better validation NDCG@10 before stopping")
    patience_steps: int = _option(0, "--patience-steps",
                                  "also wait this many optimiser steps since the best epoch before stopping "
                                  "(0: epochs only): the same patience at every batch size, which epochs "
                                  "are not (an epoch is fewer steps at a larger batch)")
    time_limit_s: float | None = _option(None, "--time-limit", "wall-clock limit of the trial in seconds")
    max_steps_per_epoch: int | None = _option(None, "--max-steps-per-epoch",
                                              "cap on training steps per epoch")
    # evaluation
    eval_batch_size: int = _option(512, "--eval-batch-size", "users per evaluation batch")
    eval_every: int = _option(1, "--eval-every", "validate every N epochs (and at the last epoch trained)")
    eval_max_scores: int = _option(DEFAULT_EVAL_MAX_SCORES, "--eval-max-scores",
                                   "scores alive at once in full-catalogue evaluation (users per chunk = "
                                   "this // items): larger is faster on a GPU and takes more memory")
    exclude_seen: bool = _option(True, "--include-seen",
                                 "keep items of a user's history in the ranking (default: excluded)",
                                 sets=False)
    # runtime
    device: DeviceName = _option("auto", "--device", "where to train")
    precision: Precision = _option("auto", "--precision",
                                   "numeric precision (auto: bf16 autocast on CUDA, fp32 on CPU)")
    seed: int = _option(0, "--seed", "random seed: on CPU the same seed, data, versions and thread count "
                        "(torch.get_num_threads(), e.g. OMP_NUM_THREADS) give the same losses and metrics; "
                        "CUDA runs are not bit-reproducible")
    memory_budget: str | None = _option(None, "--memory-budget",
                                        "GPU memory budget, e.g. 40GiB, 8000MiB or 0.5 of the card")
    progress: bool = _option(True, "--no-progress", "no progress bar on stderr", sets=False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_field(f.name, getattr(self, f.name))
        check_combinations(self)

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


# TrainConfig fields added after databases existed, with the default that reproduces the behaviour before
# them. A field at that default is left out of a trial id's hash (study.sweep.spec.trial_id), so trials
# recorded before the field came keep their ids and `--resume` still skips them; and rows recorded before it
# read it as that default (study.database.results_db.load_trials), so they group with newer rows as one
# configuration. A new field's default must therefore keep the old behaviour.
FIELDS_ADDED_LATER: dict[str, Any] = {"eval_every": 1, "eval_max_scores": DEFAULT_EVAL_MAX_SCORES,
                                      "patience_steps": 0}


# ----------------------------------------------------------------------------------------------------
# the rules


_POSITIVE_INTEGERS = ("num_negatives", "max_len", "hidden", "blocks", "heads", "batch_size", "epochs",
                      "patience", "eval_batch_size", "eval_every", "eval_max_scores")


def check_field(name: str, value: Any) -> Any:
    """`value` as field `name` holds it, if the field may take it whatever the other fields are (its type,
    allowed values and range; an int given for a float field becomes a float); FieldError otherwise."""
    try:
        value = checked_value(_type_hints()[name], value)
    except ConfigError as exc:
        raise FieldError(name, str(exc)) from None
    reason = _range_error(name, value)
    if reason is not None:
        raise FieldError(name, reason)
    return value


def _range_error(name: str, value: Any) -> str | None:
    if name in _POSITIVE_INTEGERS and value < 1:
        return f"must be a positive integer, got {value!r}"
    if name == "dropout" and not 0.0 <= value < 1.0:
        return f"must be in [0, 1), got {value!r}"
    if name == "lr" and not value > 0:
        return f"must be positive, got {value!r}"
    if name in ("kcore", "patience_steps") and value < 0:
        return f"must be >= 0, got {value!r}"
    if name == "time_limit_s" and value is not None and value <= 0:
        return f"must be positive, got {value!r}"
    if name == "max_steps_per_epoch" and value is not None and value < 1:
        return f"must be >= 1, got {value!r}"
    if name == "gbce_t" and not 0.0 <= value <= 1.0:
        return f"must be in [0, 1], got {value!r}"
    if name == "memory_budget" and value is not None:
        try:
            parse_budget(value, TiB)  # any card: a fraction is resolved on the trial's card
        except ValueError as exc:
            return str(exc).removeprefix("memory_budget: ")
    return None


def check_combinations(config: TrainConfig) -> None:
    """The rules between fields (TrainConfig checks them when it is made); ConfigError naming a field.

    Settings of sampled negatives (num_negatives, sampling, negative_scope, logq_correction) are
    ignored by the full-catalogue "ce", which samples nothing; the binary losses take no logQ correction.
    """
    if config.hidden % config.heads:
        raise ConfigError(f"heads: hidden={config.hidden} is not divisible by heads={config.heads}")
    if config.logq_correction and config.loss in BINARY_LOSSES:
        raise ConfigError(f"logq_correction: applies to the softmax loss ce-neg, not to {config.loss!r}")
    if config.negative_scope == "drawn" and config.loss in BINARY_LOSSES:
        raise ConfigError(f"negative_scope: 'drawn' negatives exist only inside the fused ce-neg loss, "
                          f"not for loss {config.loss!r}; use batch, sequence or position")
    if config.negative_scope == "drawn" and config.loss == "ce-neg" and config.sampling != "uniform":
        raise ConfigError("sampling: the kernel draws 'drawn' negatives uniformly; "
                          f"{config.sampling!r} sampling needs negative_scope batch, sequence or position")


def check_for_catalogue(config: TrainConfig, num_items: int) -> None:
    """The rule that needs the catalogue size: sampled losses draw at most `num_items` negatives."""
    if config.loss != "ce" and config.num_negatives > num_items:
        raise ConfigError(f"num_negatives: {config.num_negatives} exceeds the catalogue of {num_items} items")


# ----------------------------------------------------------------------------------------------------
# types and values, for the parsers (command line, sweep specification)


@dataclass(frozen=True)
class FieldType:
    """A type hint unwrapped: `base` is bool, int, float or str (for a Literal, the type of its values),
    `choices` a Literal's values, `optional` whether None is allowed (`X | None`)."""

    base: type
    choices: tuple[Any, ...] | None = None
    optional: bool = False

    @property
    def metavar(self) -> str:
        """How `--help` shows a value: "{a,b}" for choices, N for an int, X for a float, else TEXT."""
        if self.choices is not None:
            return "{" + ",".join(map(str, self.choices)) + "}"
        return {int: "N", float: "X"}.get(self.base, "TEXT")


@functools.cache
def unwrap(hint: Any) -> FieldType:
    """The FieldType of a type hint: int, float, str, bool, a Literal, or one of them | None (a FieldType
    is returned as it is)."""
    if isinstance(hint, FieldType):
        return hint
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) != 1 or len(args) == len(typing.get_args(hint)):
            raise TypeError(f"no conversion for type {hint!r}")
        hint, optional = args[0], True
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        return FieldType(type(choices[0]), choices, optional)
    if hint not in (bool, int, float, str):
        raise TypeError(f"no conversion for type {hint!r}")
    return FieldType(hint, None, optional)


def field_type(name: str) -> FieldType:
    """The FieldType of TrainConfig field `name`."""
    return unwrap(_type_hints()[name])


def checked_value(hint: Any, value: Any) -> Any:
    """`value` if it has type `hint` (an int is accepted for a float and returned as a float);
    ConfigError with the reason otherwise (the caller names the field, option or key)."""
    kind = unwrap(hint)
    if value is None and kind.optional:
        return None
    if kind.choices is not None:
        if isinstance(value, bool) or value not in kind.choices:
            raise ConfigError(f"{value!r} is not one of {', '.join(map(str, kind.choices))}")
        return value
    if kind.base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"must be true or false, got {value!r}")
        return value
    if kind.base is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"must be an integer, got {value!r}")
        return value
    if kind.base is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"must be a number, got {value!r}")
        if not math.isfinite(value):  # nan would pass every range check
            raise ConfigError(f"must be a finite number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"must be a string, got {value!r}")
    return value


def value_from_text(hint: Any, text: str) -> Any:
    """Command-line text converted to type `hint` and checked (see `checked_value`); "none" is None
    for an optional type."""
    kind = unwrap(hint)
    if kind.optional and text.strip().lower() == "none":
        return None
    value: Any = text
    if kind.choices is None and kind.base in (int, float):
        try:
            value = kind.base(text)
        except ValueError:
            noun = "an integer" if kind.base is int else "a number"
            raise ConfigError(f"must be {noun}, got {text!r}") from None
    elif kind.base is bool:
        raise ConfigError(f"a switch without a value, got {text!r}")
    return checked_value(hint, value)


@functools.cache
def _type_hints() -> dict[str, Any]:
    # Resolving the hints costs ~1 ms per field; specs build thousands of configs.
    return typing.get_type_hints(TrainConfig)


def config_fields() -> dict[str, Any]:
    """Field name -> resolved type hint, for parsers (CLI, sweep spec) that validate against it."""
    return dict(_type_hints())


# ----------------------------------------------------------------------------------------------------
# command-line options


@dataclass(frozen=True)
class Option:
    """The command-line option of a TrainConfig field. `sets`: for a boolean field, the value its flag
    (which takes no argument) sets; None for an option that takes a value."""

    flag: str
    field: str
    help: str
    sets: bool | None = None

    @property
    def default(self) -> Any:
        return TrainConfig.__dataclass_fields__[self.field].default


# Every TrainConfig field, in declaration order (the order `--help` lists them).
OPTIONS: tuple[Option, ...] = tuple(
    Option(f.metadata["flag"], f.name, f.metadata["help"], f.metadata.get("sets"))
    for f in dataclasses.fields(TrainConfig)
)


def option_for(field: str) -> Option:
    """The command-line option of TrainConfig field `field`."""
    for option in OPTIONS:
        if option.field == field:
            return option
    raise KeyError(field)


__all__ = ["TrainConfig", "ConfigError", "FieldError", "METRIC_KS", "BINARY_LOSSES", "config_fields",
           "check_field", "check_combinations", "check_for_catalogue", "FieldType", "unwrap", "field_type",
           "checked_value", "value_from_text", "Option", "OPTIONS", "option_for"]
