"""The analytic memory model: structure (parts sum to total), monotonicity in every axis, and its
terms checked against real tensors: SASRec's parameter count, the activations autograd saves
(saved-tensor hooks on CPU), and the measured peaks of the PyTorch losses
(docs/design.md#numbers-to-beat)."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from repo_scripts import load_script

from models.sasrec import SASRec
from study import memory_model
from study.config import TrainConfig
from study.memory.model import predict_peak_bytes, resolve_shape
from study.memory.probes import DEFAULT_CUDA_CONTEXT_BYTES
from study.units import GiB

BASES = {
    "full_ce": TrainConfig(loss="ce", device="cuda", batch_size=64, max_len=100, hidden=64),
    "batch_negatives": TrainConfig(loss="ce-neg", negative_scope="batch", num_negatives=1024, device="cuda"),
    "sequence_negatives": TrainConfig(loss="ce-neg", negative_scope="sequence", num_negatives=512,
                                      device="cuda"),
    "position_negatives": TrainConfig(loss="ce-neg", negative_scope="position", num_negatives=256,
                                      device="cuda"),
    "drawn_negatives": TrainConfig(loss="ce-neg", negative_scope="drawn", num_negatives=256, device="cuda"),
    "bce_popularity": TrainConfig(loss="bce", num_negatives=64, sampling="popularity", device="cuda"),
    "cpu_fp32": TrainConfig(loss="ce-neg", num_negatives=128, device="cpu"),
}
CATALOGUE = 200_000


def predicted(config: TrainConfig, num_items: int = CATALOGUE) -> int:
    return predict_peak_bytes(config, num_items).total_bytes


@pytest.mark.parametrize("name", sorted(BASES))
def test_parts_sum_to_total_and_layers_agree(name: str) -> None:
    config = BASES[name]
    prediction = predict_peak_bytes(config, CATALOGUE, gpu_total=80 * GiB)
    assert sum(prediction.parts.values()) == prediction.total_bytes
    assert all(value > 0 for value in prediction.parts.values())
    assert prediction.torch_max_allocated == max(prediction.phases.values())
    assert prediction.phases[prediction.peak_phase] == prediction.torch_max_allocated
    assert prediction.torch_max_allocated < prediction.torch_max_reserved <= prediction.total_bytes
    context = DEFAULT_CUDA_CONTEXT_BYTES if config.device != "cpu" else 0
    assert prediction.total_bytes == prediction.torch_max_reserved + context
    assert prediction.parts.get("cuda_context", 0) == context
    assert prediction.gpu_total == 80 * GiB
    assert prediction.peak_phase in prediction.describe()


AXES = {
    "batch_size": (32, 64, 128, 256, 1024),
    "max_len": (50, 100, 200, 512),
    "hidden": (32, 64, 128, 256),
    "blocks": (1, 2, 3, 4),
    "num_negatives": (64, 256, 1024, 4096, 16384),
}


@pytest.mark.parametrize("name", sorted(BASES))
@pytest.mark.parametrize("axis", sorted(AXES))
def test_monotonic_in_every_axis(name: str, axis: str) -> None:
    """The peak never falls when an axis grows; the step's working set (loss backward phase) grows
    strictly, unless the axis does not enter it (the peak may then sit in a phase it does not touch)."""
    base = BASES[name]
    predictions = [predict_peak_bytes(base.replace(**{axis: value}), CATALOGUE) for value in AXES[axis]]
    totals = [p.total_bytes for p in predictions]
    assert totals == sorted(totals), f"{axis} of {name}: {totals}"
    independent = axis == "num_negatives" and (
        base.loss == "ce" or (base.negative_scope == "drawn" and resolve_shape(base, 1).impl == "triton")
    )
    step = [p.phases["loss_backward"] for p in predictions]
    if independent:
        assert len(set(step)) == 1
    else:
        assert all(a < b for a, b in zip(step, step[1:])), f"{axis} of {name} does not grow: {step}"


def test_total_grows_with_activations_when_they_dominate() -> None:
    base = TrainConfig(loss="ce-neg", negative_scope="position", num_negatives=512, device="cuda",
                       batch_size=512, max_len=200, hidden=128)
    for axis, values in (("batch_size", (512, 1024)), ("max_len", (200, 400)), ("num_negatives", (512, 1024)),
                         ("blocks", (2, 4)), ("hidden", (128, 256))):
        small, large = (predicted(base.replace(**{axis: value}), 50_000) for value in values)
        assert large > small, axis


@pytest.mark.parametrize("name", sorted(BASES))
def test_monotonic_in_catalogue(name: str) -> None:
    sizes = (5_000, 50_000, 500_000, 5_000_000, 10_000_000)
    totals = [predicted(BASES[name], size) for size in sizes]
    assert all(a < b for a, b in zip(totals, totals[1:])), totals


@pytest.mark.parametrize("name", ["full_ce", "batch_negatives", "sequence_negatives", "position_negatives",
                                  "drawn_negatives"])
def test_pytorch_loss_never_below_fused(name: str) -> None:
    base = BASES[name]
    for negatives in (64, 2048):
        config = base.replace(num_negatives=negatives)
        fused = predicted(config.replace(loss_impl="triton"))
        reference = predicted(config.replace(loss_impl="torch"))
        assert reference >= fused
        assert predicted(config.replace(loss_impl="auto")) == fused  # auto means triton on CUDA


def test_auto_impl_is_torch_on_cpu() -> None:
    config = BASES["cpu_fp32"]
    assert predicted(config.replace(loss_impl="auto")) == predicted(config.replace(loss_impl="torch"))
    assert "cuda_context" not in predict_peak_bytes(config, CATALOGUE).parts


def test_device_argument_overrides_auto() -> None:
    config = BASES["position_negatives"].replace(device="auto")
    on_cpu = predict_peak_bytes(config, CATALOGUE, device="cpu")
    assert on_cpu == predict_peak_bytes(config.replace(device="cpu"), CATALOGUE)
    assert predict_peak_bytes(config, CATALOGUE) == predict_peak_bytes(config, CATALOGUE, device="cuda")
    assert on_cpu.total_bytes != predicted(config)
    with pytest.raises(ValueError, match="device"):
        predict_peak_bytes(config, CATALOGUE, device="tpu")


def test_num_users_caps_the_batches() -> None:
    config = BASES["position_negatives"].replace(batch_size=1024, eval_batch_size=1024)
    capped = predict_peak_bytes(config, CATALOGUE, num_users=100).total_bytes
    explicit = config.replace(batch_size=100, eval_batch_size=100)
    assert capped == predict_peak_bytes(explicit, CATALOGUE).total_bytes
    assert capped < predicted(config)


@pytest.mark.parametrize(("hidden", "blocks", "heads", "max_len"), [(64, 2, 1, 200), (48, 3, 4, 17)])
def test_parameter_count_matches_sasrec(hidden: int, blocks: int, heads: int, max_len: int) -> None:
    num_items = 1234
    model = SASRec(num_items, max_len=max_len, hidden=hidden, blocks=blocks, heads=heads)
    config = TrainConfig(hidden=hidden, blocks=blocks, heads=heads, max_len=max_len)
    actual = sum(parameter.numel() for parameter in model.parameters())
    assert memory_model.parameter_count(resolve_shape(config, num_items)) == actual


def saved_activation_bytes(model: SASRec, inputs: torch.Tensor, bf16: bool) -> int:
    """Bytes of the distinct storages autograd saves for backward during a forward, parameters excluded."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(inputs)
    parameters = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    return sum(size for pointer, size in storages.items() if pointer not in parameters)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize("bf16", [False, True])
