"""Triton kernels for dense negatives (full catalogue, shared [K], per sequence [B, K]) against float64.

Runs the kernels through the Triton interpreter on CPU tensors, so sizes are tiny and not multiples of
the 16-wide tiles the interpreter uses.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import dataclasses  # noqa: E402
import math  # noqa: E402
import types  # noqa: E402
import warnings  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from loss_oracle import oracle_with_grads, relative_error  # noqa: E402
from repo_scripts import load_script  # noqa: E402
from triton.runtime.errors import OutOfResources  # noqa: E402

import kernels.triton_common as triton_common  # noqa: E402
import kernels.triton_shared as triton_shared  # noqa: E402
from kernels.triton_shared import shared_linear_cross_entropy  # noqa: E402

IGNORE = -100
# The shared scheme again, through the fused backward kernel (both gradients in one pass, atomics).
FUSED = "shared-fused"
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


@pytest.fixture(autouse=True)
def poison_kernel_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every buffer a kernel must overwrite starts as NaN (integer ones as -1, an index out of every
    range), so an unwritten element fails the comparison or the index_add_ that reads it."""

    def nan_filled(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        poison = float("nan") if dtype.is_floating_point else -1
        return torch.full(shape, poison, dtype=dtype, device=device)

    monkeypatch.setattr(triton_common, "new_output", nan_filled)


def make_case(scheme: str, *, num_rows: int, num_items: int, num_negatives: int, dim: int,
              rows_per_sequence: int = 1, hidden_dtype: torch.dtype = torch.float32,
              items_dtype: torch.dtype | None = None, seed: int = 0) -> dict:
    scheme = "shared" if scheme == FUSED else scheme
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(num_rows, dim, generator=generator).mul(0.5).to(hidden_dtype)
    items = torch.randn(num_items, dim, generator=generator).mul(0.5).to(items_dtype or hidden_dtype)
    targets = torch.randint(0, num_items, (num_rows,), generator=generator)
    negatives = None
    if scheme == "shared":
        negatives = torch.randint(0, num_items, (num_negatives,), generator=generator)
        targets[::3] = negatives[torch.randint(0, num_negatives, (len(targets[::3]),), generator=generator)]
    elif scheme == "sequence":
        num_sequences = num_rows // rows_per_sequence
        negatives = torch.randint(0, num_items, (num_sequences, num_negatives), generator=generator)
        row_negatives = negatives.repeat_interleave(rows_per_sequence, dim=0)
        targets[::3] = row_negatives[::3, 0]
    targets[1::7] = IGNORE
    return dict(hidden=hidden, items=items, targets=targets, negatives=negatives)


def run_both(case: dict, *, scheme: str, rows_per_sequence: int = 1,
             log_q: torch.Tensor | float | None = None, remove_accidental_hits: bool = True,
             reduction: str = "mean", seed: int = 1, config: triton_shared.SharedConfig | None = None):
    """Loss and gradients of the kernel (with `config`'s tiles, or the default ones) and of the float64
    reference, with a random upstream gradient."""
    hidden = case["hidden"].clone().requires_grad_(True)
    items = case["items"].clone().requires_grad_(True)
    if scheme == FUSED:
        scheme, config = "shared", fused_config()
    num_negatives = items.shape[0] if scheme == "full" else case["negatives"].shape[-1]
    kwargs = dict(scheme=scheme, rows_per_sequence=rows_per_sequence, log_q=log_q,
                  remove_accidental_hits=remove_accidental_hits, reduction=reduction)
    loss = shared_linear_cross_entropy(hidden, items, case["targets"], case["negatives"],
                                       num_negatives=num_negatives, ignore_index=IGNORE, config=config,
                                       **kwargs)
    upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(seed)) + 0.5
    (loss * upstream).sum().backward()
    reference = oracle_with_grads(case["hidden"], case["items"], case["targets"], case["negatives"],
                                  upstream=upstream, log_q=log_q, ignore_index=IGNORE, reduction=reduction,
                                  remove_accidental_hits=remove_accidental_hits)
    return (loss, hidden.grad, items.grad), reference


def fused_config() -> triton_shared.SharedConfig:
    base = triton_shared.default_config(torch.device("cpu"), 16)
    return dataclasses.replace(base, fused_backward=base.grad_hidden, fused_max_negatives=10**6)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float, what: str) -> None:
    assert actual.dtype != torch.float64
    assert torch.isfinite(actual).all(), f"{what}: non-finite values (unwritten or NaN)"
    error = relative_error(actual, expected)
    assert error < tolerance, f"{what}: relative error {error:.2e} >= {tolerance:.0e}"


def assert_matches(kernel, reference, tolerance: float) -> None:
    for name, actual, expected in zip(("loss", "grad hidden", "grad items"), kernel, reference):
        assert_close(actual, expected, tolerance, name)


SCHEME_SHAPES = {
    # scheme: (rows, items, negatives, rows per sequence); rows and K not multiples of the 16-wide tiles
    "full": (37, 83, 83, 1),
    "shared": (45, 120, 29, 1),
    FUSED: (45, 120, 29, 1),
    "sequence": (3 * 13, 90, 21, 13),
}


@pytest.mark.parametrize("scheme", ["full", "shared", FUSED, "sequence"])
@pytest.mark.parametrize(
    "hidden_dtype,items_dtype",
    [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
     (torch.bfloat16, torch.float32)],
    ids=["fp32", "bf16", "fp16", "bf16-hidden-fp32-items"],
)
def test_dtypes_match_float64_reference(scheme: str, hidden_dtype: torch.dtype,
                                        items_dtype: torch.dtype) -> None:
    rows, num_items, k, rows_per_sequence = SCHEME_SHAPES[scheme]
    case = make_case(scheme, num_rows=rows, num_items=num_items, num_negatives=k, dim=48,
                     rows_per_sequence=rows_per_sequence, hidden_dtype=hidden_dtype, items_dtype=items_dtype)
    kernel, reference = run_both(case, scheme=scheme, rows_per_sequence=rows_per_sequence)
    assert kernel[1].dtype == hidden_dtype and kernel[2].dtype == items_dtype
    assert_matches(kernel, reference, TOLERANCE[hidden_dtype])


@pytest.mark.parametrize("scheme", ["full", "shared", FUSED, "sequence"])
@pytest.mark.parametrize("dim", [16, 64, 128])
def test_feature_sizes(scheme: str, dim: int) -> None:
    rows, num_items, k, rows_per_sequence = SCHEME_SHAPES[scheme]
    case = make_case(scheme, num_rows=rows, num_items=num_items, num_negatives=k, dim=dim,
                     rows_per_sequence=rows_per_sequence, seed=dim)
    kernel, reference = run_both(case, scheme=scheme, rows_per_sequence=rows_per_sequence)
    assert_matches(kernel, reference, TOLERANCE[torch.float32])


