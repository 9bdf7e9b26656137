"""Sweep specifications: TOML parsed once into frozen dataclasses, validated with errors naming the key.

A specification names the sweep, its dataset(s) and split, the fixed trial settings (`[trial]`, any
TrainConfig field), the axes (`[axes]`, lists over TrainConfig fields), optional extra trial points
(`[[extra_trials]]`), the search (`[search]`: a full grid or a multi-objective Optuna search), the memory
budget, per-trial resources and time limit, the number of repeats (seeds), the trial function, and
where and how often trials save checkpoints (`[checkpoint]`). See `sweeps/demo.toml` for a commented
example.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import re
import tomllib
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from study.config import FIELDS_ADDED_LATER, ConfigError, FieldError, TrainConfig, check_field, config_fields
from study.units import parse_budget

SearchKind = Literal["grid", "optuna"]
OptunaSampler = Literal["tpe", "nsga2"]

# Settings that have their own top-level key, so they cannot also be fixed in [trial]; memory_budget
# may still vary per trial (an axis or an extra trial), e.g. one deliberately tight budget.
TOP_LEVEL_SETTINGS: dict[str, str] = {
    "dataset": "datasets",
    "split": "split",
    "memory_budget": "memory_budget",
    "time_limit_s": "time_limit_s",
}
PER_TRIAL_OVERRIDES: tuple[str, ...] = ("memory_budget",)
# The axes a spec must sweep (the study is about negatives x batch size x sequence length).
REQUIRED_AXES: tuple[str, ...] = ("num_negatives", "batch_size", "max_len")
# The old name of study.training.trainer:run_trial, kept: the default is part of every spec's content hash,
# so changing it would make every recorded sweep a changed specification.
DEFAULT_TRIAL_FUNCTION = "study.train:run_trial"
# Sweeps run many trials in worker processes whose output nobody reads: no progress bars there.
SWEEP_TRIAL_DEFAULTS: dict[str, Any] = {"progress": False}

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_FUNCTION_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class SpecError(ValueError):
    """A sweep specification is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class SearchSpec:
    kind: SearchKind = "grid"
    num_samples: int | None = None  # optuna only: how many trials to run
    sampler: OptunaSampler = "tpe"
    seed: int | None = None  # seed of the Optuna sampler


@dataclass(frozen=True)
class ResourceSpec:
    gpus: float = 0.0  # per trial; fractional values let trials share a card
    cpus: float = 1.0
    max_concurrent: int | None = None  # None: as many as the resources allow
    gpu_memory_bytes: int | None = None  # memory of one card, to predict against a fractional budget
    # True: each grid trial asks for the larger of `gpus` and the share of a card its predicted peak
    # needs (plus 10%, in sixteenths), so trials that share a card also fit in its memory together.
    pack_by_predicted_memory: bool = False


@dataclass(frozen=True)
class RunSpec:
    # "module:function", with the signature of study.training.trainer.run_trial
    trial_function: str = DEFAULT_TRIAL_FUNCTION
    # True: trials the memory model predicts over their budget are recorded without running.
    # False: they run anyway and the enforced budget decides (e.g. to test enforcement itself).
    skip_predicted_over_budget: bool = True


@dataclass(frozen=True)
class CheckpointSpec:
    """How trials survive interruption (see study.training.checkpoint and docs/checkpoints.md)."""

    enabled: bool = True  # False: no checkpoints and no kept models (a restarted worker starts over)
    # Storage root (a folder or a URI such as s3://bucket/prefix); None: `checkpoints/` beside the
    # results database. `cce-study sweep --storage` overrides it.
    storage: str | None = None
    every_epochs: int = 1  # save at most every this many epochs ...
    every_minutes: float = 5.0  # ... and at most every this many minutes
    keep_best_model: bool = True  # keep each ok trial's best-validation model for `cce-study export`
    max_retries: int = 2  # restarts of a trial whose worker died, each from its last checkpoint