def test_encoder_activation_terms_match_saved_tensors(dropout: float, bf16: bool) -> None:
    torch.manual_seed(0)
    batch, length, hidden, blocks, heads, num_items = 6, 40, 32, 2, 2, 300
    model = SASRec(num_items, max_len=length, hidden=hidden, blocks=blocks, heads=heads, dropout=dropout)
    model.train()
    inputs = torch.randint(1, num_items + 1, (batch, length))
    measured = saved_activation_bytes(model, inputs, bf16)
    config = TrainConfig(device="cpu", precision="bf16" if bf16 else "fp32", batch_size=batch, max_len=length,
                         hidden=hidden, blocks=blocks, heads=heads, dropout=dropout)
    shape = resolve_shape(config, num_items)
    rows = batch * length
    model_saved = (
        memory_model.embedding_activations_bytes(shape)
        - 2 * rows * memory_model.INT64  # targets and shifted targets: held by the trainer, not saved
        + memory_model.block_activations_bytes(shape)
        + 2 * rows * memory_model.FLOAT32  # the final LayerNorm's mean and rstd
        + memory_model.autocast_weight_copies_bytes(shape)
        + length * memory_model.INT64  # position ids
    )
    assert model_saved == pytest.approx(measured, rel=0.02)


def design_loss_shape(*, rows_per_sequence: int, batch: int, hidden: int, negatives: int, scope: str,
                      num_items: int) -> memory_model.TrialShape:
    config = TrainConfig.from_dict({
        "loss": "ce" if scope == "full" else "ce-neg",
        "negative_scope": "batch" if scope == "full" else scope,
        "num_negatives": min(negatives, 16384), "loss_impl": "torch", "device": "cuda", "batch_size": batch,
        "max_len": rows_per_sequence, "hidden": hidden,
    })
    # The benchmark hands the loss bf16 item tables; training tables are float32.
    return dataclasses.replace(resolve_shape(config, num_items), negatives=negatives, item_bytes=2)


# The loss-alone benchmark's CE- with shared negatives (2.35 and 9.38 GiB at K=4096 and 16384, about
# 12 B per logit) and per position at d=64 (30.0 GiB) are not checked here: trained with autocast
# and a float32 table, the same losses peaked at 16.7-16.8 B per logit on the same H200
# (1m-batch-torch-k16384, 100k-batch-torch-k8192-b512), which is what the model charges and what
# test_predictions_match_h200_measurements checks; a CPU trace of the step shows those 17 B.
@pytest.mark.parametrize(
    ("scope", "batch", "length", "hidden", "negatives", "num_items", "measured_gib"),
    [
        ("position", 256, 256, 256, 511, 1_000_000, 34.0),
        ("full", 256, 200, 64, 100_000, 100_000, 57.2),
    ],
)
def test_pytorch_loss_terms_match_design_measurements(
    scope: str, batch: int, length: int, hidden: int, negatives: int, num_items: int, measured_gib: float
) -> None:
    """docs/design.md#numbers-to-beat (one H200, bf16, fwd+bwd of the loss alone): peak extra memory of
    the PyTorch losses. The model's loss backward working set plus its index tensor should land within 12%."""
    shape = design_loss_shape(rows_per_sequence=length, batch=batch, hidden=hidden, negatives=negatives,
                              scope=scope, num_items=num_items)
    modelled = memory_model.loss_backward_bytes(shape) + memory_model.negative_index_bytes(shape)
    assert modelled / GiB == pytest.approx(measured_gib, rel=0.12)


def test_fused_loss_memory_is_linear_in_rows_and_negatives() -> None:
    """O(N*d + K*d) besides the index tensor: 16x more negatives must not add 16x N*K floats."""
    base = BASES["drawn_negatives"].replace(batch_size=256, max_len=200)
    small = memory_model.loss_backward_bytes(resolve_shape(base.replace(num_negatives=1024), 10**6))
    large = memory_model.loss_backward_bytes(resolve_shape(base.replace(num_negatives=16384), 10**6))
    assert large == small
    rows = 256 * 200
    assert small < 64 * rows * 64  # a few [N, d] buffers, far below one [N, K] float32 matrix


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_bad_catalogue_size_is_named(bad: object) -> None:
    with pytest.raises(ValueError, match="num_items"):
        predict_peak_bytes(TrainConfig(), bad)  # type: ignore[arg-type]


# Measured on one NVIDIA H200 (torch 2.11.0+cu130, triton 3.6.0, CUDA 13.0, default allocator settings)
# by benchmarks/memory_validation.py, 2026-11-26, against the kernels of ef0756d (results/h200-2026-11-26b,
# runs 4 and 5): (configuration, catalogue, users, torch max allocated, torch max reserved, process peak),
# bytes. All 33 were predicted before they were measured (memory-predictions*.csv there); the first 20
# showed the PyTorch per-position cache excess the model now charges, the last 13 were predicted with it
# and met the criterion. Since issue 11 the model was refitted on all of them (in sample now): the PyTorch
# per-position losses' cache holds one or two extra copies of their gather (two where the backward's
# cuBLAS workspace pins one, see PINNED_TRANSIENT_SHARE), which no charge puts well within -10%..+25% of
# both, so their errors sit at the band's edges.
H200_MEASUREMENTS = [
    ("1m-position-triton-k2047", 956306, 1100, 2591234560, 3019898880, 3816816640),
    ("1m-position-torch-k511", 956306, 1100, 11553349120, 17632854016, 18431868928),
    ("1m-drawn-triton-k4096", 956306, 1100, 1515549184, 1658847232, 2455764992),
    ("1m-drawn-triton-k16384", 956306, 1100, 1405971968, 1654652928, 2451570688),
    ("1m-batch-triton-k16384", 956306, 1100, 1515549184, 1658847232, 2457862144),
    ("1m-batch-torch-k4096", 956306, 1100, 4616665600, 5293211648, 6092226560),
    ("1m-batch-torch-k16384", 956306, 1100, 15314074112, 19132317696, 19931332608),
    ("1m-sequence-triton-k1024", 956306, 1100, 1515549184, 1658847232, 2457862144),
    ("1m-sequence-torch-k1024", 956306, 1100, 1979388416, 2604662784, 3403677696),
    ("1m-full-triton-b64", 956306, 1100, 1351118336, 1656750080, 2453667840),
    ("1m-position-triton-k511-d256", 956306, 1100, 6071593472, 6446645248, 7243563008),
    ("1m-drawn-triton-k1024-d128-b1024", 956306, 1100, 2582970368, 3474980864, 4271898624),
    ("100k-full-torch-b32", 99726, 3000, 7845035520, 9359589376, 10156507136),
    ("100k-full-triton-b256", 99726, 3000, 425327616, 706740224, 1503657984),
    ("100k-position-triton-k1024-d128-b512", 99726, 3000, 2506799104, 2833252352, 3630170112),
    ("100k-position-torch-k256-d128", 99726, 3000, 10934551552, 24234688512, 25033703424),
    ("100k-drawn-triton-k8192-l512", 99726, 3000, 778686976, 1063256064, 1860173824),
    ("100k-batch-torch-k8192-b512", 99726, 3000, 14897540096, 19069403136, 19868418048),
    ("100k-bce-position-k256", 99726, 3000, 5555259392, 12186550272, 12985565184),
    ("100k-gbce-batch-k1024", 99726, 3000, 1047614976, 1147142144, 1946157056),
    ("100k-batch-triton-k4096-d256-4blocks", 99726, 3000, 2268288512, 2648702976, 3445620736),
    ("100k-drawn-triton-k2048-b1024", 99726, 3000, 1126690304, 1296039936, 2092957696),
    ("100k-drawn-torch-k512", 99726, 3000, 5434059776, 9116319744, 9913237504),
    ("100k-position-triton-k256-popularity-logq", 99726, 3000, 614294528, 805306368, 1602224128),
    ("100k-batch-torch-k2048-popularity-logq", 99726, 3000, 2174765568, 2302672896, 3101687808),
    ("2k-full-torch-b256", 2000, 3000, 1515901440, 2136997888, 2931818496),
    ("2k-full-triton-b1024", 2000, 3000, 1032549888, 1293942784, 2090860544),
    ("2k-position-triton-k512-b512-l512", 2000, 3000, 2909832192, 2927624192, 3724541952),
    ("2k-position-torch-k128-d256-l512", 2000, 3000, 28458345984, 45753565184, 46550482944),
    ("2k-bce-position-k1", 2000, 3000, 205743616, 354418688, 1151336448),
    ("2k-drawn-triton-k1024-d128-b1024-l512", 2000, 3000, 4890915328, 5410652160, 6207569920),
    ("2k-sequence-torch-k512-nodropout", 2000, 3000, 1421881856, 1560281088, 2357198848),
    ("2k-full-torch-fp32", 2000, 3000, 844348928, 1035993088, 1814036480),
]