@pytest.mark.parametrize("scheme", ["full", "shared", FUSED, "sequence"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions(scheme: str, reduction: str) -> None:
    rows, num_items, k, rows_per_sequence = SCHEME_SHAPES[scheme]
    case = make_case(scheme, num_rows=rows, num_items=num_items, num_negatives=k, dim=16,
                     rows_per_sequence=rows_per_sequence, seed=7)
    kernel, reference = run_both(case, scheme=scheme, rows_per_sequence=rows_per_sequence,
                                 reduction=reduction)
    assert kernel[0].shape == reference[0].shape
    if reduction == "none":
        assert (kernel[0][case["targets"] == IGNORE] == 0).all()
    assert_matches(kernel, reference, TOLERANCE[torch.float32])


@pytest.mark.parametrize("scheme", ["shared", FUSED, "sequence"])
@pytest.mark.parametrize("log_q_kind", ["tensor", "float"])
@pytest.mark.parametrize("remove_accidental_hits", [True, False])
def test_log_q_and_accidental_hits(scheme: str, log_q_kind: str, remove_accidental_hits: bool) -> None:
    rows, num_items, k, rows_per_sequence = SCHEME_SHAPES[scheme]
    case = make_case(scheme, num_rows=rows, num_items=num_items, num_negatives=k, dim=16,
                     rows_per_sequence=rows_per_sequence, seed=11)
    log_q: torch.Tensor | float
    if log_q_kind == "tensor":
        popularity = torch.rand(num_items, generator=torch.Generator().manual_seed(3)) + 0.05
        log_q = (popularity / popularity.sum()).log()
    else:
        log_q = -math.log(num_items)
    kernel, reference = run_both(case, scheme=scheme, rows_per_sequence=rows_per_sequence, log_q=log_q,
                                 remove_accidental_hits=remove_accidental_hits)
    assert_matches(kernel, reference, TOLERANCE[torch.float32])


def test_accidental_hit_removal_changes_the_loss() -> None:
    """Guards the masking itself: with hits present, removing them must give a different loss."""
    case = make_case("shared", num_rows=20, num_items=30, num_negatives=17, dim=16, seed=5)
    kwargs = dict(scheme="shared", num_negatives=17, rows_per_sequence=1, log_q=None, ignore_index=IGNORE,
                  reduction="none")
    removed = shared_linear_cross_entropy(case["hidden"], case["items"], case["targets"], case["negatives"],
                                          remove_accidental_hits=True, **kwargs)
    kept = shared_linear_cross_entropy(case["hidden"], case["items"], case["targets"], case["negatives"],
                                       remove_accidental_hits=False, **kwargs)
    rows_with_hits = (case["negatives"][None, :] == case["targets"][:, None]).any(dim=1)
    assert rows_with_hits.any()
    assert (removed[rows_with_hits] < kept[rows_with_hits]).all()
    torch.testing.assert_close(removed[~rows_with_hits], kept[~rows_with_hits])


def test_full_catalogue_equals_cross_entropy() -> None:
    case = make_case("full", num_rows=33, num_items=70, num_negatives=70, dim=64, seed=9)
    loss = shared_linear_cross_entropy(case["hidden"], case["items"], case["targets"], None, scheme="full",
                                       num_negatives=70, rows_per_sequence=1, log_q=None,
                                       remove_accidental_hits=True, ignore_index=IGNORE, reduction="mean")
    expected = torch.nn.functional.cross_entropy(case["hidden"].double() @ case["items"].double().T,
                                                 case["targets"], ignore_index=IGNORE)
    assert abs(loss.item() - expected.item()) < 1e-5 * expected.item()


def test_row_splits_of_item_gradient() -> None:
    """Many rows and few negatives make grad_items split the rows into several partial sums."""
    case = make_case("shared", num_rows=70, num_items=50, num_negatives=11, dim=16, seed=13)
    plan_config = triton_shared.default_config(torch.device("cpu"), 16)
    plan = triton_shared._Plan(scheme="shared", num_items=50, num_groups=1, rows_per_group=70,
                               num_negatives=11,
                               log_q_mode=0, log_q_scalar=0.0, remove_hits=True, ignore_index=IGNORE,
                               reduction="mean", config=plan_config)
    assert triton_shared._row_splits(plan, 70) > 1
    assert_matches(*run_both(case, scheme="shared"), TOLERANCE[torch.float32])


def test_sequence_half_gradient_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 item gradients of per-sequence negatives go through float32 buffers, a chunk of sequences at a
    time; K larger than the rows makes chunks of one sequence, so several launches must all be added."""
    case = make_case("sequence", num_rows=4 * 5, num_items=60, num_negatives=33, dim=16, rows_per_sequence=5,
                     hidden_dtype=torch.bfloat16, seed=17)
    launches = []
    original = triton_shared._launch_grad_items

    def counting_launch(*args, **kwargs):
        launches.append(kwargs["group_offset"])
        return original(*args, **kwargs)

    monkeypatch.setattr(triton_shared, "_launch_grad_items", counting_launch)
    assert_matches(*run_both(case, scheme="sequence", rows_per_sequence=5), TOLERANCE[torch.bfloat16])
    assert launches == [0, 1, 2, 3]


def test_strided_items_view_and_int32_indices() -> None:
    """The harness passes items = weight[1:] (non-zero storage offset); indices may be int32."""
    case = make_case("sequence", num_rows=2 * 17, num_items=64, num_negatives=19, dim=48,
                     rows_per_sequence=17, seed=21)
    weight = torch.cat([torch.full((1, 48), float("nan")), case["items"]]).requires_grad_(True)
    hidden = case["hidden"].clone().requires_grad_(True)
    loss = shared_linear_cross_entropy(hidden, weight[1:], case["targets"].int(), case["negatives"].int(),
                                       scheme="sequence", num_negatives=19, rows_per_sequence=17, log_q=None,
                                       remove_accidental_hits=True, ignore_index=IGNORE, reduction="sum")
    loss.backward()
    assert weight.grad is not None and hidden.grad is not None
    assert (weight.grad[0] == 0).all()
    kernel = (loss, hidden.grad, weight.grad[1:])
    reference = oracle_with_grads(case["hidden"], case["items"], case["targets"], case["negatives"],
                                  ignore_index=IGNORE, reduction="sum")
    assert_matches(kernel, reference, TOLERANCE[torch.float32])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_every_row_ignored(reduction: str) -> None:
    case = make_case("shared", num_rows=20, num_items=40, num_negatives=9, dim=16, seed=23)
    case["targets"][:] = IGNORE
    kernel, _ = run_both(case, scheme="shared", reduction=reduction)
    loss, grad_hidden, grad_items = kernel
    assert loss.item() == 0.0
    assert (grad_hidden == 0).all() and (grad_items == 0).all()


@pytest.mark.parametrize("wanted", ["hidden", "items"])
def test_only_the_needed_gradient_is_computed(monkeypatch: pytest.MonkeyPatch, wanted: str) -> None:
    case = make_case("shared", num_rows=20, num_items=40, num_negatives=9, dim=16, seed=29)
    skipped = "_grad_items" if wanted == "hidden" else "_grad_hidden"
    called = []
    monkeypatch.setattr(triton_shared, skipped, lambda *a, **k: called.append(skipped))
    hidden = case["hidden"].clone().requires_grad_(wanted == "hidden")
    items = case["items"].clone().requires_grad_(wanted == "items")
    loss = shared_linear_cross_entropy(hidden, items, case["targets"], case["negatives"],
                                       scheme="shared", num_negatives=9, rows_per_sequence=1, log_q=None,
                                       remove_accidental_hits=True, ignore_index=IGNORE, reduction="mean")
    loss.backward()
    grad = hidden.grad if wanted == "hidden" else items.grad
    assert called == [] and grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_no_rows() -> None:
    hidden = torch.randn(0, 16, requires_grad=True)
    items = torch.randn(10, 16)
    kwargs = dict(scheme="shared", num_negatives=3, rows_per_sequence=1, log_q=None,
                  remove_accidental_hits=True, ignore_index=IGNORE)
    targets = torch.zeros(0, dtype=torch.int64)
    negatives = torch.tensor([1, 2, 3])
    per_row = shared_linear_cross_entropy(hidden, items, targets, negatives, reduction="none", **kwargs)
    assert per_row.shape == (0,)
    loss = shared_linear_cross_entropy(hidden, items, targets, negatives, reduction="mean", **kwargs)
    assert loss.item() == 0.0


@pytest.mark.parametrize(
    "overrides,argument",
    [(dict(scheme="position"), "scheme"), (dict(reduction="max"), "reduction"),
     (dict(rows_per_sequence=4), "rows_per_sequence"), (dict(num_negatives=5), "negatives")],
)
def test_bad_arguments_name_the_argument(overrides: dict, argument: str) -> None:
    case = make_case("sequence", num_rows=12, num_items=30, num_negatives=7, dim=16, rows_per_sequence=6)
    kwargs = dict(scheme="sequence", num_negatives=7, rows_per_sequence=6, log_q=None,
                  remove_accidental_hits=True, ignore_index=IGNORE, reduction="mean")
    kwargs.update(overrides)
    with pytest.raises(ValueError, match=argument):
        shared_linear_cross_entropy(case["hidden"], case["items"], case["targets"], case["negatives"],
                                    **kwargs)


@pytest.mark.parametrize("scheme", ["full", "shared", "sequence"])
def test_public_api_dispatches_to_these_kernels(scheme: str) -> None:
    """kernels.linear_cross_entropy(..., impl="triton") with hidden [B, L, d] reaches these kernels."""
    from kernels import linear_cross_entropy

    num_sequences, length, dim, num_items, k = 3, 11, 48, 70, 19
    case = make_case(scheme, num_rows=num_sequences * length, num_items=num_items, num_negatives=k, dim=dim,
                     rows_per_sequence=length, seed=31)
    log_q = None if scheme == "full" else "uniform"
    hidden = case["hidden"].reshape(num_sequences, length, dim).requires_grad_(True)
    items = case["items"].clone().requires_grad_(True)
    targets = case["targets"].reshape(num_sequences, length)
    loss = linear_cross_entropy(hidden, items, targets, case["negatives"], log_q=log_q, ignore_index=IGNORE,
                                reduction="none", impl="triton")
    assert loss.shape == (num_sequences, length)
    upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(2)) + 0.5
    (loss * upstream).sum().backward()

    reference = oracle_with_grads(case["hidden"], case["items"], case["targets"], case["negatives"],
                                  upstream=upstream, log_q=None if log_q is None else -math.log(num_items),
                                  ignore_index=IGNORE, reduction="none")
    assert hidden.grad is not None
    kernel = (loss.reshape(-1), hidden.grad.reshape(-1, dim), items.grad)
    assert_matches(kernel, reference, TOLERANCE[torch.float32])


@pytest.mark.parametrize("scheme", ["full", "shared", FUSED, "sequence"])
def test_negatives_a_multiple_of_the_tile(scheme: str) -> None:
    """K a multiple of the tile width takes the kernels' unmasked path (no column mask in the loop)."""
    num_rows, num_items, k, rows_per_sequence = {"full": (30, 64, 64, 1), "shared": (30, 90, 32, 1),
                                                 FUSED: (30, 90, 32, 1),
                                                 "sequence": (2 * 15, 70, 32, 15)}[scheme]
    case = make_case(scheme, num_rows=num_rows, num_items=num_items, num_negatives=k, dim=16,
                     rows_per_sequence=rows_per_sequence, seed=37)
    kernel, reference = run_both(case, scheme=scheme, rows_per_sequence=rows_per_sequence)
    assert_matches(kernel, reference, TOLERANCE[torch.float32])


def test_fused_backward_replaces_both_gradient_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a fused configuration the shared scheme's backward is one kernel, not grad_hidden + grad_items."""
    def must_not_run(*args, **kwargs):
        raise AssertionError("the split backward ran although a fused backward was configured")

    monkeypatch.setattr(triton_shared, "_grad_hidden", must_not_run)
    monkeypatch.setattr(triton_shared, "_grad_items", must_not_run)
    rows, num_items, k, _ = SCHEME_SHAPES[FUSED]
    case = make_case(FUSED, num_rows=rows, num_items=num_items, num_negatives=k, dim=16, seed=41)
    assert_matches(*run_both(case, scheme=FUSED), TOLERANCE[torch.float32])


@pytest.mark.parametrize("scheme", ["shared", FUSED, "sequence"])
def test_index_ranges_are_tested_once_per_call_not_per_tile(monkeypatch: pytest.MonkeyPatch,
                                                           scheme: str) -> None:
    """No tile loop tests an index's range: the negatives are checked once per call (_prepare_negatives)
    and the targets once per row block. With range tests (and the refusal masks they feed) inside the
    tile loops, shared K=16384 d=64 forward and backward took 3.8 ms on an H200 instead of 2.7
    (notes/kernel-shared.md); here such tests would grow in number with K."""
    tested = []
    in_catalogue = triton_shared.in_catalogue

    def counting(index, num_items):
        tested.append(1)
        return in_catalogue(index, num_items)

    monkeypatch.setattr(triton_shared, "in_catalogue", counting)
    counts = []
    for k in (20, 80):  # 2 and 5 tiles of 16 negatives
        case = make_case(scheme, num_rows=2 * 15, num_items=200, num_negatives=k, dim=16,
                         rows_per_sequence=15, seed=43)
        tested.clear()
        kernel, reference = run_both(case, scheme=scheme, rows_per_sequence=15)
        assert_matches(kernel, reference, TOLERANCE[torch.float32])
        counts.append(len(tested))
    assert counts[0] > 0, "the counting stand-in was not called: the test no longer sees the range tests"
    assert counts[0] == counts[1], f"range tests per call grew with K: {counts}"


def test_smaller_tiles_shrink_shared_memory_to_the_smallest_tile() -> None:
    """Each step needs less shared memory (stages x (block_m + block_n)); the last is 16x16 with 1 stage."""
    tiles = triton_shared.BlockConfig(block_m=64, block_n=256, num_warps=4, num_stages=3)
    steps = [tiles]
    while (smaller := triton_shared.smaller_tiles(steps[-1])) is not None:
        steps.append(smaller)
    footprint = [t.num_stages * (t.block_m + t.block_n) for t in steps]
    assert all(later < earlier for earlier, later in zip(footprint, footprint[1:])), steps
    assert (steps[1].num_stages, steps[1].block_n) == (2, 256)  # fewer stages before smaller tiles
    assert (steps[-1].block_m, steps[-1].block_n, steps[-1].num_stages) == (16, 16, 1)
    assert all(t.num_warps == 4 for t in steps)


class _SharedMemoryLimit:
    """Stands in for a Triton kernel on a GPU with little shared memory: launches whose tiles exceed
    `limit` (stages x (block_m + block_n)) raise OutOfResources before running, as Triton does when it
    loads the compiled kernel; the others run the real kernel."""

    def __init__(self, kernel, limit: int, launched: list) -> None:
        self.kernel, self.limit, self.launched, self.refused = kernel, limit, launched, 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            tiles = kwargs["num_stages"] * (kwargs["BLOCK_M"] + kwargs["BLOCK_N"])
            if tiles > self.limit:
                self.refused += 1
                raise OutOfResources(tiles, self.limit, "shared memory")
            self.launched.append((self.kernel.fn.__name__, kwargs["BLOCK_M"], kwargs["BLOCK_N"],
                                  kwargs["num_stages"]))
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.mark.parametrize("scheme", ["full", "shared", FUSED, "sequence"])
def test_tiles_too_large_for_the_gpu_fall_back_to_smaller_ones(monkeypatch: pytest.MonkeyPatch,
                                                               scheme: str) -> None:
    """Tiles the GPU cannot hold (a catalogue-scale run crashed on them at d=128 on an H200) are retried
    smaller, once per kernel and shape, with the float64 reference's loss and gradients."""
    launched: list = []
    limited = {}
    for name in ("_forward_kernel", "_grad_hidden_kernel", "_grad_items_kernel", "_fused_backward_kernel"):
        limited[name] = _SharedMemoryLimit(getattr(triton_shared, name), 64, launched)
        monkeypatch.setattr(triton_shared, name, limited[name])
    monkeypatch.setattr(triton_shared, "_fitted_tiles", {})
    big = triton_shared.BlockConfig(block_m=32, block_n=64, num_warps=1, num_stages=2)
    config = triton_shared.SharedConfig(forward=big, grad_hidden=big, grad_items=big, target_programs=4,
                                        fused_backward=big if scheme == FUSED else None,
                                        fused_max_negatives=10**6 if scheme == FUSED else 0)
    monkeypatch.setattr(triton_shared, "default_config", lambda device, dim: config)
    rows, num_items, k, rows_per_sequence = SCHEME_SHAPES[scheme]
    case = make_case(scheme, num_rows=rows, num_items=num_items, num_negatives=k, dim=24,
                     rows_per_sequence=rows_per_sequence, seed=53)
    with pytest.warns(UserWarning, match="need more shared memory"):
        kernel, reference = run_both(case, scheme="shared" if scheme == FUSED else scheme,
                                     rows_per_sequence=rows_per_sequence)
    assert_matches(kernel, reference, TOLERANCE[torch.float32])
    assert launched and all(s * (m + n) <= 64 for _, m, n, s in launched), launched
    expected = {"_forward_kernel", "_fused_backward_kernel"} if scheme == FUSED else {
        "_forward_kernel", "_grad_hidden_kernel", "_grad_items_kernel"}
    assert {name for name, *_ in launched} == expected
    # Refused once each: 32x64 with 2 stages asked 3x the limit, so 32x32 with 2 stages (2x) was skipped.
    assert {name: stand_in.refused for name, stand_in in limited.items() if stand_in.refused} == {
        name: 1 for name in expected}
    fitted = set(triton_shared._fitted_tiles.values())
    assert fitted == {triton_shared.BlockConfig(block_m=32, block_n=32, num_warps=1, num_stages=1)}
    # Later calls launch the fitted tiles directly (the too-large ones are not tried again) and stay quiet.
    launched.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_both(case, scheme="shared" if scheme == FUSED else scheme, rows_per_sequence=rows_per_sequence)
    assert {(m, n, s) for _, m, n, s in launched} == {(32, 32, 1)}


def test_tiles_that_never_fit_name_the_kernel_and_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    launched: list = []
    monkeypatch.setattr(triton_shared, "_forward_kernel",
                        _SharedMemoryLimit(triton_shared._forward_kernel, 16, launched))
    monkeypatch.setattr(triton_shared, "_fitted_tiles", {})
    rows, num_items, k, _ = SCHEME_SHAPES["shared"]
    case = make_case("shared", num_rows=rows, num_items=num_items, num_negatives=k, dim=24, seed=54)
    with pytest.raises(RuntimeError, match=r"forward kernel needs more shared memory .* impl='torch'"):
        run_both(case, scheme="shared")
    assert launched == []


# The per-block opt-in shared memory of an H100/H200 (227 KiB), which Triton compares with a compiled
# kernel's `shared` when it loads it.
H200_SHARED_MEMORY = 232_448
DTYPE_PAIRS = {"bf16": (torch.bfloat16, torch.bfloat16), "fp16": (torch.float16, torch.float16),
               "fp32": (torch.float32, torch.float32),
               "bf16-hidden-fp32-items": (torch.bfloat16, torch.float32)}
KERNELS = ("forward", "grad_hidden", "grad_items", "fused_backward")
# (block_m, block_n, num_stages) that an H200 launches where the tuned tiles' estimated shared memory is
# over its 227 KiB; every other kernel keeps its tuned tiles at d = 64, 96, 128, 256 and 512.
H200_SHRUNK = {
    (512, "bf16"): {"forward": (64, 64, 2), "grad_hidden": (64, 64, 2)},
    (512, "fp16"): {"forward": (64, 64, 2), "grad_hidden": (64, 64, 2)},
    (512, "fp32"): {"forward": (64, 32, 2), "grad_hidden": (64, 32, 2), "grad_items": (32, 64, 2)},
    (512, "bf16-hidden-fp32-items"): {"forward": (64, 32, 2), "grad_hidden": (64, 32, 2)},
}


def h200_tiles(dim: int, hidden_dtype: torch.dtype, items_dtype: torch.dtype,
               limit: int = H200_SHARED_MEMORY) -> triton_shared.SharedConfig:
    return triton_shared.fit_config(triton_shared.gpu_config(dim, 132), dim=dim, hidden_dtype=hidden_dtype,
                                    items_dtype=items_dtype, limit=limit)


@pytest.mark.parametrize("dtypes", list(DTYPE_PAIRS))
@pytest.mark.parametrize("dim", [64, 96, 128, 256, 512])
def test_h200_tiles_are_the_tuned_ones_or_the_first_smaller_step_that_fits(dim: int, dtypes: str) -> None:
    """Each kernel launches its tuned tiles where their estimated shared memory (kernels.tile_memory) fits
    an H200, else the first of smaller_tiles' steps that does (fewer stages before smaller blocks): no
    compilation is refused for shared memory, and no tiles are smaller than the estimate asks.
    benchmarks/kernel_ptx.py --shared-memory compiles these tiles and checks the estimate against Triton."""
    hidden_dtype, items_dtype = DTYPE_PAIRS[dtypes]
    tuned, chosen = triton_shared.gpu_config(dim, 132), h200_tiles(dim, hidden_dtype, items_dtype)
    shrunk = H200_SHRUNK.get((dim, dtypes), {})
    for kernel in KERNELS:
        start, tiles = getattr(tuned, kernel), getattr(chosen, kernel)
        if start is None:
            assert tiles is None, kernel
            continue

        def need(config: triton_shared.BlockConfig, kernel: str = kernel) -> int:
            return triton_shared.shared_memory_bytes(kernel, config, dim=dim, hidden_dtype=hidden_dtype,
                                                     items_dtype=items_dtype)

        expected = start
        if kernel in shrunk:
            block_m, block_n, num_stages = shrunk[kernel]
            expected = dataclasses.replace(start, block_m=block_m, block_n=block_n, num_stages=num_stages)
        assert tiles == expected, f"{kernel}: {tiles}"
        assert need(tiles) <= H200_SHARED_MEMORY, f"{kernel}: {need(tiles)} bytes"
        steps = [start]
        while steps[-1] != tiles:
            smaller = triton_shared.smaller_tiles(steps[-1])
            assert smaller is not None, f"{kernel}: {tiles} is not a step down from {start}"
            steps.append(smaller)
        assert all(need(step) > H200_SHARED_MEMORY for step in steps[:-1]), f"{kernel}: smaller than needed"
    assert (chosen.target_programs, chosen.fused_max_negatives) == (tuned.target_programs,
                                                                    tuned.fused_max_negatives)


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch):
    """torch.cuda reports a GPU with 132 multiprocessors and `shared` bytes of opt-in shared memory per
    block (call the fixture's value with it); the cached device lookups are cleared before and after."""
    caches = (triton_shared.default_config, triton_shared.shared_memory_limit,
              triton_shared._cuda_launch_config)

    def install(shared: int) -> None:
        properties = types.SimpleNamespace(multi_processor_count=132, shared_memory_per_block_optin=shared)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: properties)
        for cache in caches:
            cache.cache_clear()

    yield install
    for cache in caches:
        cache.cache_clear()


