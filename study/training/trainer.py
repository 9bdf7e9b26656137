"""Train and evaluate SASRec for one configuration: `run_trial(config) -> TrialRecord`.

One trial end to end: load and split the data, build the model and loss, train with Adam and early
stopping on validation NDCG@10, evaluate the best epoch's weights on the test set, and measure time
and memory. Out-of-memory and non-finite losses end the trial with a status instead of an exception;
any other error propagates to the caller. With a `study.training.checkpoint.Checkpointer` the trial saves its
whole training state between epochs, continues from a saved state, and keeps its best model.
No Ray and no database here: the caller records the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import itertools
import math
import platform
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from kernels import check_index_errors
from kernels.draw import WEIGHTING
from models.sasrec import SASRec
from study.config import ConfigError, TrainConfig, check_for_catalogue
from study.config import check_combinations as check_loss_settings  # the old name of the rules, kept
from study.memory.blas_workspaces import warm_up_blas_workspaces
from study.record import DRAWN_NEGATIVES_KEY, EpochRecord, TrialRecord, steady_state_seconds
from study.training.checkpoint import Checkpointer, TrainingState, capture_rng, check_same_config, restore_rng
from study.training.evaluate import evaluate_model, evaluate_popularity, prepare_evaluation
from study.units import parse_budget

if TYPE_CHECKING:
    from study.memory.model import MemoryPrediction

EARLY_STOPPING_METRIC = "ndcg@10"
# On CUDA, step losses stay on the device and are checked for finiteness (and shown) every this many
# steps, so the trainer does not synchronise with the GPU on every step. On CPU every step is checked.
CUDA_LOSS_CHECK_INTERVAL = 32
IGNORE_INDEX = -100

LossFunction = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite."""


@dataclass
class _Context:
    config: TrainConfig
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager[Any]]
    # time.perf_counter() at the start of the trial; for a trial continued from a checkpoint, moved back
    # by the time the trial had run up to that checkpoint (time limit and total_seconds count it)
    started: float
    checkpointer: Checkpointer | None = None
    item_ids: Any = None  # raw id of each item: item_ids[i - 1] is item i's (for the kept model)


@dataclass
class _Loop:
    """The training loop's own state: with the model, optimiser and generators, what a checkpoint holds."""

    epoch: int = 0  # epochs completed
    global_step: int = 0
    best_score: float = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    stale_epochs: int = 0
    checkpoint_seconds: float = 0.0


def run_trial(config: TrainConfig, *, on_epoch: Callable[[EpochRecord], None] | None = None,
              checkpointer: Checkpointer | None = None,
              prediction: MemoryPrediction | None = None) -> TrialRecord:
    """Run one trial; `on_epoch` is called after every epoch with its record (e.g. to report to Ray);
    `checkpointer` saves the training state between epochs, gives the state to continue from, and keeps
    the best model (see study.training.checkpoint). `prediction` is the memory model's prediction for
    this configuration and dataset made by the caller (a sweep's plan): recorded as it is when it was made
    for the device the trial runs on, else the trainer predicts for that device.

    On CPU a trial is reproducible: the same configuration (seed included), data, versions and thread
    count (`torch.get_num_threads()`) give the same record, times aside. On CUDA it is not (atomic
    accumulation in the Triton backward kernels and cuBLAS)."""
    with _deterministic_on_cpu(config.device):
        return _run_trial(config, on_epoch, checkpointer, prediction)