def validation_module() -> Any:
    """benchmarks/memory_validation.py, which defines the validated configurations."""
    return load_script("benchmarks/memory_validation.py")


def validation_cases() -> dict[str, dict[str, object]]:
    return {case["name"]: case["config"] for cases in validation_module().SETS.values() for case in cases}


def test_predictions_match_h200_measurements() -> None:
    configs = validation_cases()
    allocated_errors, process_errors = {}, {}
    for name, num_items, num_users, allocated, _reserved, process in H200_MEASUREMENTS:
        config = TrainConfig.from_dict(configs[name])
        # measured before the trainer made its cuBLAS workspaces first
        prediction = predict_peak_bytes(config, num_items, num_users=num_users, workspaces_warmed=False)
        allocated_errors[name] = (prediction.torch_max_allocated - allocated) / allocated
        process_errors[name] = (prediction.total_bytes - process) / process
    assert statistics.median(abs(e) for e in allocated_errors.values()) <= 0.05
    # 100k-position-triton-k256-popularity-logq allocated 66 MiB (11%) more than the model knows of in
    # its training step; a CPU trace of that step does not show them either (the popularity draw on CUDA?)
    low = {name: error for name, error in allocated_errors.items() if error < -0.10}
    assert set(low) <= {"100k-position-triton-k256-popularity-logq"}
    assert min(allocated_errors.values()) >= -0.12
    assert statistics.median(abs(e) for e in process_errors.values()) <= 0.10
    under = {name: error for name, error in process_errors.items() if error < -0.10}
    assert not under, under
    # The edges: 100k-position-torch-k256-d128 (its cache kept two extra gathers: pinned) at -10.0%,
    # 1m-position-torch-k511 (one) at +23%. The latter was 26.5% over while the model charged 0.75 of an item
    # table beside its gathers; Adam's two states settle in the gather's segment instead (ADAM_STATE_TABLES).
    assert max(process_errors.values()) <= 0.25


def test_sort_constants_mirror_the_gather_kernel() -> None:
    """study/memory/model.py charges the per-position backward's sorted copy without importing Triton."""
    from kernels import triton_gather

    assert memory_model.SORT_MAX_DIM == triton_gather.SORT_MAX_DIM
    assert memory_model.SORT_CHUNK_ELEMENTS == triton_gather.SORT_CHUNK_ELEMENTS
    assert memory_model.SORT_IN_TRITON_MAX_NEGATIVES == triton_gather.SORT_IN_TRITON_MAX_NEGATIVES


# The catalogue-scale validation (issue 11): benchmarks/memory_validation.py, run on H200s. Each set was
# predicted by the model of one commit (results/memory-catalogue/predictions-<commit>.csv, committed before
# any GPU measured it) and measured at results/memory-catalogue/measured-<commit>.csv.
CATALOGUE_RESULTS = Path(__file__).resolve().parents[1] / "results" / "memory-catalogue"
# --set catalogue, predicted by e92b87d, measured 2026-11-28: out of sample then, in the model's sample since
# the fix that followed (its misses are named in study/memory/model.py).
IN_SAMPLE_CATALOGUE = CATALOGUE_RESULTS / "measured-e92b87d.csv"
# (c10m-drawn-torch-k1024-b256-l200-d64 was held a suspect measurement of a full card until its 0.55 gathers
# of excess were reproduced by a replay of its step at its real sizes, and measured again in catalogue2
# with no allocator retry: c2-10m-drawn-torch-k512-b512-l200-d64 kept 0.55 too. Adam's states in the
# gather's segment: ADAM_STATE_TABLES in study/memory/model.py.)


def measured_rows(path: Path) -> list[dict[str, str]]:
    """The successful trials of a measured CSV whose allocator never gave memory back to retry (rows
    without the alloc_retries column predate it)."""
    with open(path, newline="") as handle:
        return [row for row in csv.DictReader(handle)
                if row.get("status") == "ok" and row.get("measured_peak_bytes") and row.get("num_items")
                and not float(row.get("alloc_retries") or 0)]


def committed_predictions(commit: str) -> dict[str, float]:
    """predicted_peak_bytes by configuration name, from the predictions committed before the GPU measured
    them (results/memory-catalogue/predictions-<commit>.csv)."""
    with open(CATALOGUE_RESULTS / f"predictions-{commit}.csv", newline="") as handle:
        return {row["name"]: float(row["predicted_peak_bytes"]) for row in csv.DictReader(handle)}


def committed_errors(committed: dict[str, float], rows: list[dict[str, str]]) -> dict[str, float]:
    """(committed prediction - measured process peak) / measured, by configuration name."""
    return {row["name"]: (committed[row["name"]] - float(row["measured_peak_bytes"]))
            / float(row["measured_peak_bytes"]) for row in rows}


def current_errors(rows: list[dict[str, str]], measure: str = "measured_peak_bytes", *,
                   workspaces_warmed: bool = False) -> dict[str, float]:
    """(prediction of the current model - measured) / measured for each row, by configuration name. The
    sets of measured-e92b87d.csv, measured-1ee330c.csv and measured-ac0365b.csv ran before the trainer made
    its cuBLAS workspaces first: they are predicted as such (workspaces_warmed=False)."""
    cases = {case["name"]: case for cases in validation_module().SETS.values() for case in cases}
    errors = {}
    for row in rows:
        size = memory_model.DatasetSize(int(row["num_items"]), int(row["num_users"]))
        config = TrainConfig.from_dict(cases[row["name"]]["config"])
        prediction = memory_model.predict_trial_memory(config, size, device="cuda",
                                                       workspaces_warmed=workspaces_warmed)
        predicted_value = {"measured_peak_bytes": prediction.total_bytes,
                           "torch_max_allocated": prediction.torch_max_allocated}[measure]
        measured = float(row[measure])
        errors[row["name"]] = (predicted_value - measured) / measured
    return errors


def test_catalogue_measurements_in_sample() -> None:
    """The 40 successful trials of the catalogue set (e92b87d's predictions, measured 2026-11-28), in the
    model's sample now. The current model meets on them: process peak median |error| 6.6%, all within
    -8.1%..+24.6%; allocated median |error| 0.7%. (The model of e92b87d: median 3.4%, -17.7%..+36.6%; of
    1ee330c: median 5.6%, -7.0%..+24.9% but c10m-drawn-torch at +41.3%.) The median rose where the model
    now charges the pinned share of a segment that most trials keep free (PINNED_TRANSIENT_SHARE: PyTorch
    full CE +13-19%), so that the pinned ones stay within 10% under."""
    rows = measured_rows(IN_SAMPLE_CATALOGUE)
    # The 41st, issue 11's shared K=16384 point, ran out of card memory (another benchmark's process held
    # 74.5 GiB of the card): its row says oom, and it measures nothing of the model.
    assert len(rows) == 40
    errors = current_errors(rows)
    assert statistics.median(abs(e) for e in errors.values()) <= 0.07
    outside = {name: e for name, e in errors.items() if not -0.10 <= e <= 0.25}
    assert not outside, outside
    allocated = current_errors(rows, "torch_max_allocated")
    assert statistics.median(abs(e) for e in allocated.values()) <= 0.02
    # Over by up to 27%: the trials of one full batch (1,100 users in batches of 1,024) never run a full
    # batch next to Adam's states (see the module docstring). Under by more than 5% only in two small
    # fused trials at 10^5 items whose evaluation is (or nearly is) the peak: c100k-full-triton-b256
    # allocated 80 MiB (17%) more than the model's evaluation working set and than a CPU trace of the
    # current evaluation, c100k-batch-triton-k4096-b512 45 MiB (7%); their process peaks are within 1%.
    low = {name: e for name, e in allocated.items() if e < -0.05}
    assert set(low) <= {"c100k-full-triton-b256-l200-d64", "c100k-batch-triton-k4096-b512-l200-d64"}, low
    assert min(allocated.values()) >= -0.18


# --set catalogue2: predicted by the fixed model and committed before any GPU measured it.
CATALOGUE2_MODEL_COMMIT: str | None = "1ee330c"  # predictions-1ee330c.csv, committed before measuring