@pytest.mark.parametrize("shared", [H200_SHARED_MEMORY, 101_376])
def test_launch_tiles_fit_the_devices_shared_memory(fake_gpu, shared: int) -> None:
    """launch_config fits the tiles to the shared memory the device reports (101,376 bytes: 99 KiB, as on
    an RTX 4090 or an L4), for each dtype at d = 512."""
    fake_gpu(shared)
    cuda = torch.device("cuda")
    for hidden_dtype, items_dtype in DTYPE_PAIRS.values():
        config = triton_shared.launch_config(cuda, 512, hidden_dtype, items_dtype)
        assert config == h200_tiles(512, hidden_dtype, items_dtype, limit=shared)
        for kernel in ("forward", "grad_hidden", "grad_items"):
            need = triton_shared.shared_memory_bytes(kernel, getattr(config, kernel), dim=512,
                                                     hidden_dtype=hidden_dtype, items_dtype=items_dtype)
            assert need <= shared, (kernel, getattr(config, kernel), need)
    assert triton_shared.launch_config(torch.device("cpu"), 512, torch.float32, torch.float32) == (
        triton_shared.default_config(torch.device("cpu"), 512))


@pytest.mark.parametrize("scheme", ["full", "shared", "sequence"])
def test_h200_tiles_at_d512_float32_match_float64(scheme: str) -> None:
    """The tiles an H200 launches for float32 rows of d = 512 (smaller than the tuned ones: 64x32 and
    32x64), run by the interpreter across ragged row blocks and negative tiles."""
    config = h200_tiles(512, torch.float32, torch.float32)
    assert config.forward.block_n == 32 and config.grad_items.block_n == 64
    rows_per_sequence = 35 if scheme == "sequence" else 1
    case = make_case(scheme, num_rows=70, num_items=83 if scheme == "full" else 300, num_negatives=83,
                     dim=512, rows_per_sequence=rows_per_sequence, seed=512)
    kernel, reference = run_both(case, scheme=scheme, rows_per_sequence=rows_per_sequence,
                                 config=dataclasses.replace(config, target_programs=8))
    assert_matches(kernel, reference, TOLERANCE[torch.float32])