@dataclass(frozen=True)
class SweepSpec:
    name: str
    datasets: tuple[str, ...]
    split: str
    trial: Mapping[str, Any]  # fixed TrainConfig fields
    axes: tuple[tuple[str, tuple[Any, ...]], ...]  # in file order
    extra_trials: tuple[Mapping[str, Any], ...] = ()
    search: SearchSpec = field(default_factory=SearchSpec)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    run: RunSpec = field(default_factory=RunSpec)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    memory_budget: str | None = None
    time_limit_s: float | None = None
    repeats: int = 1
    description: str = ""
    source: str = "<spec>"

    def base_settings(self, dataset: str) -> dict[str, Any]:
        """TrainConfig fields common to every trial on `dataset` (before axes and seeds)."""
        return {
            **SWEEP_TRIAL_DEFAULTS,
            **self.trial,
            "dataset": dataset,
            "split": self.split,
            "memory_budget": self.memory_budget,
            "time_limit_s": self.time_limit_s,
        }

    def seeds(self, base_seed: int) -> list[int]:
        return [base_seed + repeat for repeat in range(self.repeats)]

    def grid(self) -> list[TrainConfig]:
        """Every trial of a grid search, in a stable order, without duplicates.

        Order: dataset, then the axes' product in file order, then the extra trials; repeats innermost.
        For an Optuna search this is the candidate set the search draws from.
        """
        return list(self._grid)

    @functools.cached_property
    def _grid(self) -> tuple[TrainConfig, ...]:
        configs: dict[str, TrainConfig] = {}
        for settings, where in self._points():
            seed = int(settings.get("seed", 0))
            for repeat_seed in self.seeds(seed):
                try:
                    config = TrainConfig.from_dict({**settings, "seed": repeat_seed})
                except ConfigError as exc:
                    raise SpecError(f"{self.source}: {where}: {exc}") from None
                configs.setdefault(trial_id(self.name, config), config)
        return tuple(configs.values())

    def _points(self) -> Iterator[tuple[dict[str, Any], str]]:
        """(settings, where they come from in the file) of every point before repeats."""
        names = [name for name, _ in self.axes]
        for dataset in self.datasets:
            base = self.base_settings(dataset)
            for values in itertools.product(*(v for _, v in self.axes)):
                point = dict(zip(names, values))
                where = ", ".join(f"{k}={v!r}" for k, v in point.items())
                yield {**base, **point}, f"axes: the point {where} is invalid"
            for i, extra in enumerate(self.extra_trials):
                yield {**base, **extra}, f"extra_trials[{i}]"

    def trial_id(self, config: TrainConfig) -> str:
        return trial_id(self.name, config)


def trial_id(sweep_name: str, config: TrainConfig) -> str:
    """Stable id of a trial: the sweep name plus a hash of the full configuration (seed included)."""
    values = config.to_dict()
    for name, default in FIELDS_ADDED_LATER.items():
        if values.get(name) == default:
            del values[name]
    canonical = json.dumps({"sweep": sweep_name, "config": values}, sort_keys=True)
    return f"{sweep_name}-{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"


def spec_content(spec: SweepSpec) -> dict[str, Any]:
    """What the specification says about its trials, as plain JSON values: everything but the
    description, where it was read from, and how trials are packed onto the machines (resources.gpus,
    cpus, max_concurrent), which may change between a run and its resume."""
    return {
        "name": spec.name,
        "datasets": list(spec.datasets),
        "split": spec.split,
        "trial": dict(spec.trial),
        "axes": {name: list(values) for name, values in spec.axes},
        "extra_trials": [dict(extra) for extra in spec.extra_trials],
        "search": dataclasses.asdict(spec.search),
        "memory_budget": spec.memory_budget,
        "time_limit_s": spec.time_limit_s,
        "repeats": spec.repeats,
        "run": dataclasses.asdict(spec.run),
        "resources.gpu_memory": spec.resources.gpu_memory_bytes,
    }