def test_catalogue2_out_of_sample_result() -> None:
    """Issue 11's criterion on a set the model had not seen (median |error| <= 10%, none under-predicted by
    more than 10%, none over-predicted by more than 25%; process peak), from the predictions committed before
    the GPU measured it (one H200, 2026-11-28). It was not met: median 5.6%, but three rows outside the band,
    all where the caching allocator kept a different excess over the allocated peak than the model charges
    (their allocated peaks are within 5%): PyTorch full CE at 10^5 items d=128 -21.7%, fused per position
    K=4096 d=256 at 10^5 items -12.6%, PyTorch drawn at 10^7 items +41.5%."""
    assert CATALOGUE2_MODEL_COMMIT is not None
    path = CATALOGUE_RESULTS / f"measured-{CATALOGUE2_MODEL_COMMIT}.csv"
    committed = committed_predictions(CATALOGUE2_MODEL_COMMIT)
    rows = [row for row in measured_rows(path) if row["name"] in committed]
    assert len(rows) == 36
    errors = committed_errors(committed, rows)
    assert 0.05 <= statistics.median(abs(e) for e in errors.values()) <= 0.06
    outside = {name: round(e, 3) for name, e in errors.items() if not -0.10 <= e <= 0.25}
    assert outside == {"c2-100k-full-torch-b256-l200-d128": -0.217,
                       "c2-100k-position-triton-k4096-b128-l200-d256": -0.126,
                       "c2-10m-drawn-torch-k512-b512-l200-d64": 0.415}
    allocated = [float(row["predicted_torch_max_allocated"]) / float(row["torch_max_allocated"]) - 1
                 for row in rows]
    assert max(abs(e) for e in allocated) <= 0.065


def test_catalogue2_measurements_in_sample() -> None:
    """The 36 trials of catalogue2 with the current model, which was fixed after they were measured (in its
    sample): process peak median |error| 6.7%, all within -7.8%..+24.9%; allocated median |error| 0.6%.
    The three rows the model of 1ee330c missed: the pinned PyTorch full CE at -7.7% (was -21.7%), the fused
    per-position K=4096 d=256 at +7.4% (was -12.6%), PyTorch drawn at 10^7 items at +24.9% (was +41.5%)."""
    rows = measured_rows(CATALOGUE_RESULTS / f"measured-{CATALOGUE2_MODEL_COMMIT}.csv")
    assert len(rows) == 36
    errors = current_errors(rows)
    assert statistics.median(abs(e) for e in errors.values()) <= 0.07
    outside = {name: round(e, 4) for name, e in errors.items() if not -0.10 <= e <= 0.25}
    assert not outside, outside
    assert -0.08 <= errors["c2-100k-full-torch-b256-l200-d128"] <= -0.07
    assert 0 <= errors["c2-100k-position-triton-k4096-b128-l200-d256"] <= 0.08
    allocated = current_errors(rows, "torch_max_allocated")
    assert statistics.median(abs(e) for e in allocated.values()) <= 0.01
    assert max(abs(e) for e in allocated.values()) <= 0.065


# --set catalogue3: predicted by the model fixed after catalogue2 was measured, committed before any GPU
# measured it (results/memory-catalogue/predictions-<commit>.csv).
CATALOGUE3_MODEL_COMMIT: str | None = "ac0365b"  # predictions-ac0365b.csv, committed before measuring


def test_catalogue3_out_of_sample_result() -> None:
    """Issue 11's criterion on a set the model had not seen (median |error| <= 10%, none under-predicted by
    more than 10%, none over-predicted by more than 25%; process peak), from the predictions committed before
    the GPU measured it (one H200, 2026-11-29; 26 rows in one run, the 8 whose allocator retried on a card
    shared with `pytest -m cuda` measured again alone). Missed by 0.1 point on one row: median 7.8%, over at
    most +24.9%, but c3-100k-position-torch-k1024-b64-l200-d256 -10.06% (and a second PyTorch per-position
    row at -9.98%): the pinned mode of PINNED_TRANSIENT_SHARE, as expected. Allocated peaks within
    -4.0..+7.6%."""
    assert CATALOGUE3_MODEL_COMMIT is not None
    path = CATALOGUE_RESULTS / f"measured-{CATALOGUE3_MODEL_COMMIT}.csv"
    committed = committed_predictions(CATALOGUE3_MODEL_COMMIT)
    rows = [row for row in measured_rows(path) if row["name"] in committed]
    assert len(rows) == 34
    errors = committed_errors(committed, rows)
    assert 0.075 <= statistics.median(abs(e) for e in errors.values()) <= 0.08
    outside = {name: round(e, 3) for name, e in errors.items() if not -0.10 <= e <= 0.25}
    assert outside == {"c3-100k-position-torch-k1024-b64-l200-d256": -0.101}
    assert max(errors.values()) <= 0.25
    allocated = [float(row["predicted_torch_max_allocated"]) / float(row["torch_max_allocated"]) - 1
                 for row in rows]
    assert min(allocated) >= -0.041 and max(allocated) <= 0.076
    # The model predicts these trials as they ran (before the trainer's warm-up) exactly as it did then, but
    # for the fused per-position one at d <= 128, whose sorted copy's remainder it charges since (0.33 GiB;
    # 0.35 kept): -1.7% then, +2.9% now.
    now = current_errors(rows)
    changed = {name for name in errors if abs(now[name] - errors[name]) >= 1e-12}
    assert changed == {"c3-1m-position-triton-k1024-b1024-l200-d64"}
    assert all(abs(now[name]) < 0.05 for name in changed)


def test_catalogue_set_is_what_issue_11_asks() -> None:
    """At least 36 configurations at 10^5, 10^6 and 10^7 items; fused in every scope and full CE; PyTorch
    per position, shared and full; K up to 4096, batch up to 1024, length up to 512, d 64 and 256."""
    cases = validation_module().CATALOGUE_CASES
    configs = [TrainConfig.from_dict(case["config"]) for case in cases]
    assert len(cases) >= 36 and len({case["name"] for case in cases}) == len(cases)
    assert {case["catalogue"] for case in cases} == {"c100k", "c1m", "c10m"}
    fused = {c.negative_scope if c.loss == "ce-neg" else "full" for c in configs if c.loss_impl == "triton"}
    assert fused == {"batch", "sequence", "position", "drawn", "full"}
    reference = {c.negative_scope if c.loss == "ce-neg" else "full"
                 for c in configs if c.loss_impl == "torch"}
    assert {"position", "batch", "full"} <= reference
    out_of_sample = [c for c, case in zip(configs, cases) if not case.get("in_sample")]
    assert max(c.num_negatives for c in out_of_sample if c.loss == "ce-neg") == 4096
    assert max(c.batch_size for c in configs) == 1024 and max(c.max_len for c in configs) == 512
    assert {64, 256} <= {c.hidden for c in configs}
    assert all(c.device == "cuda" and c.precision == "auto" for c in configs)  # bf16 autocast