# --- the d-blocked forward (BlockConfig.block_d, opt-in) ------------------------------------------------

class _CountingKernel:
    """Stands in for a Triton kernel and counts its launches (the real kernel runs)."""

    def __init__(self, kernel) -> None:
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches += 1
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.fixture
def d_blocked_launches(monkeypatch: pytest.MonkeyPatch) -> tuple[_CountingKernel, _CountingKernel]:
    """(the d-blocked forward, the whole-row forward), each counting its launches."""
    counted = tuple(_CountingKernel(getattr(triton_shared, name))
                    for name in ("_forward_dblock_kernel", "_forward_kernel"))
    monkeypatch.setattr(triton_shared, "_forward_dblock_kernel", counted[0])
    monkeypatch.setattr(triton_shared, "_forward_kernel", counted[1])
    return counted


def d_blocked_config(block_d: int, *, block_m: int = 16, block_n: int = 16) -> triton_shared.SharedConfig:
    """The interpreter's tiles with a d-blocked forward of chunk `block_d`."""
    base = triton_shared.default_config(torch.device("cpu"), 16)
    forward = triton_shared.BlockConfig(block_m=block_m, block_n=block_n, num_warps=1, num_stages=1,
                                        block_d=block_d)
    return dataclasses.replace(base, forward=forward)