@contextlib.contextmanager
def _deterministic_on_cpu(device_name: str) -> Iterator[None]:
    """PyTorch's deterministic kernels for a CPU trial, restored afterwards. With more than one thread
    the backward of advanced indexing (`items[negatives]`, index_put_ with accumulate) sums in an order
    that changes run to run, so seeded CPU runs differed in the last bits of the loss and then in the
    metrics; measured on 2 cores, 100 steps of ml-100k were no slower with it."""
    on_cpu = device_name == "cpu" or (device_name == "auto" and not torch.cuda.is_available())
    if not on_cpu:
        yield
        return
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _run_trial(config: TrainConfig, on_epoch: Callable[[EpochRecord], None] | None,
               checkpointer: Checkpointer | None, prediction: MemoryPrediction | None) -> TrialRecord:
    started = time.perf_counter()
    record = TrialRecord(status="ok", config=config.to_dict(), started_at=_utc_now(),
                         versions=collect_versions(), git_commit=git_commit(), host=socket.gethostname())
    device = resolve_device(config.device)
    record.device = _device_label(device)
    record.loss_impl = resolve_loss_impl(config, device)
    seed_everything(config.seed)

    from study.data import load_dataset, make_split

    data = load_dataset(config.dataset, kcore=config.kcore, progress=config.progress)
    split = make_split(data, config.split, seed=config.seed)
    record.num_users, record.num_items, record.num_interactions = data.num_users, data.num_items, len(data)
    record.dataset_source, record.dataset_sha256 = data.source or None, data.sha256 or None
    check_for_catalogue(config, split.num_items)
    record.predicted_peak_bytes = _predicted_peak_bytes(config, device, data, prediction)

    from study.memory import probes

    budget_bytes = None
    if config.memory_budget is not None:
        budget_bytes = parse_budget(config.memory_budget, _device_total_bytes(device))
        probes.apply_budget(budget_bytes, device)
    context = _Context(config, device, _autocast_factory(config.precision, device), started,
                       checkpointer, data.item_labels)
    probe = probes.MemoryProbe(device, budget_bytes=budget_bytes)
    with probe:
        try:
            _train_and_evaluate(context, split, record, on_epoch)
        except NonFiniteLoss as exc:
            record.status, record.error, record.stop_reason = "failed", str(exc), None
        except Exception as exc:
            if not probes.is_out_of_memory(exc):
                raise
            record.status = probes.classify_out_of_memory(exc, budget_bytes)
            record.error, record.stop_reason = f"{type(exc).__name__}: {exc}", None
        finally:
            _synchronize(device)
    record.memory = probe.report()
    record.finished_at = _utc_now()
    record.total_seconds = time.perf_counter() - context.started
    if checkpointer is not None:
        checkpointer.finish()
    return record


