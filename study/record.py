"""What one trial produces: the record that flows trainer -> sweep callback -> database -> analysis."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

# versions[DRAWN_NEGATIVES_KEY]: how the fused loss weighted the negatives it drew in the kernel
# (kernels.draw.WEIGHTING). Rows without it were trained before the stratum weight existed: analysis keeps
# their drawn trials apart (study.database.results_db.name_unweighted_draws).
DRAWN_NEGATIVES_KEY = "drawn-negatives"

TrialStatus = Literal["ok", "oom", "over_budget", "predicted_over_budget", "failed"]
# Why training stopped: validation NDCG@10 stopped improving for `patience` epochs, the trial's
# `time_limit_s` cut it, or every one of `epochs` ran.
StopReason = Literal["early_stopping", "time_limit", "max_epochs"]
TRIAL_STATUSES: tuple[str, ...] = ("ok", "oom", "over_budget", "predicted_over_budget", "failed")


@dataclass
class MemoryReport:
    """Peak memory of one trial, measured three ways (bytes; None where the source is unavailable)."""

    torch_max_allocated: int | None = None
    torch_max_reserved: int | None = None
    nvml_process_peak: int | None = None  # this process only, sampled in a background thread
    cpu_peak_rss: int | None = None
    gpu_name: str | None = None
    gpu_total: int | None = None
    budget_bytes: int | None = None
    # Which physical card: its UUID and its host-level (NVML) index. Every Ray worker sees its card as
    # cuda:0, so `TrialRecord.device` cannot tell trials on different cards apart; these can.
    gpu_uuid: str | None = None
    gpu_index: int | None = None

    @property
    def peak_bytes(self) -> int | None:
        """The headline peak: NVML's process memory when present, else torch reserved, else RSS."""
        for value in (self.nvml_process_peak, self.torch_max_reserved, self.cpu_peak_rss):
            if value is not None:
                return value
        return None


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    val_metrics: dict[str, float]  # "ndcg@10", "hit@10", "mrr@10", "coverage@10", ... (k in METRIC_KS)
    epoch_seconds: float  # training part of the epoch, evaluation excluded
    eval_seconds: float
    sequences_per_second: float
    steps: int


def steady_state_seconds(epoch_seconds: Sequence[float]) -> float | None:
    """Steady-state time per epoch from the epochs' times in epoch order: the median over the epochs
    after the first when there are at least 2, else the only epoch's time; None without epochs.

    The first epoch pays for kernel compilation and warm-up (seconds on a GPU), so for short trials
    the mean over all epochs misstates throughput; the median also shrugs off one slow later epoch.
    """
    times = [float(t) for t in epoch_seconds]
    if not times:
        return None
    return times[0] if len(times) == 1 else float(statistics.median(times[1:]))


@dataclass
class TrialRecord:
    status: TrialStatus
    config: dict[str, Any]  # TrainConfig.to_dict()
    error: str | None = None
    val_metrics: dict[str, float] = field(default_factory=dict)  # at the best epoch
    test_metrics: dict[str, float] = field(default_factory=dict)  # of the best epoch's weights
    popularity_val_metrics: dict[str, float] = field(default_factory=dict)
    popularity_test_metrics: dict[str, float] = field(default_factory=dict)
    best_epoch: int | None = None
    epochs: list[EpochRecord] = field(default_factory=list)
    memory: MemoryReport = field(default_factory=MemoryReport)
    predicted_peak_bytes: int | None = None
    mean_epoch_seconds: float | None = None  # mean of the epochs' epoch_seconds, the first included
    # Time per epoch in the steady state: the median of epoch_seconds over the epochs after the first
    # when there are at least 2 (the first includes Triton / torch.compile compilation and warm-up),
    # else the only epoch's time; see `steady_state_seconds`. None in records written before it existed.
    steady_epoch_seconds: float | None = None
    sequences_per_second: float | None = None
    total_seconds: float | None = None
    num_users: int | None = None
    num_items: int | None = None
    num_interactions: int | None = None
    device: str | None = None  # "cpu", "cuda:0"
    loss_impl: str | None = None  # the implementation that actually ran: "triton" or "torch"
    # python, torch, triton, cce-study, cuda, and DRAWN_NEGATIVES_KEY
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    started_at: str | None = None  # ISO 8601, UTC
    finished_at: str | None = None
    stop_reason: StopReason | None = None  # None: training did not finish (statuses other than ok)
    host: str | None = None  # the machine that ran the trial (socket.gethostname())
    # What was read: the file (or synthetic spec) behind `config["dataset"]` and the SHA-256 of its bytes
    # (of the canonical spec for synthetic logs), so that rows from different copies of a dataset that
    # share a name are never mixed in analysis. With num_users / num_items / num_interactions (after
    # preprocessing) this is the dataset's identity.
    dataset_source: str | None = None
    dataset_sha256: str | None = None
    # Checkpoints (study.training.checkpoint): the epoch of the checkpoint this trial last continued from
    # after an interruption (None: it ran in one go); where its best-validation model was kept (None: not
    # kept); the time spent saving checkpoints over all attempts, and the size of the last one written.
    resumed_from_epoch: int | None = None
    model_path: str | None = None
    checkpoint_seconds: float | None = None
    checkpoint_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["memory"]["peak_bytes"] = self.memory.peak_bytes
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialRecord:
        values = dict(values)
        memory = dict(values.pop("memory", {}) or {})
        memory.pop("peak_bytes", None)
        epochs = [EpochRecord(**e) for e in values.pop("epochs", []) or []]
        return cls(memory=MemoryReport(**memory), epochs=epochs, **values)