# (hidden dtype, items dtype, d, block_d): d = 200 and 96 are not multiples of their chunk; 512 is 8 chunks.
D_BLOCKED_CASES = [
    (torch.float32, torch.float32, 64, 64), (torch.float32, torch.float32, 96, 64),
    (torch.float32, torch.float32, 128, 32), (torch.float32, torch.float32, 200, 64),
    (torch.float32, torch.float32, 256, 64), (torch.float32, torch.float32, 512, 64),
    (torch.bfloat16, torch.bfloat16, 64, 64), (torch.bfloat16, torch.bfloat16, 200, 64),
    (torch.bfloat16, torch.bfloat16, 256, 64), (torch.float16, torch.float16, 96, 64),
    (torch.bfloat16, torch.float32, 200, 64), (torch.float32, torch.float32, 40, 16),
]


@pytest.mark.parametrize("hidden_dtype,items_dtype,dim,block_d", D_BLOCKED_CASES,
                         ids=[f"{str(h)[6:]}-{str(i)[6:]}-d{d}-bd{b}" for h, i, d, b in D_BLOCKED_CASES])
def test_d_blocked_forward_matches_float64(d_blocked_launches, hidden_dtype: torch.dtype,
                                           items_dtype: torch.dtype, dim: int, block_d: int) -> None:
    """Shared negatives with the d-blocked forward, through the public autograd path: loss and both
    gradients (the backward reads the forward's log-sum-exp and positive logits) against float64; rows
    (45) and negatives (29) are not multiples of the 16-wide tiles, and d not always of the chunk."""
    rows, num_items, k, _ = SCHEME_SHAPES["shared"]
    case = make_case("shared", num_rows=rows, num_items=num_items, num_negatives=k, dim=dim,
                     hidden_dtype=hidden_dtype, items_dtype=items_dtype, seed=dim + block_d)
    kernel, reference = run_both(case, scheme="shared", config=d_blocked_config(block_d))
    assert kernel[1].dtype == hidden_dtype and kernel[2].dtype == items_dtype
    assert_matches(kernel, reference, TOLERANCE[hidden_dtype])
    assert (d_blocked_launches[0].launches, d_blocked_launches[1].launches) == (1, 0)


@pytest.mark.parametrize("scheme", ["full", "shared", "sequence"])
@pytest.mark.parametrize("log_q_kind", [None, "tensor", "float"])
@pytest.mark.parametrize("remove_accidental_hits", [True, False])
def test_d_blocked_forward_schemes_log_q_and_hits(d_blocked_launches, scheme: str, log_q_kind: str | None,
                                                  remove_accidental_hits: bool) -> None:
    """Every scheme the forward serves: the catalogue in order ("full"), shared negatives gathered once per
    call, per-sequence negatives read through their ids; with and without the logQ correction and
    accidental-hit removal (the targets of every third row are among the negatives); d = 72, 3 chunks."""
    if scheme == "full" and (log_q_kind is not None or not remove_accidental_hits):
        pytest.skip("the full catalogue takes no log_q and removes no hits")
    rows, num_items, k, rows_per_sequence = SCHEME_SHAPES[scheme]
    case = make_case(scheme, num_rows=rows, num_items=num_items, num_negatives=k, dim=72,
                     rows_per_sequence=rows_per_sequence, seed=61)
    log_q: torch.Tensor | float | None = None
    if log_q_kind == "tensor":
        popularity = torch.rand(num_items, generator=torch.Generator().manual_seed(3)) + 0.05
        log_q = (popularity / popularity.sum()).log()
    elif log_q_kind == "float":
        log_q = -math.log(num_items)
    kernel, reference = run_both(case, scheme=scheme, rows_per_sequence=rows_per_sequence, log_q=log_q,
                                 remove_accidental_hits=remove_accidental_hits, config=d_blocked_config(32))
    assert_matches(kernel, reference, TOLERANCE[torch.float32])
    assert (d_blocked_launches[0].launches, d_blocked_launches[1].launches) == (1, 0)


@pytest.mark.parametrize("reduction", ["none", "sum"])
@pytest.mark.parametrize("tiles", [(16, 16), (32, 16), (16, 64)])
def test_d_blocked_forward_writes_what_the_whole_row_forward_writes(reduction: str, tiles: tuple[int, int]
                                                                    ) -> None:
    """The five outputs of the forward (log-sum-exp, positive logit, loss, kept, safe target) into
    NaN/-1-poisoned buffers, against the whole-row kernel, with ignored rows, tiles of several shapes over
    ragged rows (45) and negatives (29), and d = 200 in chunks of 64."""
    rows, num_items, k, _ = SCHEME_SHAPES["shared"]
    case = make_case("shared", num_rows=rows, num_items=num_items, num_negatives=k, dim=200, seed=67)
    default = triton_shared.default_config(torch.device("cpu"), 200)
    outputs = []
    for config in (default, d_blocked_config(64, block_m=tiles[0], block_n=tiles[1])):
        plan = triton_shared._Plan(scheme="shared", num_items=num_items, num_groups=1, rows_per_group=rows,
                                   num_negatives=k, log_q_mode=0, log_q_scalar=0.0, remove_hits=True,
                                   ignore_index=IGNORE, reduction=reduction, config=config)
        prepared = triton_shared._prepare_negatives(case["negatives"], None, plan)
        outputs.append(triton_shared._forward(case["hidden"], case["items"], case["targets"], prepared, plan))
    for name, whole, blocked in zip(("lse", "positive", "loss", "kept", "safe targets"), *outputs):
        assert blocked.dtype == whole.dtype and blocked.shape == whole.shape, name
        if blocked.dtype.is_floating_point:
            assert torch.isfinite(blocked).all(), name
            torch.testing.assert_close(blocked, whole, rtol=1e-5, atol=1e-5, msg=name)
        else:
            assert torch.equal(blocked, whole), name