def _train_and_evaluate(
    context: _Context, split: Any, record: TrialRecord, on_epoch: Callable[[EpochRecord], None] | None
) -> None:
    config, device = context.config, context.device
    # Before anything else of the trial is on the card: the cuBLAS workspaces of this thread and of
    # autograd's backward thread, each in a segment of its own. Left to the first backward, the second
    # can land in the freed segment of the step's largest transient and pin it for the rest of the trial
    # (one more [N, K, d] gather or [N, C] logits kept by the cache; study/memory/blas_workspaces.py).
    warm_up_blas_workspaces(device, context.autocast)

    # Each evaluation set is laid out once (windows, targets, seen items) and evaluated every epoch.
    prepared = {id(evalset): prepare_evaluation(evalset, num_items=split.num_items, max_len=config.max_len,
                                                device=device, exclude_seen=config.exclude_seen)
                for evalset in (split.validation, split.test)}

    def popularity_metrics(evalset: Any) -> dict[str, float]:
        return evaluate_popularity(split.item_counts, prepared[id(evalset)], max_len=config.max_len,
                                   batch_size=config.eval_batch_size, device=device,
                                   exclude_seen=config.exclude_seen, max_scores=config.eval_max_scores)

    def model_metrics(evalset: Any) -> dict[str, float]:
        return evaluate_model(model, prepared[id(evalset)], num_items=split.num_items, max_len=config.max_len,
                              batch_size=config.eval_batch_size, device=device,
                              exclude_seen=config.exclude_seen, autocast=context.autocast,
                              max_scores=config.eval_max_scores)

    record.popularity_val_metrics = popularity_metrics(split.validation)
    record.popularity_test_metrics = popularity_metrics(split.test)

    from study.data import TrainBatches

    batches = TrainBatches(split.train, config.max_len)
    if len(batches) == 0:
        raise ValueError(f"dataset: {config.dataset!r} has no training sequence with at least 2 items")
    model = SASRec(split.num_items, max_len=config.max_len, hidden=config.hidden, blocks=config.blocks,
                   heads=config.heads, dropout=config.dropout).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generators = {"shuffle": torch.Generator().manual_seed(config.seed),
                  "sampler": torch.Generator(device=device).manual_seed(config.seed + 1)}
    loss_function = build_loss(config, model, split.item_counts, device, generator=generators["sampler"])

    loop = _Loop()
    checkpointer = context.checkpointer
    if checkpointer is not None:
        state = checkpointer.load()
        if state is not None:
            _resume(state, context, model, optimizer, generators, loop, record)
        checkpointer.start(loop.epoch)
    record.stop_reason = "max_epochs"
    for epoch in range(loop.epoch + 1, config.epochs + 1):
        epoch_start = time.perf_counter()
        batch_iterator = batches.iterate(config.batch_size, shuffle=True, generator=generators["shuffle"],
                                         device=device)
        steps_in_epoch = math.ceil(len(batches) / config.batch_size)
        if config.max_steps_per_epoch is not None:
            steps_in_epoch = min(steps_in_epoch, config.max_steps_per_epoch)
        train_loss, steps, sequences, out_of_time = _train_epoch(
            context, model, optimizer, loss_function, batch_iterator, epoch, loop.global_step, steps_in_epoch
        )
        loop.global_step += steps
        _synchronize(device)
        epoch_seconds = time.perf_counter() - epoch_start

        out_of_time = out_of_time or _out_of_time(context)

        # Validation every `eval_every` epochs, and always at the last epoch training will run.
        evaluate = epoch % config.eval_every == 0 or out_of_time or epoch == config.epochs
        val_metrics: dict[str, float] = {}
        eval_seconds = 0.0
        if evaluate:
            eval_start = time.perf_counter()
            val_metrics = model_metrics(split.validation)
            eval_seconds = time.perf_counter() - eval_start
        throughput = sequences / epoch_seconds if epoch_seconds > 0 else 0.0
        epoch_record = EpochRecord(epoch=epoch, train_loss=train_loss, val_metrics=val_metrics,
                                   epoch_seconds=epoch_seconds, eval_seconds=eval_seconds,
                                   sequences_per_second=throughput, steps=steps)
        record.epochs.append(epoch_record)
        if on_epoch is not None:
            on_epoch(epoch_record)

        if evaluate and val_metrics[EARLY_STOPPING_METRIC] > loop.best_score:
            loop.best_score = val_metrics[EARLY_STOPPING_METRIC]
            loop.best_state = {name: value.detach().to("cpu", copy=True)
                               for name, value in model.state_dict().items()}
            record.best_epoch, record.val_metrics = epoch, val_metrics
        # Patience counts epochs since the best one, so it means the same whatever `eval_every` is; with
        # `patience_steps` also optimiser steps, which mean the same whatever the batch size is.
        loop.stale_epochs = epoch - (record.best_epoch or 0)
        stale_steps = sum(e.steps for e in record.epochs if e.epoch > (record.best_epoch or 0))
        loop.epoch = epoch
        if out_of_time:
            record.stop_reason = "time_limit"
            break
        if evaluate and loop.stale_epochs >= config.patience and stale_steps >= config.patience_steps:
            record.stop_reason = "early_stopping"
            break
        if checkpointer is not None and epoch < config.epochs and checkpointer.due(epoch):
            _save_checkpoint(checkpointer, context, model, optimizer, generators, loop, record)

    if loop.best_state is not None:
        model.load_state_dict(loop.best_state)
    record.test_metrics = model_metrics(split.test)
    train_seconds = sum(e.epoch_seconds for e in record.epochs)
    record.mean_epoch_seconds = train_seconds / len(record.epochs)
    record.steady_epoch_seconds = steady_state_seconds([e.epoch_seconds for e in record.epochs])
    total_sequences = sum(e.sequences_per_second * e.epoch_seconds for e in record.epochs)
    record.sequences_per_second = total_sequences / train_seconds if train_seconds > 0 else 0.0
    if checkpointer is not None and checkpointer.keeps_model:
        record.model_path = _keep_model(checkpointer, model, context, record)


