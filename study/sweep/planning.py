"""Planning a sweep: which trials it holds, what the memory model predicts for each, which cannot run.

The driver loads each dataset once to know its catalogue, predicts every trial's peak memory once
(`study.memory.model.predict_trial_memory`, as `cce-study plan` does), and rules out trials predicted over
their budget or asking for more negatives than the catalogue has. `--dry-run` prints this plan.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from study.config import ConfigError, TrainConfig, check_for_catalogue
from study.sweep.spec import SweepSpec, trial_id
from study.units import format_bytes, parse_budget

if TYPE_CHECKING:
    from study.memory.model import DatasetSize, MemoryPrediction


@dataclass(frozen=True)
class PlannedTrial:
    """One trial of the plan. Its `prediction` is made here, once; the worker that runs the trial and the
    trial function (`run_trial(prediction=...)`) are handed it rather than predicting again."""

    trial_id: str
    config: TrainConfig
    budget_bytes: int | None = None
    prediction: MemoryPrediction | None = None
    num_items: int | None = None
    num_users: int | None = None
    dataset_source: str | None = None  # what the driver read for this trial's dataset (file or spec)
    dataset_sha256: str | None = None

    @property
    def predicted_peak_bytes(self) -> int | None:
        return None if self.prediction is None else self.prediction.total_bytes

    @property
    def over_budget(self) -> bool:
        return (self.budget_bytes is not None and self.predicted_peak_bytes is not None
                and self.predicted_peak_bytes > self.budget_bytes)

    @property
    def invalid_reason(self) -> str | None:
        """Why the trial cannot run on its dataset (known once the catalogue size is), else None."""
        return None if self.num_items is None else catalogue_error(self.config, self.num_items)


def catalogue_error(config: TrainConfig, num_items: int) -> str | None:
    """Why `config` cannot run on a catalogue of `num_items` items (`check_for_catalogue`), else None."""
    try:
        check_for_catalogue(config, num_items)
    except ConfigError as exc:
        return f"{exc} of {config.dataset}; not launched"
    return None


_warned_fractions: set[str] = set()


def budget_of(memory_budget: str | None, card_bytes: int | None, sweep: str | None = None) -> int | None:
    """A budget in bytes as far as it can be known here: None without a budget, or for a fraction of
    an unknown card (workers still enforce it on their card; nothing is ruled out by prediction)."""
    if memory_budget is None:
        return None
    try:
        return parse_budget(memory_budget, card_bytes)
    except ValueError:
        if card_bytes is not None:
            raise
        if sweep is not None and memory_budget not in _warned_fractions:
            _warned_fractions.add(memory_budget)
            note(sweep, f"memory_budget {memory_budget!r} is a fraction of an unknown card: set "
                        "resources.gpu_memory to rule out configurations predicted over it")
        return None


def local_card_bytes() -> int | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(0).total_memory)


def plan_trials(spec: SweepSpec, card_bytes: int | None) -> list[PlannedTrial]:
    """Every grid point (for Optuna: every candidate) with its budget and its predicted peak memory.
    Loads each dataset once, on the driver, to know the catalogue size."""
    predictor = _MemoryPredictor(card_bytes)
    plan = []
    for config in spec.grid():
        prediction, size = predictor.predict(config)
        budget = budget_of(config.memory_budget, card_bytes, spec.name)
        source, sha256 = predictor.identity[(config.dataset, config.kcore)]
        plan.append(PlannedTrial(trial_id(spec.name, config), config, budget, prediction, size.num_items,
                                 size.num_users, dataset_source=source, dataset_sha256=sha256))
    return plan


class _MemoryPredictor:
    """The memory model's prediction (`predict_trial_memory`, as `cce-study plan` makes it) for each
    planned trial; each dataset is loaded once, for its catalogue and its users."""

    def __init__(self, card_bytes: int | None) -> None:
        self.card_bytes = card_bytes
        self.sizes: dict[tuple[str, int], DatasetSize] = {}
        self.identity: dict[tuple[str, int], tuple[str, str]] = {}  # (source, sha256) of what was read
        self.loaded: dict[tuple[str, int], Any] = {}  # the datasets, while planning

    def predict(self, config: TrainConfig) -> tuple[MemoryPrediction, DatasetSize]:
        """The trial's prediction and its dataset's size. Each dataset is loaded once; a split it cannot
        support (a temporal split of positional time stamps) is refused here, before any worker starts."""
        from study.data import check_split, load_dataset
        from study.memory.model import DatasetSize, predict_trial_memory

        key = (config.dataset, config.kcore)
        if key not in self.sizes:
            data = load_dataset(config.dataset, kcore=config.kcore, progress=False)
            self.sizes[key] = DatasetSize.of(data)
            self.identity[key] = (data.source, data.sha256)
            self.loaded[key] = data
        check_split(self.loaded[key], config.split)
        size = self.sizes[key]
        return predict_trial_memory(config, size, gpu_total=self.card_bytes), size


def axis_names(spec: SweepSpec) -> list[str]:
    names = ["dataset"] if len(spec.datasets) > 1 else []
    names += [name for name, _ in spec.axes]
    for extra in spec.extra_trials:
        names += [name for name in extra if name not in names]
    if spec.repeats > 1 and "seed" not in names:
        names.append("seed")
    return names


def print_plan(spec: SweepSpec, plan: Sequence[PlannedTrial], budget_bytes: int | None, done: set[str],
               *, file: Any) -> None:
    names = axis_names(spec)
    budget_text = format_bytes(budget_bytes) if budget_bytes is not None else (spec.memory_budget or "none")
    kind = ("grid" if spec.search.kind == "grid"
            else f"optuna, {spec.search.num_samples} samples drawn from these candidates")
    print(f"sweep {spec.name}: {len(plan)} trial(s) ({kind}); budget {budget_text}; "
          f"trial function {spec.run.trial_function}", file=file)
    header = ["trial_id", *names, "predicted", "action"]
    rows = []
    for trial in plan:
        if trial.trial_id in done:
            action = "recorded"
        elif trial.invalid_reason is not None:
            action = "failed (num_negatives > items)"
        elif trial.over_budget and spec.run.skip_predicted_over_budget:
            action = "predicted_over_budget"
        elif trial.over_budget:
            action = "run (predicted over budget)"
        else:
            action = "run"
        values = [_config_text(trial.config, name) for name in names]
        predicted = format_bytes(trial.predicted_peak_bytes)
        rows.append([trial.trial_id, *values, predicted, action])
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip(), file=file)
    actions = Counter(row[-1] for row in rows)
    print("  " + ", ".join(f"{action}: {count}" for action, count in sorted(actions.items())), file=file)


def _config_text(config: TrainConfig, name: str) -> str:
    if name == "num_negatives" and config.loss == "ce":
        return "full"  # full-catalogue CE has no number of negatives
    return str(getattr(config, name))


def note(sweep: str, message: str) -> None:
    print(f"[{sweep}] note: {message}", file=sys.stderr, flush=True)


__all__ = ["PlannedTrial", "plan_trials", "catalogue_error", "budget_of", "local_card_bytes", "axis_names",
           "print_plan", "note"]