def test_d_blocked_forward_leaves_a_refused_negative_out(monkeypatch: pytest.MonkeyPatch,
                                                         d_blocked_launches) -> None:
    """A negative outside [0, C) is checked once per call (_prepare_negatives) and left out: the gathered
    copy reads item 0's row for it, its -inf offset drops it; the call's error is raised later."""
    import kernels

    num_items = run_with_a_refused_negative(monkeypatch, d_blocked_config(32), seed=71)
    assert d_blocked_launches[0].launches == 1
    with pytest.raises(ValueError, match=rf"^negatives: value {num_items + 4} is outside"):
        kernels.check_index_errors()


def run_with_a_refused_negative(monkeypatch: pytest.MonkeyPatch, config: triton_shared.SharedConfig, *,
                                seed: int) -> int:
    """The public call with `config` on shared negatives of which one (the 6th) lies outside [0, C), the
    index check deferred as on CUDA, forward and backward against float64 without that negative; returns
    C (the refused value is C + 4)."""
    import kernels
    import kernels.api as api

    monkeypatch.setattr(api, "defers_index_checks", lambda hidden, impl: impl == "triton")
    monkeypatch.setattr(triton_shared, "launch_config", lambda device, dim, hidden_dtype, items_dtype: config)
    rows, num_items, k, _ = SCHEME_SHAPES["shared"]
    case = make_case("shared", num_rows=rows, num_items=num_items, num_negatives=k, dim=48, seed=seed)
    negatives = case["negatives"].clone()
    negatives[5] = num_items + 4
    hidden = case["hidden"].clone().requires_grad_(True)
    items = case["items"].clone().requires_grad_(True)
    loss = kernels.linear_cross_entropy(hidden, items, case["targets"], negatives, ignore_index=IGNORE,
                                        impl="triton")
    loss.backward()
    kept_negatives = torch.cat([negatives[:5], negatives[6:]])
    reference = oracle_with_grads(case["hidden"], case["items"], case["targets"], kept_negatives,
                                  ignore_index=IGNORE)
    assert_matches((loss, hidden.grad, items.grad), reference, TOLERANCE[torch.float32])
    return num_items


@pytest.mark.parametrize("block_d", [8, 48, -16])
def test_block_d_must_be_zero_or_a_power_of_two(block_d: int) -> None:
    with pytest.raises(ValueError, match="block_d"):
        triton_shared.BlockConfig(block_m=16, block_n=16, num_warps=1, num_stages=1, block_d=block_d)


@pytest.mark.parametrize("kernel", ["grad_hidden", "grad_items", "fused_backward"])
def test_d_blocked_backward_tiles_are_refused_naming_the_kernel(kernel: str) -> None:
    """Only the forward has a d-blocked form: a backward kernel's block_d is an error, not ignored."""
    case = make_case("shared", num_rows=20, num_items=40, num_negatives=9, dim=16, seed=73)
    config = triton_shared.default_config(torch.device("cpu"), 16)
    config = dataclasses.replace(config, **{kernel: dataclasses.replace(config.grad_hidden, block_d=16)})
    with pytest.raises(ValueError, match=rf"config\.{kernel}\.block_d"):
        run_both(case, scheme="shared", config=config)


@pytest.mark.parametrize("shared", [H200_SHARED_MEMORY, 101_376])
@pytest.mark.parametrize("dim", [64, 200, 256, 512])
def test_d_blocked_launch_tiles_fit_the_devices_shared_memory(fake_gpu, shared: int, dim: int) -> None:
    """launch_config(d_blocked=True): the forward starts from D_BLOCKED_FORWARD and the backward of shared
    negatives from d_blocked_backward's tiles (none for float32 rows or d > 256, where they spill), each
    fitted like the other kernels (kernels.tile_memory's d-blocked estimates); the other tiles are the
    default ones."""
    fake_gpu(shared)
    cuda = torch.device("cuda")
    for hidden_dtype, items_dtype in DTYPE_PAIRS.values():
        config = triton_shared.launch_config(cuda, dim, hidden_dtype, items_dtype, d_blocked=True)
        default = triton_shared.launch_config(cuda, dim, hidden_dtype, items_dtype)
        assert config.forward.block_d == triton_shared.D_BLOCKED_FORWARD.block_d
        assert dataclasses.replace(config, forward=default.forward, dblock_backward=None) == default
        need = triton_shared.shared_memory_bytes("forward", config.forward, dim=dim,
                                                 hidden_dtype=hidden_dtype, items_dtype=items_dtype)
        assert need <= shared, (config.forward, need)
        asked = triton_shared.d_blocked_backward(dim, hidden_dtype)
        assert (asked is None) == (hidden_dtype == torch.float32 or dim > 256)
        assert (config.dblock_backward is None) == (asked is None)
        if asked is not None:
            assert config.dblock_backward is not None and config.dblock_backward.block_d == asked.block_d
            need = triton_shared.shared_memory_bytes("dblock_backward", config.dblock_backward, dim=dim,
                                                     hidden_dtype=hidden_dtype, items_dtype=items_dtype)
            assert need <= shared, (config.dblock_backward, need)
        if shared == H200_SHARED_MEMORY:
            assert config.forward == triton_shared.D_BLOCKED_FORWARD, (hidden_dtype, items_dtype)
            assert config.dblock_backward == asked, (hidden_dtype, items_dtype)
    cpu = triton_shared.launch_config(torch.device("cpu"), dim, torch.float32, torch.float32, d_blocked=True)
    assert cpu.forward.block_d > 0 and cpu.dblock_backward is not None and cpu.dblock_backward.block_d > 0


# --- the d-blocked backward of shared negatives (SharedConfig.dblock_backward, opt-in) ----------------------

BACKWARD_KERNELS = ("_backward_dblock_kernel", "_grad_hidden_kernel", "_grad_items_kernel",
                    "_fused_backward_kernel")


@pytest.fixture
def backward_launches(monkeypatch: pytest.MonkeyPatch) -> dict[str, _CountingKernel]:
    """Each backward kernel, counting its launches, by name."""
    counted = {name: _CountingKernel(getattr(triton_shared, name)) for name in BACKWARD_KERNELS}
    for name, kernel in counted.items():
        monkeypatch.setattr(triton_shared, name, kernel)
    return counted


def launch_counts(counted: dict[str, _CountingKernel]) -> tuple[int, ...]:
    return tuple(counted[name].launches for name in BACKWARD_KERNELS)


def d_blocked_backward_config(block_d: int, *, block_m: int = 16, block_n: int = 16,
                              forward_block_d: int = 0) -> triton_shared.SharedConfig:
    """The interpreter's tiles with the d-blocked backward in chunks of `block_d` (and the d-blocked forward
    in chunks of forward_block_d, or the whole-row one)."""
    base = triton_shared.default_config(torch.device("cpu"), 16)
    backward = triton_shared.BlockConfig(block_m=block_m, block_n=block_n, num_warps=1, num_stages=1,
                                         block_d=block_d)
    forward = dataclasses.replace(base.forward, block_d=forward_block_d)
    return dataclasses.replace(base, forward=forward, dblock_backward=backward)