def spec_hash(spec: SweepSpec) -> str:
    """Content hash of the parsed specification (`spec_content`): comments, whitespace, key order and
    the order of the axes do not change it."""
    canonical = json.dumps(spec_content(spec), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def spec_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two `spec_content`s, one "key: old -> new" per changed key
    (e.g. "axes.num_negatives: [32, 128] -> [32, 64]")."""
    before, after = _flatten(old), _flatten(new)
    changes = []
    for key in sorted(set(before) | set(after)):
        if json.dumps(before.get(key), sort_keys=True) != json.dumps(after.get(key), sort_keys=True):
            changes.append(f"{key}: {_shown(before, key)} -> {_shown(after, key)}")
    return changes


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and key in ("trial", "axes", "search", "run"):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _shown(values: Mapping[str, Any], key: str) -> str:
    if key not in values:
        return "(unset)"
    text = json.dumps(values[key], sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep specification file."""
    spec_path = Path(path)
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path}: no such sweep specification")
    try:
        data = spec_path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{spec_path}: cannot read the sweep specification ({exc.strerror or exc})") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise SpecError(f"{spec_path}: line {line}: not UTF-8 text (byte {data[exc.start]:#04x} at offset "
                        f"{exc.start}); TOML files must be UTF-8") from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{spec_path}: not valid TOML: {exc}") from exc
    return parse_spec(values, source=str(spec_path))


def parse_spec(values: Mapping[str, Any], *, source: str = "<spec>") -> SweepSpec:
    """Validate an already parsed TOML document (see `load_spec`)."""
    return _SpecParser(source).parse(values)


class _SpecParser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.fields = set(config_fields())

    def error(self, key: str, message: str) -> SpecError:
        return SpecError(f"{self.source}: {key}: {message}")

    def table(self, values: Mapping[str, Any], key: str, allowed: set[str]) -> Mapping[str, Any]:
        if not isinstance(values, Mapping):
            raise self.error(key, f"must be a table, got {values!r}")
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise self.error(f"{key}.{unknown[0]}" if key else unknown[0],
                             f"unknown key (expected one of: {', '.join(sorted(allowed))})")
        return values

    def parse(self, values: Mapping[str, Any]) -> SweepSpec:
        top = self.table(values, "", {
            "name", "description", "datasets", "dataset", "split", "memory_budget", "time_limit_s",
            "repeats", "trial", "axes", "extra_trials", "search", "resources", "run", "checkpoint",
        })
        name = top.get("name")
        if not isinstance(name, str) or not _NAME_PATTERN.match(name):
            raise self.error("name", f"must be a name of letters, digits, '.', '_' or '-', got {name!r}")
        description = top.get("description", "")
        if not isinstance(description, str):
            raise self.error("description", "must be a string")
        datasets = self.datasets(top)
        split = self.setting("split", "split", top.get("split", TrainConfig.split))
        memory_budget = None
        if "memory_budget" in top:
            memory_budget = self.budget(top["memory_budget"])
        time_limit_s = None
        if "time_limit_s" in top:
            time_limit_s = self.setting("time_limit_s", "time_limit_s", top["time_limit_s"])
        repeats = top.get("repeats", 1)
        if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
            raise self.error("repeats", f"must be a positive integer, got {repeats!r}")

        trial = self.settings(top.get("trial", {}), "trial")
        axes = self.axes(top.get("axes"))
        if repeats > 1 and any(axis == "seed" for axis, _ in axes):
            raise self.error("repeats", "cannot be combined with axes.seed (repeats derive the seeds)")
        raw_extras = top.get("extra_trials", [])
        if not isinstance(raw_extras, list):
            raise self.error("extra_trials", "must be an array of tables ([[extra_trials]])")
        extras = tuple(self.settings(extra, f"extra_trials[{i}]", overrides=PER_TRIAL_OVERRIDES)
                       for i, extra in enumerate(raw_extras))
        search = self.search(top.get("search", {}))
        resources = self.resources(top.get("resources", {}))
        run = self.run(top.get("run", {}))
        checkpoint = self.checkpoint(top.get("checkpoint", {}))
        if search.kind == "optuna":
            if len(datasets) != 1:
                raise self.error("datasets", "an optuna search takes exactly one dataset")
            if extras:
                raise self.error("extra_trials", "only a grid search takes extra trials")
            if repeats != 1:
                raise self.error("repeats", "only a grid search repeats trials over seeds")
        spec = SweepSpec(
            name=name, datasets=datasets, split=split, trial=types.MappingProxyType(dict(trial)),
            axes=axes, extra_trials=tuple(types.MappingProxyType(dict(e)) for e in extras), search=search,
            resources=resources, run=run, checkpoint=checkpoint, memory_budget=memory_budget,
            time_limit_s=time_limit_s, repeats=repeats, description=description, source=self.source,
        )
        self.check_configs(spec)
        return spec

    def datasets(self, top: Mapping[str, Any]) -> tuple[str, ...]:
        if "datasets" in top and "dataset" in top:
            raise self.error("dataset", "give either `dataset` or `datasets`, not both")
        if "dataset" in top:
            raw: Any = [top["dataset"]]
            key = "dataset"
        elif "datasets" in top:
            raw, key = top["datasets"], "datasets"
        else:
            raise self.error("datasets", "missing (a list of dataset names, e.g. [\"ml-100k\"])")
        if not isinstance(raw, list) or not raw:
            raise self.error(key, "must be a non-empty list of dataset names")
        for i, dataset in enumerate(raw):
            if not isinstance(dataset, str) or not dataset.strip():
                raise self.error(f"{key}[{i}]" if key == "datasets" else key,
                                 f"must be a dataset name, got {dataset!r}")
        if len(set(raw)) != len(raw):
            raise self.error(key, "lists a dataset twice")
        return tuple(raw)

    def budget(self, value: Any, key: str = "memory_budget") -> str:
        """A memory budget as TrainConfig holds it: text (a fraction may be written as a TOML number)."""
        if isinstance(value, bool) or not isinstance(value, str | float):
            raise self.error(key, f"must be a string like \"40GiB\" or a fraction, got {value!r}")
        text = value.strip() if isinstance(value, str) else str(value)
        try:
            return str(check_field("memory_budget", text))
        except FieldError as exc:
            raise self.error(key, exc.reason) from None

    def setting(self, key: str, name: str, value: Any) -> Any:
        """One value of TrainConfig field `name` checked alone (type, allowed values, range: study.config);
        ints are accepted for floats. Rules between fields are checked on each whole trial (`grid`)."""
        if name == "memory_budget":
            return self.budget(value, key)
        try:
            return check_field(name, value)
        except FieldError as exc:
            raise self.error(key, exc.reason) from None

    def settings(self, values: Any, key: str, *, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
        table = self.table(values, key, self.fields)
        checked = {}
        for name, value in table.items():
            if name in TOP_LEVEL_SETTINGS and name not in overrides:
                raise self.error(f"{key}.{name}",
                                 f"set it with the top-level `{TOP_LEVEL_SETTINGS[name]}` key")
            checked[name] = self.setting(f"{key}.{name}", name, value)
        return checked

    def axes(self, values: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        if values is None:
            raise self.error("axes", f"missing (lists over at least {', '.join(REQUIRED_AXES)})")
        table = self.table(values, "axes", self.fields)
        axes = []
        for name, raw in table.items():
            key = f"axes.{name}"
            if name in TOP_LEVEL_SETTINGS and name not in PER_TRIAL_OVERRIDES:
                raise self.error(key, f"set it with the top-level `{TOP_LEVEL_SETTINGS[name]}` key")
            if not isinstance(raw, list) or not raw:
                raise self.error(key, f"must be a non-empty list, got {raw!r}")
            checked = []
            for i, value in enumerate(raw):
                checked.append(self.setting(f"{key}[{i}]", name, value))
            if len(set(map(repr, checked))) != len(checked):
                raise self.error(key, "lists a value twice")
            axes.append((name, tuple(checked)))
        missing = [name for name in REQUIRED_AXES if name not in table]
        if missing:
            raise self.error(f"axes.{missing[0]}", "missing: a sweep must vary " + ", ".join(REQUIRED_AXES))
        return tuple(axes)

    def search(self, values: Any) -> SearchSpec:
        table = self.table(values, "search", {"kind", "num_samples", "sampler", "seed"})
        kind = table.get("kind", "grid")
        if kind not in ("grid", "optuna"):
            raise self.error("search.kind", f"{kind!r} is not one of grid, optuna")
        num_samples = table.get("num_samples")
        if kind == "grid" and num_samples is not None:
            raise self.error("search.num_samples", "only an optuna search takes num_samples")
        if kind == "optuna" and (not isinstance(num_samples, int) or isinstance(num_samples, bool)
                                 or num_samples < 1):
            raise self.error("search.num_samples",
                             f"an optuna search needs a positive integer, got {num_samples!r}")
        sampler = table.get("sampler", "tpe")
        if sampler not in ("tpe", "nsga2"):
            raise self.error("search.sampler", f"{sampler!r} is not one of tpe, nsga2")
        seed = table.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise self.error("search.seed", f"must be an integer, got {seed!r}")
        if kind == "grid" and ("sampler" in table or "seed" in table):
            raise self.error("search.sampler" if "sampler" in table else "search.seed",
                             "only an optuna search takes a sampler and its seed")
        return SearchSpec(kind=kind, num_samples=num_samples, sampler=sampler, seed=seed)

    def resources(self, values: Any) -> ResourceSpec:
        table = self.table(values, "resources",
                           {"gpus", "cpus", "max_concurrent", "gpu_memory", "pack_by_predicted_memory"})
        gpus = table.get("gpus", 0)
        if isinstance(gpus, bool) or not isinstance(gpus, int | float) or gpus < 0:
            raise self.error("resources.gpus", f"must be a number >= 0, got {gpus!r}")
        if gpus > 1 and gpus != int(gpus):
            raise self.error("resources.gpus", f"above 1 must be a whole number of GPUs, got {gpus!r}")
        cpus = table.get("cpus", 1)
        if isinstance(cpus, bool) or not isinstance(cpus, int | float) or cpus <= 0:
            raise self.error("resources.cpus", f"must be a positive number, got {cpus!r}")
        max_concurrent = table.get("max_concurrent")
        if max_concurrent is not None and (not isinstance(max_concurrent, int)
                                           or isinstance(max_concurrent, bool) or max_concurrent < 1):
            raise self.error("resources.max_concurrent",
                             f"must be a positive integer, got {max_concurrent!r}")
        gpu_memory_bytes = None
        if "gpu_memory" in table:
            raw = table["gpu_memory"]
            try:
                gpu_memory_bytes = parse_budget(raw, None)
            except ValueError as exc:
                message = str(exc).removeprefix("memory_budget: ")
                raise self.error("resources.gpu_memory", f"{message} (a size like \"80GiB\")") from None
        pack = table.get("pack_by_predicted_memory", False)
        if not isinstance(pack, bool):
            raise self.error("resources.pack_by_predicted_memory", f"must be true or false, got {pack!r}")
        if pack and not 0 < gpus <= 1:
            raise self.error("resources.pack_by_predicted_memory",
                             f"needs resources.gpus to be a share of one card in (0, 1], got {gpus!r}")
        return ResourceSpec(gpus=float(gpus), cpus=float(cpus), max_concurrent=max_concurrent,
                            gpu_memory_bytes=gpu_memory_bytes, pack_by_predicted_memory=pack)

    def run(self, values: Any) -> RunSpec:
        table = self.table(values, "run", {"trial_function", "skip_predicted_over_budget"})
        function = table.get("trial_function", DEFAULT_TRIAL_FUNCTION)
        if not isinstance(function, str) or not _FUNCTION_PATTERN.match(function):
            raise self.error("run.trial_function",
                             f"must look like \"package.module:function\", got {function!r}")
        skip = table.get("skip_predicted_over_budget", True)
        if not isinstance(skip, bool):
            raise self.error("run.skip_predicted_over_budget", f"must be true or false, got {skip!r}")
        return RunSpec(trial_function=function, skip_predicted_over_budget=skip)

    def checkpoint(self, values: Any) -> CheckpointSpec:
        table = self.table(values, "checkpoint", {"enabled", "storage", "every_epochs", "every_minutes",
                                                  "keep_best_model", "max_retries"})
        defaults = CheckpointSpec()
        for key in ("enabled", "keep_best_model"):
            if not isinstance(table.get(key, True), bool):
                raise self.error(f"checkpoint.{key}", f"must be true or false, got {table[key]!r}")
        storage = table.get("storage")
        if storage is not None and (not isinstance(storage, str) or not storage.strip()):
            raise self.error("checkpoint.storage", f"must be a folder or a URI, got {storage!r}")
        every_epochs = table.get("every_epochs", defaults.every_epochs)
        if not isinstance(every_epochs, int) or isinstance(every_epochs, bool) or every_epochs < 1:
            raise self.error("checkpoint.every_epochs", f"must be a positive integer, got {every_epochs!r}")
        every_minutes = table.get("every_minutes", defaults.every_minutes)
        if isinstance(every_minutes, bool) or not isinstance(every_minutes, int | float) \
                or not every_minutes >= 0:
            raise self.error("checkpoint.every_minutes", f"must be a number >= 0, got {every_minutes!r}")
        max_retries = table.get("max_retries", defaults.max_retries)
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise self.error("checkpoint.max_retries", f"must be an integer >= 0, got {max_retries!r}")
        return CheckpointSpec(enabled=table.get("enabled", True), storage=storage, every_epochs=every_epochs,
                              every_minutes=float(every_minutes),
                              keep_best_model=table.get("keep_best_model", True), max_retries=max_retries)

    def check_configs(self, spec: SweepSpec) -> None:
        """Every trial point must make a valid TrainConfig (the rules between fields, e.g. hidden % heads
        or drawn negatives only for ce-neg): a spec the trainer would refuse is refused here, before any
        dataset is loaded or worker started. The grid built here is kept by the spec."""
        spec.grid()


__all__ = [
    "SweepSpec", "SearchSpec", "ResourceSpec", "RunSpec", "CheckpointSpec", "SpecError", "load_spec",
    "parse_spec", "trial_id", "REQUIRED_AXES", "DEFAULT_TRIAL_FUNCTION", "spec_content", "spec_hash",
    "spec_changes",
]