def test_catalogue2_set_is_new_and_varies_like_the_first() -> None:
    """The out-of-sample set: at least 30 configurations at 10^5, 10^6 and 10^7 items, none of them (as
    settings, whatever its dataset) a configuration of the catalogue set; fused and PyTorch in every scope
    and full CE; K up to 4096, batch up to 1024, length up to 512, d 64, 128 and 256; bf16 autocast."""
    module = validation_module()
    cases = module.SETS["catalogue2"]
    assert len(cases) >= 30 and len({case["name"] for case in cases}) == len(cases)
    assert not {case["name"] for case in cases} & {case["name"] for case in module.CATALOGUE_CASES}

    def settings(case: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(sorted((k, v) for k, v in case["config"].items() if k != "dataset"))

    assert not {settings(case) for case in cases} & {settings(case) for case in module.CATALOGUE_CASES}
    configs = [TrainConfig.from_dict(case["config"]) for case in cases]
    sizes = {case["catalogue"]: case["config"]["dataset"] for case in cases}
    assert sorted(sizes) == ["c2-100k", "c2-10m", "c2-1m"]
    assert all(f"items={items}," in sizes[name]
               for name, items in (("c2-100k", 100000), ("c2-1m", 1000000), ("c2-10m", 10000000)))
    for impl in ("triton", "torch"):
        scopes = {c.negative_scope if c.loss == "ce-neg" else "full" for c in configs if c.loss_impl == impl}
        assert scopes == {"batch", "sequence", "position", "drawn", "full"}, impl
    assert max(c.num_negatives for c in configs if c.loss == "ce-neg") == 4096
    assert max(c.batch_size for c in configs) == 1024 and max(c.max_len for c in configs) == 512
    assert {c.hidden for c in configs} == {64, 128, 256}
    assert all(c.device == "cuda" and c.precision == "auto" for c in configs)


def test_catalogue3_set_is_new_and_leans_on_what_catalogue2_missed() -> None:
    """The third set: at least 30 configurations at 10^5, 10^6 and 10^7 items on logs of its own, none of them
    (as settings, whatever its dataset) a configuration of an earlier set; PyTorch full CE at every catalogue
    and at least three widths, PyTorch per position and drawn at every catalogue, the fused per-position loss
    at d=256, and the other scopes of both implementations; K up to 4096, batch up to 1024, length up to
    512, d 64, 128 and 256; bf16 autocast."""
    module = validation_module()
    cases = module.SETS["catalogue3"]
    assert len(cases) >= 30 and len({case["name"] for case in cases}) == len(cases)

    def settings(case: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(sorted((k, v) for k, v in case["config"].items() if k != "dataset"))

    earlier = [case for name in ("base", "catalogue", "catalogue2") for case in module.SETS[name]]
    assert not {case["name"] for case in cases} & {case["name"] for case in earlier}
    assert not {settings(case) for case in cases} & {settings(case) for case in earlier}
    assert not {case["config"]["dataset"] for case in cases} & {case["config"]["dataset"] for case in earlier}
    sizes = {case["catalogue"]: case["config"]["dataset"] for case in cases}
    assert sorted(sizes) == ["c3-100k", "c3-10m", "c3-1m"]
    assert all(f"items={items}," in sizes[name]
               for name, items in (("c3-100k", 100000), ("c3-1m", 1000000), ("c3-10m", 10000000)))
    configs = {case["name"]: (case["catalogue"], TrainConfig.from_dict(case["config"])) for case in cases}
    full_torch = [(catalogue, c.hidden) for catalogue, c in configs.values()
                  if c.loss == "ce" and c.loss_impl == "torch"]
    assert {catalogue for catalogue, _ in full_torch} == set(sizes) and len({d for _, d in full_torch}) >= 3
    per_position_torch = {(catalogue, c.negative_scope) for catalogue, c in configs.values()
                          if c.negative_scope in ("position", "drawn") and c.loss_impl == "torch"
                          and c.loss != "ce"}
    assert {catalogue for catalogue, _ in per_position_torch} == set(sizes)
    assert {scope for _, scope in per_position_torch} == {"position", "drawn"}
    assert any(c.loss_impl == "triton" and c.loss == "ce-neg" and c.negative_scope == "position"
               and c.hidden == 256 for _, c in configs.values())
    for impl in ("triton", "torch"):
        scopes = {c.negative_scope if c.loss != "ce" else "full" for _, c in configs.values()
                  if c.loss_impl == impl and c.loss != "bce"}
        assert scopes >= ({"batch", "sequence", "position", "drawn", "full"} if impl == "triton"
                          else {"batch", "position", "drawn", "full"}), impl
    assert max(c.num_negatives for _, c in configs.values() if c.loss == "ce-neg") == 4096
    assert max(c.batch_size for _, c in configs.values()) == 1024
    assert max(c.max_len for _, c in configs.values()) == 512
    assert {c.hidden for _, c in configs.values()} == {64, 128, 256}
    assert all(c.device == "cuda" and c.precision == "auto" for _, c in configs.values())


def test_catalogue4_set_is_new_and_leans_on_what_pinned_before() -> None:
    """The fourth set, the first measured with the trainer's cuBLAS warm-up: at least 30 configurations at
    10^5, 10^6 and 10^7 items on logs of its own, none of them (as settings, whatever its dataset) a
    configuration of an earlier set; PyTorch per position and drawn, and PyTorch full CE, at every catalogue
    and over d 64, 128 and 256 (the trials a workspace pinned before), the fused loss in every scope and
    full CE, the PyTorch shared scopes; K up to 4096, batch up to 1024, length up to 512; bf16 autocast."""
    module = validation_module()
    cases = module.SETS["catalogue4"]
    assert len(cases) >= 30 and len({case["name"] for case in cases}) == len(cases)

    def settings(case: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(sorted((k, v) for k, v in case["config"].items() if k != "dataset"))

    earlier = [case for name in ("base", "catalogue", "catalogue2", "catalogue3")
               for case in module.SETS[name]]
    assert not {case["name"] for case in cases} & {case["name"] for case in earlier}
    assert not {settings(case) for case in cases} & {settings(case) for case in earlier}
    assert not {case["config"]["dataset"] for case in cases} & {case["config"]["dataset"] for case in earlier}
    sizes = {case["catalogue"]: case["config"]["dataset"] for case in cases}
    assert sorted(sizes) == ["c4-100k", "c4-10m", "c4-1m"]
    assert all(f"items={items}," in sizes[name]
               for name, items in (("c4-100k", 100000), ("c4-1m", 1000000), ("c4-10m", 10000000)))
    configs = [(case["catalogue"], TrainConfig.from_dict(case["config"])) for case in cases]
    torch_gathers = [(catalogue, c) for catalogue, c in configs if c.loss_impl == "torch" and c.loss != "ce"
                     and c.negative_scope in ("position", "drawn")]
    full_torch = [(catalogue, c) for catalogue, c in configs if c.loss == "ce" and c.loss_impl == "torch"]
    for group in (torch_gathers, full_torch):
        assert {catalogue for catalogue, _ in group} == set(sizes)
        assert {c.hidden for _, c in group} == {64, 128, 256}
    assert {c.negative_scope for _, c in torch_gathers} == {"position", "drawn"}
    assert len(torch_gathers) + len(full_torch) >= len(cases) // 2  # the set leans on them
    assert {c.num_negatives for _, c in torch_gathers} >= {256, 4096}
    for impl in ("triton", "torch"):
        scopes = {c.negative_scope if c.loss != "ce" else "full" for _, c in configs
                  if c.loss_impl == impl and c.loss in ("ce", "ce-neg")}
        assert scopes == {"batch", "sequence", "position", "drawn", "full"}, impl
    assert max(c.num_negatives for _, c in configs if c.loss == "ce-neg") == 4096
    assert max(c.batch_size for _, c in configs) == 1024 and max(c.max_len for _, c in configs) == 512
    assert {c.hidden for _, c in configs} == {64, 128, 256}
    assert all(c.device == "cuda" and c.precision == "auto" for _, c in configs)


# --set catalogue4: the first set measured with the trainer's cuBLAS warm-up
# (study/memory/blas_workspaces.py), predicted by the model that then charges no pinned transient, committed
# before any GPU measured it.
CATALOGUE4_MODEL_COMMIT: str | None = "5273506"  # predictions-5273506.csv, committed before measuring


def test_catalogue4_meets_the_criterion_out_of_sample() -> None:
    """Issue 11's criterion on the fourth set (median |error| <= 10%, none under-predicted by more than 10%,
    none over-predicted by more than 25%; process peak), from the predictions committed before the GPU
    measured it, once measured; the current model, predicting the trials as run (warmed), must meet it too.
    Until then: the committed predictions cover the set."""
    if CATALOGUE4_MODEL_COMMIT is None:
        pytest.skip("no predictions committed for --set catalogue4 yet")
    committed = committed_predictions(CATALOGUE4_MODEL_COMMIT)
    assert set(committed) == {case["name"] for case in validation_module().SETS["catalogue4"]}
    path = CATALOGUE_RESULTS / f"measured-{CATALOGUE4_MODEL_COMMIT}.csv"
    if not path.is_file():
        pytest.skip(f"{path.name} not measured yet")
    rows = [row for row in measured_rows(path) if row["name"] in committed]
    assert len(rows) >= 30, f"only {len(rows)} usable measured rows in {path.name}"
    for errors in (committed_errors(committed, rows), current_errors(rows, workspaces_warmed=True)):
        assert statistics.median(abs(e) for e in errors.values()) <= 0.10, errors
        under = {name: e for name, e in errors.items() if e < -0.10}
        over = {name: e for name, e in errors.items() if e > 0.25}
        assert not under and not over, {"under": under, "over": over}


def test_validation_cards_count_within_the_inherited_visible_devices() -> None:
    """--gpus 0 in a process given card 3 (CUDA_VISIBLE_DEVICES=3) is card 3 for the trials, not the host's
    card 0: the run of 2026-11-28 measured on another benchmark's card that way."""
    physical_cards = validation_module().physical_cards
    assert physical_cards(["0", "1"], "3,2") == ["3", "2"]
    assert physical_cards(["0"], None) == ["0"] and physical_cards(["0"], "") == ["0"]
    assert physical_cards(["GPU-5e1f"], "1") == ["GPU-5e1f"]
    assert physical_cards(["1"], "GPU-a,GPU-b") == ["GPU-b"]
    with pytest.raises(ValueError, match="sees 1 card"):
        physical_cards(["1"], "3")


def test_validation_leaves_out_trials_whose_allocator_retried() -> None:
    """A trial whose caching allocator gave memory back to retry a failed cudaMalloc (a full card) is a row
    with alloc_retries > 0, listed in the summary and left out of the criterion."""
    module = validation_module()
    case = {"name": "a", "config": {"loss": "ce", "loss_impl": "triton", "batch_size": 8, "max_len": 10}}

    def result(measured: int, retries: int) -> dict[str, Any]:
        memory = {"torch_max_allocated": measured // 2, "torch_max_reserved": measured - 100,
                  "nvml_process_peak": measured, "gpu_name": "card"}
        return {"record": {"status": "ok", "memory": memory, "num_items": 10, "num_users": 5},
                "allocator": {"num_alloc_retries": retries, "num_ooms": 0},
                "prediction": {"total_bytes": 1000, "torch_max_allocated": 400, "torch_max_reserved": 900,
                               "peak_phase": "forward"}}

    good = module.row_from_result(case, result(1000, 0))
    retried = module.row_from_result({**case, "name": "b"}, result(500, 3))
    assert (good["alloc_retries"], retried["alloc_retries"]) == (0, 3)
    summary = module.summarise([good, retried])
    assert summary["retried"] == ["b"] and summary["compared"] == 1 and summary["criterion_met"]
    legacy = module.row_from_result(case, {k: v for k, v in result(1000, 0).items() if k != "allocator"})
    assert legacy["alloc_retries"] is None


def load_benchmark(name: str) -> Any:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


def test_caching_allocator_model_follows_the_allocators_rules() -> None:
    """benchmarks/memory_trace.py's model of CUDA's caching allocator (default settings): rounding, segment
    sizes, best fit, splitting, merging, and a freed block split by a smaller request forcing a new
    segment for the next large request (the cache's excess)."""
    trace = load_benchmark("memory_trace")
    MiB_ = 1 << 20
    model = trace.CachingAllocatorModel()
    model.malloc("small", 1000)  # rounded to 1024 B, from a 2 MiB small-pool segment
    assert (model.allocated, model.reserved) == (1024, 2 * MiB_)
    model.malloc("medium", 5 * MiB_)  # 1-10 MiB: a 20 MiB segment
    assert model.reserved == 22 * MiB_
    model.malloc("large", 30 * MiB_ + 1)  # rounded up to 30 MiB + 512 B, in a 32 MiB segment
    assert model.reserved == 54 * MiB_ and model.allocated == 1024 + 5 * MiB_ + 30 * MiB_ + 512
    model.free("large")
    model.malloc("fits", 8 * MiB_)  # best fit: the 15 MiB left of the 20 MiB segment, not the 32 MiB one
    assert model.reserved == 54 * MiB_
    model.malloc("splits", 12 * MiB_)  # takes the free 32 MiB segment and splits it
    model.malloc("large again", 30 * MiB_)  # nothing free is that large any more: a new 30 MiB segment
    assert model.reserved == 84 * MiB_ and model.peak_allocated == model.allocated
    model.free("splits")
    model.free("large again")
    model.malloc("whole", 32 * MiB_)  # the freed 12 MiB merged back with its 20 MiB neighbour
    assert model.reserved == 84 * MiB_
    # A 10 MiB block freed, a 4 MiB request splits it, the 10 MiB request again needs a new segment.
    replayed = trace.replay([(10 * MiB_ + 1, "a"), (-1, "a"), (4 * MiB_, "b"), (10 * MiB_ + 1, "a")])
    assert (replayed.peak_reserved, replayed.peak_allocated) == (24 * MiB_, 14 * MiB_ + 512)


@pytest.mark.parametrize("loss_impl", ["triton", "torch"])
def test_item_table_sized_buffers_cost_at_most_a_split_table(loss_impl: str) -> None:
    """From 10^6 items the table-sized buffers are a step's largest, but they find the segments of the
    first step again: the allocator's excess grows with the catalogue only by the share of one table that
    a split of Adam's freed temporary costs (TABLE_SPLIT_FACTOR; it was 1.1 tables before e92b87d, none in
    e92b87d, which under-predicted four catalogue-scale trials by 10.7-14.2%)."""
    config = BASES["batch_negatives"].replace(loss_impl=loss_impl, num_negatives=4096)
    rest = set()
    for size in (5 * 10**6, 10**7, 2 * 10**7):
        shape = resolve_shape(config, size)
        split = round(memory_model.TABLE_SPLIT_FACTOR * memory_model.item_table_bytes(shape))
        assert split >= memory_model.item_table_bytes(shape) // 2
        rest.add(memory_model.allocator_overhead_bytes(shape) - split)
    assert len(rest) == 1


def test_negative_indices_are_released_before_the_slice_backward() -> None:
    """Autograd frees what the loss saved once its backward has run: the fused per-position trial's 3.1 GiB
    index tensor is not alive when the item table's slice backward runs (counted there, it put
    c10m-position-triton-k4096-b512-l200-d128's allocated peak 2.8 GiB, 11.8%, over the measurement)."""
    config = TrainConfig(loss="ce-neg", negative_scope="position", num_negatives=4096, loss_impl="triton",
                         batch_size=512, max_len=200, hidden=128, device="cuda")
    shape = resolve_shape(config, 9_538_334)
    phases = memory_model.phase_terms(shape)
    assert phases["loss_backward"]["negative_indices"] == 512 * 200 * 4096 * 8
    assert not phases["item_slice_backward"].get("negative_indices")
    assert "negative_indices" not in phases["embedding_backward"]
    measured_allocated = 25_616_506_368  # torch_max_allocated on the H200 (measured-e92b87d.csv)
    allocated = predict_peak_bytes(config, 9_538_334, num_users=1100).torch_max_allocated
    assert abs(allocated - measured_allocated) / measured_allocated < 0.02


@pytest.mark.parametrize(("batch", "length", "num_items"),
                         [(128, 200, 94_615), (16, 200, 956_306), (4, 100, 9_538_334), (4, 64, 9_509_502)])
def test_pytorch_full_ce_cache_keeps_its_bf16_logits_segment_and_a_pinned_share(
    batch: int, length: int, num_items: int
) -> None:
    """PyTorch full CE's excess: the bf16 logits' segment (half a float32 [N, C] buffer; measured 0.46-0.59)
    and PINNED_TRANSIENT_SHARE of a float32 one (the backward's cuBLAS workspace pinned one in
    c2-100k-full-torch-b256-l200-d128: 1.49 kept), at every catalogue. The rule it replaces charged a whole
    float32 buffer more where Adam's tables of the first step outgrew the bf16 segment: 1.5 for
    c2-10m-full-torch-b4-l64-d128, which kept 0.53 (+24.8%). In float32 there is no bf16 segment. The
    pinned share is charged only to trials whose trainer left the cuBLAS workspaces to the first step (all
    of those measured); today's trainer makes them first, and keeps the bf16 segment alone."""
    config = TrainConfig(loss="ce", loss_impl="torch", batch_size=batch, max_len=length, device="cuda")
    shape = resolve_shape(config, num_items, workspaces_warmed=False)
    logits = shape.rows * num_items * memory_model.FLOAT32
    share = memory_model.PINNED_TRANSIENT_SHARE
    assert 0.5 < share < 1
    assert memory_model.full_ce_logits_excess_bytes(shape) == logits // 2 + round(share * logits)
    fp32 = resolve_shape(config.replace(precision="fp32"), num_items, workspaces_warmed=False)
    assert memory_model.full_ce_logits_excess_bytes(fp32) == round(share * logits)
    # With the warm-up, the pinned share stays only where the logits hold fewer than TABLE_PIN_MAX_TABLES item
    # tables (N < 8 d: the two trials at 10^7 items here), where a table can still pin them.
    warmed = resolve_shape(config, num_items)
    table_pin = logits < memory_model.TABLE_PIN_MAX_TABLES * memory_model.item_table_bytes(warmed)
    assert table_pin == (num_items > 10**6)
    pinned = round(share * logits) if table_pin else 0
    assert memory_model.full_ce_logits_excess_bytes(warmed) == logits // 2 + pinned
    assert memory_model.full_ce_logits_excess_bytes(resolve_shape(config.replace(precision="fp32"),
                                                                  num_items)) == pinned


def test_backward_workspace_pins_the_largest_transients_segment() -> None:
    """The cause of the PyTorch losses' second extra transient, replayed through benchmarks/memory_trace.py's
    allocator model: a per-position step (index, float32 gather G, its bf16 cast, the cast's gradient, G's
    gradient) with the two cuBLAS workspaces CUDA takes. Autograd's thread takes its workspace at the first
    matmul of the first backward (the small product for the hidden states' gradient); with no other free
    block of 32 MiB it lands at the start of G's freed segment, which then holds neither G nor, once the
    index has moved into the bf16 segment, the bf16 gradient: a fourth G-sized segment, two G beyond the
    allocated peak. A free 40 MiB block left by the evaluation takes the workspace instead: one G. So does
    the trainer's warm-up, which makes both workspaces before anything else (study/memory/blas_workspaces.py):
    one G whatever the evaluation left."""
    trace = load_benchmark("memory_trace")
    MiB_ = 1 << 20
    gather = 1024 * MiB_

    def step(i: int) -> list[tuple[int, str, str]]:
        return [(4 * MiB_, f"weights {i}", "aten::addmm"), (64 * MiB_, f"index {i}", "aten::randint"),
                (gather, f"g32 {i}", "aten::index"), (gather // 2, f"g16 {i}", "aten::empty_strided"),
                (-1, f"g32 {i}", ""), (48 * MiB_, f"logits {i}", "aten::empty_strided"),
                (-1, f"logits {i}", "autograd::engine::evaluate_function: LogsumexpBackward0"),
                (MiB_, f"hidden grad {i}", "aten::bmm"), (gather // 2, f"g16 grad {i}", "aten::bmm"),
                (-1, f"g16 {i}", "BmmBackward0"), (gather, f"g32 grad {i}", "aten::empty_strided"),
                (-1, f"g16 grad {i}", "ToCopyBackward0"), (-1, f"g32 grad {i}", "IndexBackward0"),
                (-1, f"index {i}", "IndexBackward0"), (-1, f"hidden grad {i}", ""), (-1, f"weights {i}", "")
                ] + ([(40 * MiB_, "adam state", "aten::zeros_like")] if i == 0 else [])

    evaluation = [(40 * MiB_, "scores", "aten::empty"), (40 * MiB_, "keys", "aten::empty"),
                  (-1, "scores", ""), (-1, "keys", "")]
    steps = [event for i in range(3) for event in step(i)]

    def excess(events: list[tuple[int, str, str]], workspace_mib: int, *, warmed: bool = False) -> float:
        if workspace_mib:
            events = trace.with_workspaces(events, workspace_mib * MiB_, warmed=warmed)
        model = trace.replay([(size, key) for size, key, _ in events])
        return (model.peak_reserved - model.peak_allocated) / gather

    assert 0.95 < excess(steps, 0) < 1.05
    assert 1.9 < excess(steps, 32) < 2.0
    assert 0.95 < excess(evaluation + steps, 32) < 1.05
    assert 0.95 < excess(steps, 32, warmed=True) < 1.05
    assert 0.95 < excess(evaluation + steps, 32, warmed=True) < 1.05
    warmed = trace.with_workspaces(steps, 32 * MiB_)  # the default: as the trainer runs a trial
    assert [key for _, key, _ in warmed[:2]] == list(trace.WORKSPACE_KEYS) and warmed[2:] == steps


def test_the_warm_up_removes_the_pinned_share_where_only_a_workspace_could_pin() -> None:
    """With the trainer's cuBLAS warm-up no workspace pins the PyTorch losses' largest transient: where it
    holds TABLE_PIN_MAX_TABLES item tables or more, the model charges one gather beyond the allocated peak
    (the float32 gradient's own segment), or full CE's bf16 logits segment alone. Replayed with the workspaces
    made first, c1m-position-torch-k256-b256-l200-d256 (13.7 tables) kept 9.9 GiB (was 22.3, pinned) and
    c2-100k-full-torch-b256-l200-d128 9.1 (was 27.2); the model now charges 10.7 and 9.1. Where the transient
    holds fewer tables, an item table can still pin it (c2-1m-position-torch-k256-b128-l200-d128, 6.9 tables:
    1.62 gathers kept, replayed with the warm-up), and the model charges as before."""
    position = TrainConfig(loss="ce-neg", negative_scope="position", num_negatives=256, loss_impl="torch",
                           batch_size=256, max_len=200, hidden=256, device="cuda")
    shape = resolve_shape(position, 956_306)
    gather = memory_model.torch_position_gather_bytes(shape)
    assert gather >= memory_model.TABLE_PIN_MAX_TABLES * memory_model.item_table_bytes(shape)
    assert memory_model.torch_position_excess_bytes(shape) == gather
    unwarmed = resolve_shape(position, 956_306, workspaces_warmed=False)
    assert memory_model.torch_position_excess_bytes(unwarmed) == round(
        (1 + memory_model.PINNED_TRANSIENT_SHARE) * gather)
    warmed_prediction = predict_peak_bytes(position, 956_306, num_users=1100)
    charged = warmed_prediction.torch_max_reserved - warmed_prediction.torch_max_allocated
    assert abs(charged - 10.68 * GiB) < 0.01 * GiB
    full = TrainConfig(loss="ce", loss_impl="torch", batch_size=256, max_len=200, hidden=128, device="cuda")
    full_shape = resolve_shape(full, 95_236)
    assert memory_model.full_ce_logits_excess_bytes(full_shape) == full_shape.rows * 95_236 * 2
    # fewer tables per transient: an item table can pin it, with or without the warm-up
    few = position.replace(batch_size=128, hidden=128)
    warmed, before = resolve_shape(few, 949_706), resolve_shape(few, 949_706, workspaces_warmed=False)
    assert memory_model.largest_transient_bytes(warmed) < 8 * memory_model.item_table_bytes(warmed)
    assert memory_model.allocator_overhead_bytes(warmed) == memory_model.allocator_overhead_bytes(before)
    assert memory_model.pinned_transient_share(warmed) == memory_model.PINNED_TRANSIENT_SHARE
    # the fused losses have no such transient, a CPU no workspaces: no charge either way
    fused = resolve_shape(few.replace(loss_impl="triton"), 949_706, workspaces_warmed=False)
    cpu = resolve_shape(few, 949_706, device="cpu", workspaces_warmed=False)
    assert memory_model.pinned_transient_share(fused) == memory_model.pinned_transient_share(cpu) == 0


def test_adam_states_settle_beside_the_gather_at_catalogue_scale() -> None:
    """PyTorch drawn at 10^7 items kept 0.55 of its [N, K, d] gather beyond the allocated peak
    (c2-10m-drawn-torch-k512-b512-l200-d64, with the 1.64 charged by 1ee330c +41.5%): with G >= 4 item
    tables, Adam's two states settle in G's float32 segment beside the bf16 cast, inside the excess the
    gather is charged for. Fewer tables per G (the 10^7 per-position trials, 1.30-1.42 G kept) spill."""
    drawn = TrainConfig(loss="ce-neg", negative_scope="drawn", num_negatives=512, loss_impl="torch",
                        batch_size=512, max_len=200, hidden=64, device="cuda")
    shape = resolve_shape(drawn, 9_509_502)
    table = memory_model.item_table_bytes(shape)
    assert memory_model.torch_position_gather_bytes(shape) >= 4 * table
    assert memory_model.table_segments_bytes(shape) == -2 * table
    position = resolve_shape(drawn.replace(negative_scope="position", num_negatives=256, batch_size=256),
                             9_509_502)
    assert memory_model.torch_position_gather_bytes(position) < 2 * table
    assert memory_model.table_segments_bytes(position) == round(memory_model.TABLE_SPLIT_FACTOR * table)
    # In between, the credit grows with K, and the prediction with it.
    totals = [predict_peak_bytes(drawn.replace(num_negatives=k), 9_509_502).total_bytes
              for k in range(160, 400, 8)]
    assert totals == sorted(totals)
    measured_peak = 38_969_278_464  # nvml_process_peak on the H200 (measured-1ee330c.csv), before the warm-up
    predicted = predict_peak_bytes(drawn, 9_509_502, num_users=2100, workspaces_warmed=False).total_bytes
    assert 0.20 < predicted / measured_peak - 1 <= 0.25


def test_fused_per_position_index_is_charged_where_the_first_steps_tables_take_its_segment() -> None:
    """The fused per-position loss's [N, K] index tensor: above SORT_MAX_DIM the backward sorts no copy, so
    the item tables of the first step's end take the index's freed segment whenever one fits in it, and the
    next index needs a segment of its own (c2-100k-position-triton-k4096-b128-l200-d256: 0.59 GiB kept with
    a 0.78 GiB index, -12.6% with the 256 MiB charged by 1ee330c). At d <= 128 the sorted int32 copy's block
    takes Adam's two states and keeps the rest (the 10^6-item study trial K=4096, B=1024, L=200, d=64 kept
    2.67 GiB on an H200, -16.4% with the 256 MiB charged before); tables larger than the index do not fit in
    it; drawn negatives have no index tensor."""
    config = TrainConfig(loss="ce-neg", negative_scope="position", num_negatives=4096, loss_impl="triton",
                         batch_size=128, max_len=200, hidden=256, device="cuda")
    shape = resolve_shape(config, 95_330)
    index = 128 * 200 * 4096 * memory_model.INT64
    assert memory_model.fused_index_excess_bytes(shape) == index
    assert memory_model.allocator_overhead_bytes(shape) > index
    assert memory_model.fused_index_excess_bytes(resolve_shape(config, 9_509_502)) == 0  # 9.1 GiB tables
    narrow = resolve_shape(config.replace(hidden=128), 95_330)
    two_tables = 2 * memory_model.item_table_bytes(narrow)
    assert memory_model.fused_index_excess_bytes(narrow) == index // 2 - two_tables
    assert memory_model.fused_index_excess_bytes(resolve_shape(config.replace(hidden=128), 2_000_000)) == 0
    for other in (config.replace(negative_scope="drawn"), config.replace(loss_impl="torch")):
        assert memory_model.fused_index_excess_bytes(resolve_shape(other, 95_330)) == 0
    study_config = config.replace(hidden=64, batch_size=1024, max_len=200, eval_batch_size=256,
                                  eval_max_scores=1 << 26)
    kept = memory_model.fused_index_excess_bytes(resolve_shape(study_config, 1_000_000)) / 2**30
    assert abs(kept - 2.67) < 0.05  # measured on an H200 (results/h200-2026-11-29c/synthetic-f9dc092)
    measured = 15_808_331_776  # its process peak (NVML)
    predicted = predict_peak_bytes(study_config, 1_000_000, num_users=20_000).total_bytes
    assert abs(predicted / measured - 1) < 0.02


def test_pytorch_full_ce_item_gradients_form_after_the_logits_gradients() -> None:
    """The [C, d] gradients of PyTorch full CE appear in the product's backward, when only the bf16 cast of
    the logits' gradient is left: at 10^7 items they are not added to LogSoftmax's 12 B per logit (which
    over-predicted c10m-full-torch-b4-l100-d64's allocated peak by 3.3 GiB)."""
    config = TrainConfig(loss="ce", loss_impl="torch", batch_size=4, max_len=100, device="cuda")
    shape = resolve_shape(config, 9_538_334)
    n, c, d = shape.rows, shape.num_items, shape.hidden
    cast_table = c * d * 2
    assert memory_model.loss_backward_bytes(shape) == n * c * 12 + 3 * n * d * 4 + cast_table
    measured_allocated = 54_401_007_616  # torch_max_allocated on the H200 (measured-e92b87d.csv)
    allocated = predict_peak_bytes(config, 9_538_334, num_users=1100).torch_max_allocated
    assert abs(allocated - measured_allocated) / measured_allocated < 0.01


def test_fused_full_catalogue_counts_its_item_gradient_once() -> None:
    """The fused full-catalogue backward writes one [C, d] item gradient (its own term), no partial tiles
    of it: besides that gradient its backward holds a few [N, d] buffers."""
    shape = resolve_shape(BASES["full_ce"].replace(batch_size=64, max_len=200), 10**7)
    assert memory_model.loss_backward_bytes(shape) < 16 * shape.rows * shape.hidden * memory_model.FLOAT32
    assert memory_model.loss_backward_bytes(shape) < memory_model.item_table_bytes(shape) // 10


def test_evaluation_forward_is_charged_per_chunk_of_scores() -> None:
    """At 10^7 items evaluation scores one user at a time: its encoder forward is one sequence, not the
    evaluation batch of 512."""
    shape = resolve_shape(BASES["full_ce"].replace(max_len=200, hidden=256, eval_batch_size=512), 10**7)
    scores = memory_model.EVAL_SCORE_COPIES * shape.num_items * memory_model.FLOAT32
    inputs = 2 * shape.eval_batch * shape.length * memory_model.INT64
    one_sequence = memory_model.EVAL_FORWARD_COPIES * shape.length * shape.hidden * memory_model.FLOAT32
    assert memory_model.evaluation_bytes(shape) == scores + inputs + one_sequence


def test_evaluation_is_charged_for_the_configured_chunk_of_scores() -> None:
    """TrainConfig.eval_max_scores sets the users scored at once (its // C), and so the evaluation's charge;
    the default is the chunk the memory model was validated with (2^24 scores)."""
    config = BASES["full_ce"].replace(max_len=50, hidden=64, eval_batch_size=256)
    default = resolve_shape(config, 10**6)
    larger = resolve_shape(config.replace(eval_max_scores=1 << 26), 10**6)
    assert default.eval_max_scores == 1 << 24 and larger.eval_max_scores == 1 << 26
    per_user = memory_model.EVAL_SCORE_COPIES * 10**6 * memory_model.FLOAT32 + (
        memory_model.EVAL_FORWARD_COPIES * 50 * 64 * memory_model.FLOAT32)
    grown = memory_model.evaluation_bytes(larger) - memory_model.evaluation_bytes(default)
    assert grown == (67 - 16) * per_user
    whole_batch = resolve_shape(config.replace(eval_max_scores=1 << 30), 10**6)  # capped by the batch
    assert memory_model.evaluation_bytes(whole_batch) - memory_model.evaluation_bytes(default) == (
        (256 - 16) * per_user)


def test_pytorch_sampled_loss_peaks_in_its_backward() -> None:
    """CE- with shared negatives: 9 B per logit in forward, 17 in backward (logsumexp's backward keeps its
    three float32 temporaries to the end of one expression, then CopySlices makes three copies)."""
    shape = resolve_shape(BASES["batch_negatives"].replace(loss_impl="torch", num_negatives=16384), 10**5)
    logits = shape.rows * shape.negatives
    forward, backward = memory_model.loss_forward_bytes(shape), memory_model.loss_backward_bytes(shape)
    assert backward >= 17 * logits > forward > 9 * logits