# (hidden dtype, items dtype, d, block_d): 1 to 4 chunks; d = 200, 96 and 40 not multiples of the chunk;
# d = 300 in chunks of 16 would need 19, so the chunk widens to 128 (3 chunks, the last ragged).
D_BLOCKED_BACKWARD_CASES = [
    (torch.float32, torch.float32, 256, 64), (torch.float32, torch.float32, 64, 64),
    (torch.float32, torch.float32, 64, 16), (torch.float32, torch.float32, 200, 64),
    (torch.float32, torch.float32, 40, 16), (torch.float32, torch.float32, 300, 16),
    (torch.bfloat16, torch.bfloat16, 256, 64), (torch.bfloat16, torch.bfloat16, 64, 64),
    (torch.bfloat16, torch.bfloat16, 200, 64), (torch.float16, torch.float16, 96, 32),
    (torch.bfloat16, torch.float32, 256, 64),
]


@pytest.mark.parametrize("forward_block_d", [0, 32])
@pytest.mark.parametrize("hidden_dtype,items_dtype,dim,block_d", D_BLOCKED_BACKWARD_CASES,
                         ids=[f"{str(h)[6:]}-{str(i)[6:]}-d{d}-bd{b}"
                              for h, i, d, b in D_BLOCKED_BACKWARD_CASES])
def test_d_blocked_backward_matches_float64(backward_launches, hidden_dtype: torch.dtype,
                                            items_dtype: torch.dtype, dim: int, block_d: int,
                                            forward_block_d: int) -> None:
    """Shared negatives through the public autograd path with the d-blocked backward (after either forward):
    loss and both gradients against float64, with a random upstream gradient, ignored rows, accidental
    hits (every third row's target is a negative) and a negative repeated; rows (45) and negatives (29)
    are not multiples of the 16-wide tiles. grad_hidden comes NaN-poisoned; one launch, no other backward
    kernel."""
    rows, num_items, k, _ = SCHEME_SHAPES["shared"]
    case = make_case("shared", num_rows=rows, num_items=num_items, num_negatives=k, dim=dim,
                     hidden_dtype=hidden_dtype, items_dtype=items_dtype, seed=dim + block_d)
    case["negatives"][7] = case["negatives"][3]
    kernel, reference = run_both(case, scheme="shared",
                                 config=d_blocked_backward_config(block_d, forward_block_d=forward_block_d))
    assert kernel[1].dtype == hidden_dtype and kernel[2].dtype == items_dtype
    assert_matches(kernel, reference, TOLERANCE[hidden_dtype])
    assert launch_counts(backward_launches) == (1, 0, 0, 0)