def _save_checkpoint(checkpointer: Checkpointer, context: _Context, model: SASRec,
                     optimizer: torch.optim.Optimizer, generators: dict[str, torch.Generator], loop: _Loop,
                     record: TrialRecord) -> None:
    began = time.perf_counter()
    state = TrainingState(
        config=context.config.to_dict(), epoch=loop.epoch, global_step=loop.global_step,
        model=model.state_dict(), optimizer=optimizer.state_dict(), rng=capture_rng(generators),
        epochs=[dataclasses.asdict(e) for e in record.epochs], best_score=loop.best_score,
        best_epoch=record.best_epoch, best_val_metrics=dict(record.val_metrics), best_model=loop.best_state,
        stale_epochs=loop.stale_epochs, elapsed_seconds=began - context.started,
        checkpoint_seconds=loop.checkpoint_seconds, started_at=record.started_at,
    )
    record.checkpoint_bytes = checkpointer.save(state)
    loop.checkpoint_seconds += time.perf_counter() - began
    record.checkpoint_seconds = loop.checkpoint_seconds


def _resume(state: TrainingState, context: _Context, model: SASRec, optimizer: torch.optim.Optimizer,
            generators: dict[str, torch.Generator], loop: _Loop, record: TrialRecord) -> None:
    """Continue from `state`: everything the rest of the trial depends on is put back as it was."""
    check_same_config(state.config, context.config.to_dict(), "checkpoint")
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    restore_rng(state.rng, generators)
    loop.epoch, loop.global_step, loop.stale_epochs = state.epoch, state.global_step, state.stale_epochs
    loop.best_score, loop.best_state = state.best_score, state.best_model
    loop.checkpoint_seconds = state.checkpoint_seconds
    record.epochs = [EpochRecord(**values) for values in state.epochs]
    record.best_epoch, record.val_metrics = state.best_epoch, dict(state.best_val_metrics)
    record.resumed_from_epoch = state.epoch
    record.checkpoint_seconds = state.checkpoint_seconds
    record.started_at = state.started_at or record.started_at
    context.started -= state.elapsed_seconds


def _keep_model(checkpointer: Checkpointer, model: SASRec, context: _Context,
                record: TrialRecord) -> str | None:
    """Hand the best model to the checkpointer; a storage that fails costs the model, not the trial."""
    from study.training.export import model_payload

    payload = model_payload(model, context.config, context.item_ids, record)
    try:
        return checkpointer.keep_model(payload)
    except OSError as exc:
        print(f"warning: the trial's best model could not be kept ({type(exc).__name__}: {exc})",
              file=sys.stderr, flush=True)
        return None