@pytest.mark.parametrize("log_q_kind", [None, "tensor", "float"])
@pytest.mark.parametrize("remove_accidental_hits", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_d_blocked_backward_log_q_hits_and_reductions(backward_launches, log_q_kind: str | None,
                                                      remove_accidental_hits: bool, reduction: str) -> None:
    """With and without the logQ correction (the kernel adds the offsets to every logit) and accidental-hit
    removal, per-row and mean losses; d = 72 in 3 chunks of 32, the last ragged."""
    rows, num_items, k, _ = SCHEME_SHAPES["shared"]
    case = make_case("shared", num_rows=rows, num_items=num_items, num_negatives=k, dim=72, seed=83)
    log_q: torch.Tensor | float | None = None
    if log_q_kind == "tensor":
        popularity = torch.rand(num_items, generator=torch.Generator().manual_seed(5)) + 0.05
        log_q = (popularity / popularity.sum()).log()
    elif log_q_kind == "float":
        log_q = -math.log(num_items)
    kernel, reference = run_both(case, scheme="shared", log_q=log_q,
                                 remove_accidental_hits=remove_accidental_hits, reduction=reduction,
                                 config=d_blocked_backward_config(32))
    assert_matches(kernel, reference, TOLERANCE[torch.float32])
    assert launch_counts(backward_launches) == (1, 0, 0, 0)


@pytest.mark.parametrize("tiles,shape", [((16, 16), (45, 29)), ((32, 16), (45, 29)), ((16, 32), (45, 29)),
                                         ((16, 16), (48, 32)), ((64, 16), (20, 9))])
def test_d_blocked_backward_tile_shapes(backward_launches, tiles: tuple[int, int],
                                        shape: tuple[int, int]) -> None:
    """Tiles of several shapes over ragged and whole row blocks and negative tiles (48 rows and 32
    negatives: every tile full, EVEN_K), and a row block larger than N; d = 100 in chunks of 32."""
    rows, k = shape
    case = make_case("shared", num_rows=rows, num_items=120, num_negatives=k, dim=100, seed=89)
    kernel, reference = run_both(case, scheme="shared",
                                 config=d_blocked_backward_config(32, block_m=tiles[0], block_n=tiles[1]))
    assert_matches(kernel, reference, TOLERANCE[torch.float32])
    assert launch_counts(backward_launches) == (1, 0, 0, 0)


@pytest.mark.parametrize("splits", [2, 3, 5])
@pytest.mark.parametrize("hidden_dtype", [torch.float32, torch.bfloat16])
def test_d_blocked_backward_row_blocks_split_over_programs(backward_launches, splits: int,
                                                           hidden_dtype: torch.dtype) -> None:
    """SharedConfig.dblock_splits: several programs per row block, each over every splits-th negative tile
    into its own NaN-poisoned float32 dH partial, summed; 2 negative tiles (K = 29), so with 3 and 5 splits
    some programs walk no tile (they store zeros, and split 0 the positive's share)."""
    rows, num_items, k, _ = SCHEME_SHAPES["shared"]
    case = make_case("shared", num_rows=rows, num_items=num_items, num_negatives=k, dim=72,
                     hidden_dtype=hidden_dtype, seed=113)
    config = dataclasses.replace(d_blocked_backward_config(32), dblock_splits=splits)
    kernel, reference = run_both(case, scheme="shared", config=config)
    assert kernel[1].dtype == hidden_dtype
    assert_matches(kernel, reference, TOLERANCE[hidden_dtype])
    assert launch_counts(backward_launches) == (1, 0, 0, 0)


def test_d_blocked_backward_leaves_a_refused_negative_out(monkeypatch: pytest.MonkeyPatch,
                                                          backward_launches) -> None:
    """A negative outside [0, C): its offset -inf gives it softmax weight 0 in the d-blocked backward
    (the gathered copy holds item 0's row for it), so neither gradient sees it; the call's error is raised
    later."""
    import kernels

    num_items = run_with_a_refused_negative(monkeypatch, d_blocked_backward_config(16), seed=97)
    assert launch_counts(backward_launches) == (1, 0, 0, 0)
    with pytest.raises(ValueError, match=rf"^negatives: value {num_items + 4} is outside"):
        kernels.check_index_errors()


@pytest.mark.parametrize("wanted", ["hidden", "items"])
def test_d_blocked_backward_only_where_both_gradients_are_wanted(backward_launches, wanted: str) -> None:
    """One gradient wanted: the split kernel that computes it alone runs instead (4NKd, not 6NKd)."""
    rows, num_items, k, _ = SCHEME_SHAPES["shared"]
    case = make_case("shared", num_rows=rows, num_items=num_items, num_negatives=k, dim=40, seed=101)
    hidden = case["hidden"].clone().requires_grad_(wanted == "hidden")
    items = case["items"].clone().requires_grad_(wanted == "items")
    loss = shared_linear_cross_entropy(hidden, items, case["targets"], case["negatives"], scheme="shared",
                                       num_negatives=k, rows_per_sequence=1, log_q=None,
                                       remove_accidental_hits=True, ignore_index=IGNORE, reduction="mean",
                                       config=d_blocked_backward_config(16))
    loss.backward()
    reference = oracle_with_grads(case["hidden"], case["items"], case["targets"], case["negatives"],
                                  ignore_index=IGNORE)
    got, expected = (hidden.grad, reference[1]) if wanted == "hidden" else (items.grad, reference[2])
    assert got is not None
    assert_close(got, expected, TOLERANCE[torch.float32], f"grad {wanted}")
    assert launch_counts(backward_launches) == ((0, 1, 0, 0) if wanted == "hidden" else (0, 0, 1, 0))


@pytest.mark.parametrize("scheme", ["full", "sequence"])
def test_d_blocked_backward_is_for_shared_negatives_only(backward_launches, scheme: str) -> None:
    """The full catalogue and per-sequence negatives keep the split backward under a dblock_backward
    config, and stay exact."""
    rows, num_items, k, rows_per_sequence = SCHEME_SHAPES[scheme]
    case = make_case(scheme, num_rows=rows, num_items=num_items, num_negatives=k, dim=40,
                     rows_per_sequence=rows_per_sequence, seed=103)
    kernel, reference = run_both(case, scheme=scheme, rows_per_sequence=rows_per_sequence,
                                 config=d_blocked_backward_config(16))
    assert_matches(kernel, reference, TOLERANCE[torch.float32])
    assert launch_counts(backward_launches) == (0, 1, 1, 0)


@pytest.mark.parametrize("field,value", [("dblock_backward", triton_shared.BlockConfig(16, 16, 1, 1)),
                                         ("dblock_splits", 0)])
def test_d_blocked_backward_config_errors_name_the_field(field: str, value: object) -> None:
    """dblock_backward with block_d = 0 (not a silent whole-row kernel) and dblock_splits below 1 are errors
    naming the field."""
    case = make_case("shared", num_rows=20, num_items=40, num_negatives=9, dim=16, seed=107)
    config = dataclasses.replace(d_blocked_backward_config(16), **{field: value})
    with pytest.raises(ValueError, match=rf"config\.{field}"):
        run_both(case, scheme="shared", config=config)


def test_d_blocked_backward_estimate_needs_its_chunk() -> None:
    from kernels import tile_memory

    with pytest.raises(ValueError, match="d_chunk"):
        tile_memory.shared_memory_bytes("dblock_backward", block_m=128, block_n=64, num_stages=2, num_warps=8,
                                        block_d=256, hidden_bytes=2, items_bytes=2)
    # 128x64, 2 stages, d = 256 in bf16: hidden rows 64 KiB + 2 x 32 KiB of item rows + the 16 KiB softmax
    # gradient tile + a 16 KiB float32 chunk for the atomics + 8 bytes a negative and stage; compiled for
    # sm_90 (triton 3.7.1) it needs 147,968 bytes.
    assert tile_memory.shared_memory_bytes("dblock_backward", block_m=128, block_n=64, num_stages=2,
                                           num_warps=8, block_d=256, hidden_bytes=2, items_bytes=2,
                                           d_chunk=64) == 65536 + 65536 + 16384 + 16384 + 1024


def _dev_speed():
    """benchmarks/dev_speed.py as a module (it puts tests/ on its path for the float64 oracle)."""
    return load_script("benchmarks/dev_speed.py")


def test_dev_speed_dblock_times_the_asked_tiles_on_an_h200() -> None:
    """The dblock section's variants (CPU side): at d=256 and d=64 in bf16 the default configs, then each
    DBLOCK_FORWARDS tile unshrunk with the default backward tiles; each fits the H200's shared memory."""
    dev_speed = _dev_speed()
    for dim in (64, 256):
        variants = dev_speed.dblock_configs(dim, torch.bfloat16)
        default = h200_tiles(dim, torch.bfloat16, torch.bfloat16)
        assert variants[0] == ("default", None, default)
        for (label, tiles, configs), asked in zip(variants[1:], dev_speed.DBLOCK_FORWARDS, strict=True):
            assert tiles == asked and configs.forward == triton_shared.BlockConfig(*asked), label
            assert dataclasses.replace(configs, forward=default.forward) == default
            assert triton_shared.shared_memory_bytes("forward", configs.forward, dim=dim,
                                                     hidden_dtype=torch.bfloat16,
                                                     items_dtype=torch.bfloat16) <= H200_SHARED_MEMORY
    assert dev_speed.DBLOCK_CASES[:2] == ((256, 4096), (256, 16384))


def test_dev_speed_dblock_times_the_asked_backward_tiles_on_an_h200() -> None:
    """The dblock section's backward variants (CPU side): per timed d the d-blocked backward tiles, the
    first of them d_blocked_backward's (what launch_config(d_blocked=True) launches), unshrunk on an H200,
    on top of the configs given (the rest unchanged), then the first with each of DBLOCK_SPLITS programs
    per row block; the cases are the issue's: shared K=4096 and 16384 at d=256 and 64."""
    dev_speed = _dev_speed()
    for dim in (64, 256):
        base = dev_speed.dblock_configs(dim, torch.bfloat16)[0][2]
        variants = dev_speed.dblock_backward_configs(dim, base)
        assert dev_speed.DBLOCK_BACKWARDS[dim][0] == dataclasses.astuple(
            triton_shared.d_blocked_backward(dim, torch.bfloat16))
        tiles_asked = list(dev_speed.DBLOCK_BACKWARDS[dim])
        tiles_asked += [tiles_asked[0]] * len(dev_speed.DBLOCK_SPLITS)
        splits = [1] * len(dev_speed.DBLOCK_BACKWARDS[dim]) + list(dev_speed.DBLOCK_SPLITS)
        for (label, tiles, configs), asked, split in zip(variants, tiles_asked, splits, strict=True):
            assert tiles == asked and configs.dblock_backward == triton_shared.BlockConfig(*asked), label
            assert configs.dblock_splits == split and (split == 1) == ("splits=" not in label), label
            assert dataclasses.replace(configs, dblock_backward=None, dblock_splits=1) == base
            assert triton_shared.shared_memory_bytes("dblock_backward", configs.dblock_backward, dim=dim,
                                                     hidden_dtype=torch.bfloat16,
                                                     items_dtype=torch.bfloat16) <= H200_SHARED_MEMORY
    assert set(dev_speed.DBLOCK_CASES) == {(256, 4096), (256, 16384), (64, 4096), (64, 16384)}
    assert {timed for _, timed in dev_speed.DBLOCK_BACKWARD_CHECKS} == {64, 256}


@pytest.mark.parametrize("path", ["dblock", "fused", "split"])
def test_dev_speed_times_each_backward_path(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """dev_speed.backward_ms runs the backward that a config selects (here in the interpreter, with do_bench
    replaced by one call): the d-blocked kernel, the fused one, or grad_hidden and grad_items."""
    dev_speed = _dev_speed()
    monkeypatch.setattr(dev_speed, "do_bench", lambda fn, **kwargs: fn() or 1.0)
    counted = {name: _CountingKernel(getattr(triton_shared, name)) for name in BACKWARD_KERNELS}
    for name, kernel in counted.items():
        monkeypatch.setattr(triton_shared, name, kernel)
    case = make_case("shared", num_rows=45, num_items=120, num_negatives=29, dim=40, seed=109)
    configs = {"dblock": d_blocked_backward_config(16), "fused": fused_config(),
               "split": triton_shared.default_config(torch.device("cpu"), 40)}[path]
    assert dev_speed.IGNORE == IGNORE
    ms = dev_speed.backward_ms(case["hidden"], case["items"], case["targets"], case["negatives"], configs)
    assert ms == 1.0
    expected = {"dblock": (1, 0, 0, 0), "fused": (0, 0, 0, 1), "split": (0, 1, 1, 0)}[path]
    assert launch_counts(counted) == expected


def test_dev_speed_refuses_an_unknown_section_before_touching_a_gpu() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "benchmarks" / "dev_speed.py"), "--sections",
                             "dblock,dblocks", "--out", "unused"], cwd=root, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "--sections: unknown section(s) dblocks" in result.stderr
    assert not (root / "unused").exists()