def _train_epoch(
    context: _Context,
    model: SASRec,
    optimizer: torch.optim.Optimizer,
    loss_function: LossFunction,
    batch_iterator: Iterator[tuple[torch.Tensor, torch.Tensor]],
    epoch: int,
    first_step: int,
    total_steps: int,
) -> tuple[float, int, int, bool]:
    """One pass over the training batches: (mean loss, steps, sequences, stopped by the time limit)."""
    config = context.config
    model.train()
    pending: list[torch.Tensor] = []
    check_interval = loss_check_interval(context.device)
    loss_sum, steps, sequences, out_of_time = 0.0, 0, 0, False
    bar = tqdm(total=total_steps, desc=f"epoch {epoch}", unit="step", file=sys.stderr,
               disable=not config.progress, leave=False, dynamic_ncols=True)

    def check_pending() -> None:
        nonlocal loss_sum
        if not pending:
            return
        values = torch.stack(pending).float().cpu()
        # The read-back above waited for the GPU: hear here of an out-of-range index that the fused
        # kernels refused in these steps (kernels.index_guard), not only at the next loss call.
        check_index_errors(context.device)
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            first_bad = int((~finite).nonzero()[0])
            step_in_epoch = steps - len(pending) + first_bad + 1
            raise NonFiniteLoss(
                f"non-finite loss ({values[first_bad].item()}) at epoch {epoch}, step {step_in_epoch} "
                f"(global step {first_step + step_in_epoch})"
            )
        loss_sum += float(values.double().sum())
        bar.update(len(pending))
        bar.set_postfix(loss=f"{values[-1].item():.4f}")
        pending.clear()

    try:
        for inputs, targets in itertools.islice(batch_iterator, total_steps):
            with context.autocast():
                hidden = model(inputs)
                loss = loss_function(hidden, targets, first_step + steps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            pending.append(loss.detach())
            steps += 1
            sequences += inputs.shape[0]
            if len(pending) >= check_interval:
                check_pending()
            if _out_of_time(context):
                out_of_time = True
                break
        check_pending()
    finally:
        bar.close()
    return (loss_sum / steps if steps else math.nan), steps, sequences, out_of_time


def build_loss(
    config: TrainConfig, model: SASRec, item_counts: torch.Tensor, device: torch.device, *,
    generator: torch.Generator | None = None,
) -> LossFunction:
    """loss(hidden [B, L, d], targets [B, L] item ids with 0 = no target, global step) -> scalar.

    The loss sees the catalogue without padding: items = embedding rows 1.., targets shifted by one.
    Sampled negatives are drawn from `generator` (on `device`; default: one seeded with config.seed + 1).
    """
    import kernels

    num_items = model.num_items
    half = torch.bfloat16 if _uses_bf16(config.precision, device) else None

    def loss_inputs(
        hidden: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if half is not None:
            hidden = hidden.to(half)  # the fused loss computes in hidden's dtype; items stay float32
        shifted = torch.where(targets > 0, targets - 1, torch.full_like(targets, IGNORE_INDEX))
        return hidden, model.item_embedding.weight[1:], shifted

    if config.loss == "ce":
        def full_ce(hidden: torch.Tensor, targets: torch.Tensor, step: int) -> torch.Tensor:
            hidden, items, shifted = loss_inputs(hidden, targets)
            return kernels.linear_cross_entropy(hidden, items, shifted, None, ignore_index=IGNORE_INDEX,
                                                impl=config.loss_impl)
        return full_ce

    if config.negative_scope == "drawn":
        log_q = "uniform" if config.logq_correction else None

        def drawn_ce(hidden: torch.Tensor, targets: torch.Tensor, step: int) -> torch.Tensor:
            hidden, items, shifted = loss_inputs(hidden, targets)
            return kernels.linear_cross_entropy(
                hidden, items, shifted, config.num_negatives, seed=config.seed * 1_000_003 + step,
                log_q=log_q, ignore_index=IGNORE_INDEX, impl=config.loss_impl,
            )
        return drawn_ce

    scope = config.negative_scope
    assert scope != "drawn"  # handled above; TrainConfig refuses it for the binary losses
    popularity = config.sampling == "popularity"
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(config.seed + 1)
    sampler = kernels.NegativeSampler(
        num_items, config.num_negatives, distribution=config.sampling, scope=scope,
        item_counts=item_counts[1:].to(device) if popularity else None, device=device,
        generator=generator,
    )
    # the kernel takes log q as "uniform" (-log C) or a per-item tensor
    sampler_log_q = sampler.log_q if isinstance(sampler.log_q, torch.Tensor) else "uniform"
    if config.loss == "ce-neg":
        sampled_log_q = sampler_log_q if config.logq_correction else None

        def sampled_ce(hidden: torch.Tensor, targets: torch.Tensor, step: int) -> torch.Tensor:
            hidden, items, shifted = loss_inputs(hidden, targets)
            negatives = sampler.sample(targets.shape[0], targets.shape[1])
            return kernels.linear_cross_entropy(hidden, items, shifted, negatives, log_q=sampled_log_q,
                                                ignore_index=IGNORE_INDEX, impl=config.loss_impl)
        return sampled_ce

    def binary(hidden: torch.Tensor, targets: torch.Tensor, step: int) -> torch.Tensor:
        hidden, items, shifted = loss_inputs(hidden, targets)
        negatives = sampler.sample(targets.shape[0], targets.shape[1])
        if config.loss == "bce":
            return kernels.bce_loss(hidden, items, shifted, negatives,
                                    ignore_index=IGNORE_INDEX)
        return kernels.gbce_loss(hidden, items, shifted, negatives,
                                 ignore_index=IGNORE_INDEX, t=config.gbce_t)
    return binary


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was requested but no CUDA device is available")
    return torch.device(name)


def resolve_loss_impl(config: TrainConfig, device: torch.device) -> str:
    """The implementation that will run: BCE/gBCE are plain PyTorch; 'auto' is triton on CUDA."""
    if config.loss in ("bce", "gbce"):
        return "torch"
    if config.loss_impl == "auto":
        return "triton" if device.type == "cuda" and _has_triton() else "torch"
    return config.loss_impl


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def collect_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    with contextlib.suppress(ImportError):
        import triton

        versions["triton"] = str(triton.__version__)
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        versions["cce-study"] = importlib.metadata.version("cce-study")
    if torch.version.cuda is not None:
        versions["cuda"] = str(torch.version.cuda)
    versions[DRAWN_NEGATIVES_KEY] = WEIGHTING
    return versions


# The code a trial's numbers depend on; results and specs beside it change as sweeps run and do not make a
# checkout "-dirty".
_CODE_PATHS = ("kernels", "models", "study")


def git_commit(where: Path | None = None) -> str | None:
    """The commit of the checkout this code runs from (or of the one holding `where`), with "-dirty"
    appended when the code in it (`_CODE_PATHS`) differs from that commit: uncommitted edits, or a working
    tree copied beside an older `.git`. None outside a git checkout."""
    where = Path(__file__).resolve().parent if where is None else where
    try:
        head = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=where, capture_output=True,
                              text=True, timeout=10, check=False)
        lines = head.stdout.split()
        if head.returncode != 0 or len(lines) != 2:
            return None
        root, commit = Path(lines[0]), lines[1]
        paths = [p for p in _CODE_PATHS if (root / p).exists()]
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *paths], cwd=root,
                                 capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if changed.returncode == 1 else commit


def _predicted_peak_bytes(config: TrainConfig, device: torch.device, data: Any,
                          given: MemoryPrediction | None) -> int:
    if given is not None and given.device == device.type:
        return int(given.total_bytes)  # the caller's, for this device: not predicted a second time
    from study.memory.model import DatasetSize, predict_trial_memory

    # as `cce-study plan` and the sweep predict it, on the device the trial resolved (the model takes
    # "auto" as CUDA, even on a CPU host)
    prediction = predict_trial_memory(config, DatasetSize.of(data), gpu_total=_device_total_bytes(device),
                                      device=device.type)
    return int(prediction.total_bytes)


def loss_check_interval(device: torch.device) -> int:
    return CUDA_LOSS_CHECK_INTERVAL if device.type == "cuda" else 1


def _out_of_time(context: _Context) -> bool:
    limit = context.config.time_limit_s
    return limit is not None and time.perf_counter() - context.started > limit


def _uses_bf16(precision: str, device: torch.device) -> bool:
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


AutocastFactory = Callable[[], contextlib.AbstractContextManager[Any]]


def _autocast_factory(precision: str, device: torch.device) -> AutocastFactory:
    if not _uses_bf16(precision, device):
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return str(device)


def _device_total_bytes(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return int(torch.cuda.get_device_properties(device).total_memory)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


__all__ = ["run_trial", "build_loss", "check_loss_settings", "resolve_device", "resolve_loss_impl",
           "collect_versions", "git_commit", "seed_everything", "NonFiniteLoss"]
