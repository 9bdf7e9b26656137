"""Analytic prediction of a trial's peak GPU memory, as a sum of named terms that can be checked.

What is predicted: the peak of NVML's memory of the trial's process (`MemoryReport.nvml_process_peak`),
that is torch's peak reserved memory plus the CUDA context; `torch_max_allocated` and
`torch_max_reserved` are predicted too. A trial's step goes through phases with different live
tensors; the peak is the largest phase, and the prediction's `parts` are the terms alive in that
phase plus the allocator overhead and the context, so they sum to `total_bytes`.

Notation: B sequences per batch, L = max_len positions (training batches are padded to max_len),
N = B*L rows, d = hidden, C = catalogue size (items without padding), K = negatives, P = parameter
count. The trainer (study/training/) keeps parameters, gradients and Adam states in float32, runs the
encoder under bf16 autocast on CUDA ("auto" precision), hands the loss a bf16 copy of the hidden
states and the float32 item table view `weight[1:]`, and calls `zero_grad(set_to_none=True)`
after the forward, so the previous step's gradients are still alive during the forward.

Assumptions, stated where they matter:
- Attention: on CUDA, SDPA uses flash / memory-efficient kernels (no L^2 matrix; they keep a
  logsumexp per row and regenerate dropout from the RNG state); so does CPU without dropout. On CPU
  with dropout SDPA takes the math path, which keeps the L^2 softmax, its dropout noise and the
  dropped softmax per head (checked against saved-tensor hooks in tests/test_memory_model.py).
- Adam is the default foreach implementation: its step makes one temporary the size of all
  parameters (sqrt of the second moment), and one more with weight decay.
- The item gradient passes through three table-sized buffers: the loss's gradient for the view
  `weight[1:]`, the slice backward's full-size gradient (alive until the embedding lookup's gradient
  is added to it at the very end of backward), and the lookup's own dense gradient.
- The PyTorch reference losses (kernels/reference.py, kernels/sampled_losses.py) keep 9 to 17
  bytes per logit at their peak (see TORCH_*_BYTES_PER_LOGIT). Per-position negatives also gather a
  [N, K, d] table (saved in the hidden's dtype) and its gradient. Their item gradient forms only when
  the gathered rows' gradient is scattered back, after the logits' gradients are freed.
- The fused Triton kernels keep O(N*d + K*d) besides the index tensor they are handed (and, for
  per-position tensor negatives at d <= 128, a sorted int32 copy of it during backward); their item
  gradient is one float32 [C, d] buffer.
- Autograd releases what a node saved once it has run: the negative indices are gone by the time the
  item table's slice backward runs.
- The trainer makes the cuBLAS workspaces of its thread and of autograd's backward thread before anything
  else of the trial (study/memory/blas_workspaces.py), so that neither can pin a freed transient's segment
  (PINNED_TRANSIENT_SHARE). Trials measured before it did so (results/memory-catalogue/) are predicted with
  `workspaces_warmed=False`.
- The peak is that of a steady step (Adam's states and the previous step's gradients alive, a full
  batch). A trial whose only full batch is its first step (one epoch of fewer than two batches, e.g.
  1,100 users in batches of 1,024) allocates less (the first step has no Adam states) but, when fused,
  reserves about as much: the first step's segments stay cached while Adam's states get segments of
  their own (five such fused trials on the H200: allocated over-predicted by up to 27%, reserved within
  -2%..+4%). The PyTorch sampled losses then also miss their re-requested logits (ALLOCATOR_REREQUEST_FACTOR
  needs a second full step): c100k-batch-torch-k4096-b1024 reserved 17% less than predicted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from study.config import DEFAULT_EVAL_MAX_SCORES, TrainConfig, eval_chunk_rows
from study.memory.probes import DEFAULT_CUDA_CONTEXT_BYTES
from study.units import MiB, format_bytes

FLOAT32 = 4
BFLOAT16 = 2
INT32 = 4
INT64 = 8

# The caching allocator's peak reserved memory exceeds the peak allocated memory when a freed block
# cannot serve a later request: smaller requests split it in between (best fit takes the smallest free
# block that is large enough, and splits off the rest), or the request is larger than any free block.
# Buffers of one size requested in the same order every step find their blocks whole (the item-table
# sized ones, the negative indices; see largest_step_buffer_bytes); blocks of a class that several
# buffers of different lifetimes share get split. The excess is the larger of 1.1x the step's largest
# such transient buffer and 256 MiB (about the evaluation working set with default settings), from 33
# configurations on one H200 (torch 2.11, default allocator settings: large-block pool, blocks rounded
# to 512 B, segments of large requests to 2 MiB, expandable segments off; results/h200-2026-11-26b,
# BENCHMARKS.md section 3) and training steps traced on CPU with CUDA's allocation pattern and replayed
# through a model of that allocator at 10^6 and 5 * 10^6 items (benchmarks/memory_trace.py).
# PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True did not remove the excess on the H200: it shrank it
# for some trials and tripled it for the PyTorch per-position loss.
ALLOCATOR_REREQUEST_FACTOR = 1.1
ALLOCATOR_MIN_EXCESS = 256 * MiB
# One more item-table-sized segment, in about half the trials: Adam's sqrt temporary is freed at the end
# of every step, and during the next step's forward it is the only free table-sized block. When a
# transient request of that step finds no room in the previous step's transient segments (which
# depends on where the small blocks land), best fit splits the table-sized block, and the step's
# second table-sized gradient then needs a new segment. Replaying traced steps with small block sizes
# perturbed by +-30% (benchmarks/memory_trace.py --perturb 20) gave one extra table in 9 and 11 of 20
# replays at 10^6 items and d=256; measured on the H200 (measured-e92b87d.csv), 1.0-1.07 tables in
# c1m-full-triton-b64-l512-d256, c1m-drawn-triton-k1024-b256-l200-d256, c10m-drawn-triton-k4096-b256-
# l512-d64 and c10m-position-triton-k4096-b512-l200-d128, none in five other fused trials at 10^7.
# The model charged nothing (under-predicting those four by 10.7-14.2%). The peak holds at least
# five tables (parameters, two Adam states, two gradients), so one table is at most a fifth of it:
# charging 0.75 of a table keeps both outcomes within -5%..+15% from this term alone.
TABLE_SPLIT_FACTOR = 0.75
# The PyTorch losses' cache excess comes from their largest transient: the per-position float32 [N, K, d]
# gather G (in the table's dtype under autocast), full CE's float32 [N, C] logits. Its segments are made
# in the first step, and two things decide how many of them the later steps need:
# - Always, per position: the bf16 gradient of the cast splits G's freed block, so G's float32 gradient
#   takes a segment of its own: one G beyond the allocated peak (full CE: its bf16 logits' segment, see
#   TORCH_FULL_LOGITS_SEGMENT_BYTES_PER_LOGIT).
# - Sometimes, in trials of trainers that left the cuBLAS workspaces to the first step (before the warm-up
#   below): cuBLAS keeps a workspace per thread's handle, taken from the caching allocator at that
#   handle's first matmul and kept for the life of the process (32 MiB on sm90: torch's default, 4096 KiB
#   x 8). Autograd runs a CUDA backward on a thread of its own, so the first matmul of the first backward
#   (the loss's: the gather's batched product, full CE's logits product) takes a second workspace, and
#   best fit puts it in the smallest free block of at least 32 MiB. When that block lies in a segment of
#   the largest transient, the segment can never hold that transient again and every later step needs
#   one more: one transient more beyond the allocated peak. Whether another free block of 32 MiB or more
#   exists at that moment depends on how the step's activations packed into the segments the popularity
#   evaluation left (blocks of a few to tens of MiB): a bin packing this model does not follow. An
#   item table of Adam's that settles at the start of G's segment pins it the same way.
# Training steps traced on CPU with CUDA's allocation pattern at three small scales, extrapolated to the
# real sizes and replayed through a model of the allocator with the two workspaces
# (benchmarks/memory_trace.py --extrapolate) reproduce within about 0.1 GiB the excess of the 14 PyTorch
# per-position trials of the catalogue runs, 5 of the 6 of issue 4's runs (older code: the sixth, BCE
# K=256, kept one gather more than a replay of today's) and the 10 full CE trials (c2-100k-full-torch-
# b256-l200-d128: 27.2 GiB measured, 27.3 replayed, 9.1 without the workspaces). Measured over G: 0.91-1.12
# unpinned (11 trials below 10^7 items), 1.60-1.98 pinned (4: c1m-position-torch-k256-b256-l200-d256 by
# the workspace, 1.79; c2-1m-position-torch-k256-b128-l200-d128 by an Adam state, 1.60); full CE over the
# float32 logits: 0.46-0.59 unpinned (6), 1.49 and 1.52 pinned (c2-100k-full-torch-b256-l200-d128,
# 2k-full-torch-b256), 1.20 at 10^7 items with N = 400 (c10m-full-torch-b4-l100-d64: 17.1 GiB, replayed
# 17.1). Where the transient dominates the peak no charge puts both outcomes well inside
# -10%..+25%; the model charges the pinned transient at PINNED_TRANSIENT_SHARE of it: the value that keeps
# every measured trial within the band, unpinned ones at up to +25%, pinned ones at down to -10%.
# (The fused per-position loss's index tensor is pinned by the first step's item tables in some trials,
# but predictably: see fused_index_excess_bytes.) The charge for the pinned transient:
PINNED_TRANSIENT_SHARE = 0.635
# The trainer now makes both workspaces before anything else of a trial (study/memory/blas_workspaces.py):
# neither can pin a transient any more. An item table still can: Adam's two states (made at the end of the
# first step, when the transient's segments are free) and each step's table-sized gradients take the smallest
# free block that holds them, and where the transient holds only a few tables that block can be in its
# segment, which then never holds the transient again (or the tables spill into segments of their own). The 38
# PyTorch per-position, drawn and full-CE trials of the three catalogue sets, replayed with the workspaces
# made first (benchmarks/memory_trace.py --measured; results/memory-catalogue/replay-warm-up.csv, whose
# replays without the warm-up match the H200's peaks within 0.2%): of the 25 whose transient holds 8 tables or
# more, none kept more than 1.13 G or 0.54 float32 logits (the workspace had pinned 6 of them: 1.8-2.0 G, 1.5
# logits); of the 13 below, a table pinned it in 6 (c2-1m-position-torch-k256-b128-l200-d128, G = 6.9 tables,
# kept 1.62 G; c3-1m-full-torch-b16-l100-d256, logits of 6.3 tables, 1.26;
# c10m-position-torch-k512-b256-l200-d64, 2.75 tables, 1.43 G), which the model without this charge
# under-predicted by 13-29% of the peak. A sweep of K at 10^6 items and d=128 (batch 64) found the pinned mode
# at 3.3 and 6.6 tables, Adam's states settled beside G at 4.9 and from 8.2 to 13.1 tables. So with the
# warm-up the model still charges PINNED_TRANSIENT_SHARE where the transient holds fewer than
# TABLE_PIN_MAX_TABLES tables (both modes occur there, as before), and none from there on: against the replays
# with the warm-up, median |error| 1.4%, -7.3%..+24.6% (at +24.6%: c3-10m-full-torch-b2-l64-d128, whose logits
# hold one table and which kept almost nothing, and c2-10m-drawn-torch-k512-b512-l200-d64, whose Adam states
# settled beside G). Left as it is: at 10^6 items with d=64 and batches of 16, the pinned mode at 2.9-4.1
# tables is under-predicted by 11-15% (the table term's interpolation, see table_segments_bytes, assumes
# Adam's states settle there).
TABLE_PIN_MAX_TABLES = 8
# At 10^7 items a table is a large share of G: Adam's two states, made at the end of the first step while
# G's segments are free, settle in G's float32 segment beside the bf16 gather when G >= 4 tables and stay
# there, inside memory this excess already counts (measured: c10m-drawn-torch-k1024-b256-l200-d64 and
# c2-10m-drawn-torch-k512-b512-l200-d64 kept 0.55 G beyond their allocated peak, where the model of 1ee330c
# charged 1.62 G and over-predicted them by 41%; replayed, 7.0 and 6.9 GiB as measured). Then those two
# tables come off the excess instead of TABLE_SPLIT_FACTOR's share of one; with two tables per G or fewer
# they spill into segments of their own (c2-10m-position-torch-k256-b256-l200-d64, G = 1.4 tables: 1.30 G
# kept); in between the model interpolates (see table_segments_bytes; c10m-position-torch-k512-b256-l200-d64,
# G = 2.75 tables: 1.42 G kept).
ADAM_STATE_TABLES = 2
GATHER_TABLES_FOR_ADAM_STATES = 4
# Bytes per logit at the peak of the PyTorch reference losses (kernels/reference.py,
# kernels/sampled_losses.py), forward and backward. CE- (read off the allocations of a training step,
# traced on CPU with the profiler): the forward holds the float32 logits, the accidental-hit mask and
# logsumexp's one float32 temporary (9 B; the bf16 logits are freed once copied to float32). Its
# backward holds the saved logits and mask while logsumexp's backward, `grad * (self - result).exp()`,
# keeps all three float32 temporaries of that one C++ expression alive until it ends, and then while
# masked_fill_'s backward on the reshaped view (CopySlices) makes three float32 copies (17 B). On the
# H200, trained with autocast, CE- peaked at 16.7-16.8 B per logit (1m-batch-torch-k16384,
# 100k-batch-torch-k8192-b512). Full CE: bf16 logits, their float32 copy and the log-softmax (10 B);
# backward the saved log-softmax and two float32 gradients (12 B, which the founding measurements of
# docs/design.md#numbers-to-beat match). BCE / gBCE: logits, negated logits and logsigmoid (12 B both
# ways).
TORCH_SAMPLED_FORWARD_BYTES_PER_LOGIT = 9
TORCH_SAMPLED_BACKWARD_BYTES_PER_LOGIT = 17
TORCH_FULL_FORWARD_BYTES_PER_LOGIT = 10
TORCH_FULL_BACKWARD_BYTES_PER_LOGIT = 12
TORCH_BINARY_BYTES_PER_LOGIT = 12
# PyTorch full CE's cache excess. Its bf16 logits [N, C] are freed once copied to float32, and no later
# request of the step has their size (the float32 ones are twice it): their segment stays beyond the
# allocated peak, half a float32 [N, C] buffer (measured 0.46-0.59 on the H200 in six trials at 10^5-10^7
# items). Plus a float32 [N, C] segment when the backward thread's cuBLAS workspace pins one (see
# PINNED_TRANSIENT_SHARE): c2-100k-full-torch-b256-l200-d128, 1.49 (-21.7% against the model of 1ee330c),
# and 2k-full-torch-b256, 1.52. The rule it replaces (a float32 segment more when Adam's tables of the
# first step do not fit the bf16 segment) predicted 1.5 for c2-10m-full-torch-b4-l64-d128, which kept 0.53
# (+24.8%). In float32 the product's output is the float32 logits, which a gradient reuses: no bf16
# segment.
TORCH_FULL_LOGITS_SEGMENT_BYTES_PER_LOGIT = BFLOAT16
# The fused per-position backward sorts each row of tensor negatives when d <= SORT_MAX_DIM, torch.sort
# a chunk of SORT_CHUNK_ELEMENTS indices at a time (kernels/triton_gather.py; a test checks that the two
# stay equal, without this module importing Triton).
SORT_MAX_DIM = 128
SORT_CHUNK_ELEMENTS = 1 << 22
SORT_IN_TRITON_MAX_NEGATIVES = 512  # up to this K a Triton program sorts a row in registers, no buffers
# CUDA's index_put_ with accumulate=True (the backward of the PyTorch losses' item-row gathers) sorts
# the indices: a linear index, the sorted copy, the original order and an arange (int64 each), and cub's
# alternate key and value buffers (two more), per gathered index.
INDEX_PUT_SORT_BYTES_PER_INDEX = 6 * INT64
# Live [N, d] temporaries the fused kernels' backward makes for the positive items' gradient.
TRITON_BACKWARD_ROW_COPIES = 2
# Float32 copies of one chunk of evaluation scores charged: four, from the key-based ranking (scores, the
# clone masked for seen items, the cleaned copy, the comparison with the target's score). The top-k ranking
# that replaced it measured 2.0-2.6 copies' worth above the start on an H200 at 2^24-2^28 scores a chunk
# (results/h200-2026-11-29c/chunks-5388d5e), so four over-states it; kept until the memory validation
# measures evaluation again.
EVAL_SCORE_COPIES = 4
# Float32 [rows * L, d] buffers alive at once in the encoder's no-grad forward during evaluation.
EVAL_FORWARD_COPIES = 7
# The popularity sampler draws its float64 uniforms in chunks of this many (kernels/samplers.py).
POPULARITY_DRAW_CHUNK = 2**22


@dataclass(frozen=True)
class MemoryPrediction:
    """Predicted peak memory of one trial (bytes). `total_bytes` is the process's peak as NVML sees it."""

    total_bytes: int
    parts: dict[str, int]  # the terms alive at the peak + allocator overhead + CUDA context; sum = total
    torch_max_allocated: int
    torch_max_reserved: int
    peak_phase: str
    phases: dict[str, int] = field(default_factory=dict)  # allocated bytes of each phase
    gpu_total: int | None = None
    device: str = "cuda"  # what it was predicted for: "cuda", or "cpu" (no CUDA context)

    def fits(self, budget_bytes: int) -> bool:
        return self.total_bytes <= budget_bytes

    def describe(self) -> str:
        lines = [f"predicted peak {format_bytes(self.total_bytes)} (phase: {self.peak_phase})"]
        for name, value in sorted(self.parts.items(), key=lambda item: -item[1]):
            lines.append(f"  {name:28s} {format_bytes(value):>12s}")
        return "\n".join(lines)


@dataclass(frozen=True)
class TrialShape:
    """The sizes of a trial that memory depends on, resolved from a TrainConfig."""

    batch: int  # B
    length: int  # L
    hidden: int  # d
    blocks: int
    heads: int
    num_items: int  # C
    negatives: int  # K (C for full CE)
    eval_batch: int
    loss: str
    scope: str  # "full" for full CE, else the negative scope
    impl: str  # "triton" or "torch" (the implementation that runs)
    on_cuda: bool
    activation_bytes: int  # 2 under bf16 autocast, else 4
    dropout: bool
    popularity: bool
    weight_decay: bool
    # The item table's dtype size: float32 parameters in training. The loss benchmarks of
    # docs/design.md#numbers-to-beat hand the loss bf16 tables (2), which no cast then copies.
    item_bytes: int = 4
    # Whether the trial's cuBLAS workspaces were made before its first step (the trainer's warm-up,
    # study/memory/blas_workspaces.py): then neither can pin a transient's segment (PINNED_TRANSIENT_SHARE).
    # Trials measured before the warm-up existed are predicted with False.
    workspaces_warmed: bool = True
    # Scores alive at once in evaluation (TrainConfig.eval_max_scores).
    eval_max_scores: int = DEFAULT_EVAL_MAX_SCORES

    @property
    def rows(self) -> int:
        return self.batch * self.length


def resolve_shape(
    config: TrainConfig, num_items: int, *, num_users: int | None = None, device: str | None = None,
    workspaces_warmed: bool = True,
) -> TrialShape:
    """The sizes and implementation choices of `config` on a catalogue of `num_items` items.

    `device` ("cuda" or "cpu") is where the trial runs; by default config.device, with "auto" taken
    as CUDA (the model predicts GPU memory). With `num_users`, batches are capped at the number of
    sequences (a batch never holds more). `workspaces_warmed`: whether the trainer made its cuBLAS
    workspaces before the first step (today's trainer does; False for trials measured before it did).
    """
    device = device or config.device
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device: expected 'cuda' or 'cpu', got {device!r}")
    if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 1:
        raise ValueError(f"num_items: must be a positive integer, got {num_items!r}")
    if num_users is not None and (not isinstance(num_users, int) or num_users < 1):
        raise ValueError(f"num_users: must be a positive integer, got {num_users!r}")
    on_cuda = device != "cpu"
    bf16 = config.precision == "bf16" or (config.precision == "auto" and on_cuda)
    if config.loss in ("bce", "gbce"):
        impl = "torch"
    elif config.loss_impl == "auto":
        impl = "triton" if on_cuda else "torch"
    else:
        impl = config.loss_impl
    full = config.loss == "ce"
    batch = min(config.batch_size, num_users) if num_users else config.batch_size
    eval_batch = min(config.eval_batch_size, num_users) if num_users else config.eval_batch_size
    return TrialShape(
        batch=batch,
        length=config.max_len,
        hidden=config.hidden,
        blocks=config.blocks,
        heads=config.heads,
        num_items=num_items,
        negatives=num_items if full else config.num_negatives,
        eval_batch=eval_batch,
        eval_max_scores=config.eval_max_scores,
        loss=config.loss,
        scope="full" if full else config.negative_scope,
        impl=impl,
        on_cuda=on_cuda,
        activation_bytes=BFLOAT16 if bf16 else FLOAT32,
        dropout=config.dropout > 0,
        popularity=not full and config.sampling == "popularity",
        weight_decay=config.weight_decay > 0,
        workspaces_warmed=workspaces_warmed,
    )


# --- model state -----------------------------------------------------------------------------------


def parameter_count(shape: TrialShape) -> int:
    """SASRec's parameters: item table (C + 1 rows with padding), positions, blocks, final norm.

    A block has two LayerNorms (2d each), the fused qkv projection (3d^2 + 3d), the output
    projection (d^2 + d) and the two-layer feed-forward of width d (2d^2 + 2d).
    """
    d = shape.hidden
    per_block = 6 * d * d + 10 * d
    return (shape.num_items + 1) * d + shape.length * d + shape.blocks * per_block + 2 * d


def item_table_bytes(shape: TrialShape) -> int:
    """One float32 buffer the size of the item embedding (C + 1 rows)."""
    return (shape.num_items + 1) * shape.hidden * FLOAT32


def parameters_bytes(shape: TrialShape) -> int:
    return parameter_count(shape) * FLOAT32


def gradients_bytes(shape: TrialShape) -> int:
    return parameter_count(shape) * FLOAT32


def adam_states_bytes(shape: TrialShape) -> int:
    """exp_avg and exp_avg_sq, float32, created at the first step and kept."""
    return 2 * parameter_count(shape) * FLOAT32


def adam_step_temporaries_bytes(shape: TrialShape) -> int:
    """Foreach Adam's step: sqrt(exp_avg_sq) for all parameters at once, plus grad + wd * param."""
    copies = 2 if shape.weight_decay else 1
    return copies * parameter_count(shape) * FLOAT32


def autocast_weight_copies_bytes(shape: TrialShape) -> int:
    """bf16 copies of the encoder's linear weights that autocast caches for the step (not the item table)."""
    if shape.activation_bytes != BFLOAT16:
        return 0
    return shape.blocks * 6 * shape.hidden * shape.hidden * BFLOAT16


def sampler_tables_bytes(shape: TrialShape) -> int:
    """The popularity sampler's float64 cumulative counts and float32 log q (both [C]), and its float64
    uniforms for one chunk of draws."""
    if not shape.popularity:
        return 0
    draws = {"batch": shape.negatives, "sequence": shape.batch * shape.negatives}.get(
        shape.scope, shape.rows * shape.negatives)
    return shape.num_items * (8 + FLOAT32) + min(draws, POPULARITY_DRAW_CHUNK) * 8


# --- encoder activations ---------------------------------------------------------------------------


def dropout_mask_bytes(shape: TrialShape, input_bytes: int) -> int:
    """Bytes per element of a dropout mask saved for backward: CUDA's fused dropout keeps a bool mask;
    elsewhere dropout multiplies by a noise tensor of the input's dtype. None without dropout."""
    if not shape.dropout:
        return 0
    return 1 if shape.on_cuda else input_bytes


def embedding_activations_bytes(shape: TrialShape) -> int:
    """Input ids, targets and the shifted targets (int64 [B, L]), the first residual (float32) and
    the embedding dropout's mask."""
    n, d = shape.rows, shape.hidden
    return 3 * n * INT64 + n * d * (FLOAT32 + dropout_mask_bytes(shape, FLOAT32))


def block_activations_bytes(shape: TrialShape) -> int:
    """What the pre-LN blocks save for backward, all blocks together.

    Per token and hidden unit: the two float32 residuals (after attention, after the feed-forward);
    in the activation dtype a: the normed input of qkv, the qkv output (3, which fused attention
    keeps as q, k, v), the attention output (laid out so the output projection reads it without a
    copy), the normed input of the feed-forward and the ReLU output; with dropout also the dropped
    ReLU output and three masks. LayerNorms keep mean and rstd per token, attention a logsumexp per
    token and head. Attention with dropout on CPU takes SDPA's math path instead: float32 copies of
    q, k, v, a contiguous copy of its output, and per head an L x L softmax, its dropout noise and
    the dropped softmax (float32).
    """
    n, d, a = shape.rows, shape.hidden, shape.activation_bytes
    mask = dropout_mask_bytes(shape, a)
    residuals = 2 * FLOAT32
    feed_forward = 2 * a + ((a + 2 * mask) if shape.dropout else 0)  # normed input, ReLU, dropped ReLU
    attention_math_path = shape.dropout and not shape.on_cuda
    if attention_math_path:
        attention = a + 3 * FLOAT32 + a + mask  # normed input, q/k/v upcast, output copy, residual mask
        attention_matrix = 3 * shape.batch * shape.heads * shape.length * shape.length * FLOAT32
        per_token = 4 * FLOAT32
    else:
        attention = a + 3 * a + a + mask  # normed input, qkv, output, residual dropout mask
        attention_matrix = 0
        per_token = 4 * FLOAT32 + shape.heads * FLOAT32
    per_element = residuals + attention + feed_forward
    return shape.blocks * (n * d * per_element + n * per_token + attention_matrix)


def final_output_bytes(shape: TrialShape) -> int:
    """The final LayerNorm's float32 output, which the training loop holds through backward, and its stats."""
    return shape.rows * shape.hidden * FLOAT32 + 2 * shape.rows * FLOAT32


def forward_transients_bytes(shape: TrialShape) -> int:
    """Two float32 [N, d] temporaries alive between ops (e.g. a LayerNorm output before its cast)."""
    return 2 * shape.rows * shape.hidden * FLOAT32


def encoder_activations_bytes(shape: TrialShape) -> int:
    return embedding_activations_bytes(shape) + block_activations_bytes(shape) + final_output_bytes(shape)


# --- the loss layer ----------------------------------------------------------------------------------


def loss_hidden_copy_bytes(shape: TrialShape) -> int:
    """The bf16 copy of the hidden states handed to the loss (none in float32)."""
    if shape.activation_bytes == FLOAT32:
        return 0
    return shape.rows * shape.hidden * shape.activation_bytes


def negative_index_bytes(shape: TrialShape) -> int:
    """The negatives as int64 indices on the device: [K] shared, [B, K] per sequence, [B, L, K] per
    position; drawn-in-kernel negatives need none with the fused kernel, but the PyTorch reference
    draws the same [N, K] on the device."""
    k = shape.negatives
    if shape.scope == "full":
        return 0
    if shape.scope == "batch":
        return k * INT64
    if shape.scope == "sequence":
        return shape.batch * k * INT64
    if shape.scope == "drawn" and shape.impl == "triton":
        return 0
    return shape.rows * k * INT64


def loss_item_gradient_bytes(shape: TrialShape) -> int:
    """The loss's gradient for the item table view, float32 [C, d] (both implementations)."""
    return shape.num_items * shape.hidden * FLOAT32


def loss_forward_bytes(shape: TrialShape) -> int:
    """The loss layer's peak during the forward, besides its index tensor and hidden copy."""
    n = shape.rows
    if shape.impl == "triton":
        return 4 * n * FLOAT32  # loss, logsumexp, positive logit, kept mask
    per_logit = {"ce": TORCH_FULL_FORWARD_BYTES_PER_LOGIT, "ce-neg": TORCH_SAMPLED_FORWARD_BYTES_PER_LOGIT}
    logits = torch_logits_bytes(shape, per_logit.get(shape.loss, TORCH_BINARY_BYTES_PER_LOGIT))
    gathered = torch_gathered_bytes(shape, backward=False)
    if shape.scope in ("position", "drawn"):
        # The [N, K, d] gather and its cast coexist before any logit exists; the gather is freed once
        # cast, so the logits meet only the cast rows (which the batched product saves).
        return max(gathered, torch_saved_rows_bytes(shape) + logits)
    return logits + gathered


def loss_backward_bytes(shape: TrialShape) -> int:
    """The loss layer's peak during its backward (saved tensors, gradients, temporaries), besides its
    index tensor and hidden copy. The fused kernels' item gradient is a term of its own (its buffer
    exists through their whole backward); the PyTorch losses' item gradient appears only at the end
    of their backward, in the stage that scatters the gathered rows' gradient (`torch_scatter_bytes`)."""
    n, d, k, a = shape.rows, shape.hidden, shape.negatives, shape.activation_bytes
    if shape.impl == "triton":
        grad_hidden = n * d * a
        rows_copies = TRITON_BACKWARD_ROW_COPIES * n * d * FLOAT32
        # "batch" sums per-row-range partial tile gradients; "full" writes the item gradient directly.
        partial_tiles = max(n, k) * d * FLOAT32 if shape.scope == "batch" else 0
        sorting = sorted_negatives_bytes(shape) + sort_buffer_bytes(shape) if shape.scope == "position" else 0
        return 4 * n * FLOAT32 + grad_hidden + rows_copies + partial_tiles + sorting
    per_logit = {"ce": TORCH_FULL_BACKWARD_BYTES_PER_LOGIT, "ce-neg": TORCH_SAMPLED_BACKWARD_BYTES_PER_LOGIT}
    logits = torch_logits_bytes(shape, per_logit.get(shape.loss, TORCH_BINARY_BYTES_PER_LOGIT))
    gathered = torch_gathered_bytes(shape, backward=True)
    if shape.scope == "full":
        # The item table's gradients form in the product's backward, after the float32 logits' gradients
        # are freed (their bf16 cast, 2 B per logit, is what that backward gets): the saved cast table
        # with the bf16 gradient, then the float32 one. Charged next to LogSoftmax's 12 B per logit (as
        # before), they over-predicted c10m-full-torch-b4-l100-d64's allocated peak by 3.3 GiB (6.6%).
        cast = torch_gathered_bytes(shape, backward=False)
        product_backward = max(torch_logits_bytes(shape, BFLOAT16) + gathered,
                               cast + loss_item_gradient_bytes(shape))
        return max(logits + cast, product_backward)
    if shape.scope in ("position", "drawn"):
        # The logits' backward meets the saved cast rows; the gather's gradients come after it.
        return max(torch_saved_rows_bytes(shape) + logits, gathered, torch_scatter_bytes(shape))
    return max(logits + gathered, torch_scatter_bytes(shape))


def torch_saved_rows_bytes(shape: TrialShape) -> int:
    """The per-position gathered rows the PyTorch reference's batched product saves ([N, K, d], hidden's
    dtype)."""
    return shape.rows * shape.negatives * shape.hidden * shape.activation_bytes


def index_elements(shape: TrialShape) -> int:
    """How many negative indices the PyTorch reference gathers item rows with: K, B x K or N x K."""
    groups = {"batch": 1, "sequence": shape.batch}.get(shape.scope, shape.rows)
    return groups * shape.negatives


def torch_scatter_bytes(shape: TrialShape) -> int:
    """The PyTorch losses' last backward stage: the gathered rows' gradient is scattered into a zeroed
    [C, d] item gradient by CUDA's sort-based index_put_ (INDEX_PUT_SORT_BYTES_PER_INDEX of buffers),
    then the positives' gather makes a second [C, d] gradient that is added to the first. Per position,
    the float32 gradient of the [N, K, d] rows is alive during the first scatter."""
    table = loss_item_gradient_bytes(shape)
    sort = index_elements(shape) * INDEX_PUT_SORT_BYTES_PER_INDEX
    rows_gradient = 0
    if shape.scope in ("position", "drawn"):
        rows_gradient = torch_position_gather_bytes(shape)
    return max(rows_gradient + sort + table, 2 * table)


def sorted_negatives_bytes(shape: TrialShape) -> int:
    """The fused per-position backward's int32 copy of the [N, K] negatives, each row sorted
    (kernels/triton_gather.py), when the kernel sorts them."""
    return shape.rows * shape.negatives * INT32 if shape.hidden <= SORT_MAX_DIM else 0


def sort_buffer_bytes(shape: TrialShape) -> int:
    """torch.sort's buffers for one chunk of rows (an int32 copy of the chunk and its int64 order), for
    rows too long for the in-register Triton sort."""
    if shape.hidden > SORT_MAX_DIM or shape.negatives <= SORT_IN_TRITON_MAX_NEGATIVES:
        return 0
    k = max(shape.negatives, 1)
    chunk_rows = min(shape.rows, max(1, SORT_CHUNK_ELEMENTS // k))
    return chunk_rows * k * (INT32 + INT64)


def torch_logits_bytes(shape: TrialShape, bytes_per_logit: int) -> int:
    """The PyTorch reference's logits and their copies ([N, K], or [N, C] for full CE), plus its
    float32 [N, d] copies of the hidden states and positive rows."""
    return shape.rows * shape.negatives * bytes_per_logit + 3 * shape.rows * shape.hidden * FLOAT32


def torch_gathered_bytes(shape: TrialShape, *, backward: bool) -> int:
    """The item rows the PyTorch reference gathers and casts to the hidden's dtype (and, in backward,
    their gradients): the whole table for full CE, [K, d] or [B, K, d] for shared negatives, and
    [N, K, d] per position (gathered in float32, then cast)."""
    n, d, k, a, c = shape.rows, shape.hidden, shape.negatives, shape.activation_bytes, shape.num_items
    # Rows are gathered in the table's dtype and then cast (kernels/reference.py): in autocast
    # training the gather is float32, and the cast's backward makes a float32 gradient of it.
    item = shape.item_bytes if shape.item_bytes != a else 0
    if shape.scope == "full":
        return c * d * (a if item else 0) * (2 if backward else 1)
    if shape.scope in ("batch", "sequence"):
        groups = 1 if shape.scope == "batch" else shape.batch
        return groups * k * d * (2 * a + item if backward else item + a)
    gathered = n * k * d * a
    if backward:
        # The einsum's backward holds its saved gather and that gather's gradient; autograd frees the
        # saved gather once that node has run, before the cast's backward turns the gradient into the
        # table's dtype (measured on H200: 10.75 GiB allocated where both together would be 14.1).
        return gathered + max(gathered, n * k * d * item)
    return n * k * d * item + gathered


# --- backward of the item table and evaluation --------------------------------------------------------


def slice_gradient_bytes(shape: TrialShape) -> int:
    """The view `weight[1:]`'s backward: a zero-filled gradient for the whole table, kept until the
    embedding lookup's gradient is added at the end of backward."""
    return item_table_bytes(shape)


def lookup_gradient_bytes(shape: TrialShape) -> int:
    """The embedding lookup's dense gradient ([C + 1, d] float32) and its sort buffers over the N ids."""
    return item_table_bytes(shape) + 4 * shape.rows * INT64


def evaluation_bytes(shape: TrialShape) -> int:
    """Full-catalogue scoring (training/evaluate.py): each evaluation batch of E users is scored a chunk of
    at most eval_max_scores // C users at a time (one user at a time from C = eval_max_scores on):
    the chunk's encoder forward (no grad) and EVAL_SCORE_COPIES float32 copies of its scores, besides
    the batch's int64 inputs. At 10^7 items a chunk is one user: its scores are 40 MB, its forward
    nothing; charging the forward for the whole batch (as before) overstated evaluation at 10^5-10^6
    items, where it can be the peak phase."""
    c = shape.num_items
    chunk_rows = min(shape.eval_batch, eval_chunk_rows(shape.eval_max_scores, c))
    scores = EVAL_SCORE_COPIES * chunk_rows * c * FLOAT32
    encoder = EVAL_FORWARD_COPIES * chunk_rows * shape.length * shape.hidden * FLOAT32
    if not shape.on_cuda:
        encoder += 2 * chunk_rows * shape.heads * shape.length * shape.length * FLOAT32
    return scores + encoder + 2 * shape.eval_batch * shape.length * INT64


# --- the caching allocator -------------------------------------------------------------------------


def largest_step_buffer_bytes(shape: TrialShape) -> int:
    """The largest buffer of a size class whose blocks the cache reshuffles within a step: an [N, d]
    float32 activation, or the PyTorch sampled losses' float32 [N, K] logits and their copies. The
    PyTorch per-position losses' [N, K, d] gathers and full CE's [N, C] logits leave their own excess
    (torch_position_excess_bytes, full_ce_logits_excess_bytes).

    The item-table-sized buffers, although from 10^6 items they are a step's largest, are mostly not
    re-requested: parameters, two Adam states, the loss's, the slice's and the lookup's gradients and
    Adam's temporary are all [C(+1), d] float32, rounded to the same 2 MiB multiple; from the second
    step each request finds one of the segments the first step made (replayed in a model of the caching
    allocator: at 5 * 10^6 items, exactly as many table-sized segments as tables alive at the peak),
    except in about half the trials one more (TABLE_SPLIT_FACTOR). Nor the negative indices and the fused
    backward's sorted copy of them: requested once a step at the same point, each finds its previous
    block whole (a fused per-position trial with a 1 GiB index tensor kept 17 MiB beyond its allocated
    peak on the H200, 2k-position-triton-k512-b512-l512) unless the first step's last buffers settled in
    it (fused_index_excess_bytes)."""
    n, d, k = shape.rows, shape.hidden, shape.negatives
    candidates = [n * d * FLOAT32]
    if shape.impl == "torch" and shape.scope != "full":
        candidates.append(n * k * FLOAT32)
    return max(candidates)


def largest_transient_bytes(shape: TrialShape) -> int:
    """The PyTorch losses' largest transient, whose freed segment a long-lived block can pin: the per-position
    float32 [N, K, d] gather, full CE's float32 [N, C] logits; 0 for other losses."""
    if shape.impl != "torch":
        return 0
    if shape.scope == "full":
        return shape.rows * shape.num_items * FLOAT32
    return torch_position_gather_bytes(shape)


def pinned_transient_share(shape: TrialShape) -> float:
    """The share of the largest transient charged for a long-lived block that may pin its segment (see
    PINNED_TRANSIENT_SHARE): on CUDA, where the trainer left the cuBLAS workspaces to the first step, or
    where the transient holds fewer than TABLE_PIN_MAX_TABLES item tables (a table can pin it); none
    otherwise (nor on a CPU, which has no workspaces and whose memory is not the process's)."""
    transient = largest_transient_bytes(shape)
    if not shape.on_cuda or not transient:
        return 0.0
    if not shape.workspaces_warmed:
        return PINNED_TRANSIENT_SHARE
    return PINNED_TRANSIENT_SHARE if transient < TABLE_PIN_MAX_TABLES * item_table_bytes(shape) else 0.0


def full_ce_logits_excess_bytes(shape: TrialShape) -> int:
    """PyTorch full CE: the bf16 logits' segment (TORCH_FULL_LOGITS_SEGMENT_BYTES_PER_LOGIT) and
    pinned_transient_share of a float32 [N, C] segment; 0 for other losses."""
    if shape.impl != "torch" or shape.scope != "full":
        return 0
    logits = shape.rows * shape.num_items
    # In float32 the product's output is the float32 logits themselves, which a gradient reuses.
    segment = logits * shape.activation_bytes if shape.activation_bytes != FLOAT32 else 0
    return segment + round(pinned_transient_share(shape) * logits * FLOAT32)


def torch_position_gather_bytes(shape: TrialShape) -> int:
    """The PyTorch per-position losses' [N, K, d] gather in the table's dtype (float32 in autocast
    training); 0 for other losses."""
    if shape.impl != "torch" or shape.scope not in ("position", "drawn"):
        return 0
    return shape.rows * shape.negatives * shape.hidden * max(shape.item_bytes, shape.activation_bytes)


def fused_index_excess_bytes(shape: TrialShape) -> int:
    """The fused per-position loss's [N, K] int64 index tensor when the first step's item tables take its
    segment; 0 otherwise and for other losses.

    The index is freed with the loss's backward node; the item tables made after it (the slice's and the
    lookup's gradients, Adam's states and temporary) take the smallest free block they fit. Below
    SORT_MAX_DIM the backward's sorted int32 copy (half the index) is freed just before and is that block,
    and its chunks of torch.sort are requested anew each step; above it, with no sorted copy, it is the
    index's own segment whenever a table fits in it, and the next step's index needs a segment of its own.
    Measured: c2-100k-position-triton-k4096-b128-l200-d256 kept 0.59 GiB beyond its allocated peak with a
    0.78 GiB index and 0.09 GiB tables (-12.6% against the model of 1ee330c, which charged 256 MiB;
    replayed through benchmarks/memory_trace.py --extrapolate, 0.61), c1m-position-triton-k512-b512-l512-
    d256 1.20 GiB with a 1.0 GiB index; not 1m-position-triton-k511-d256 nor c2-10m-position-triton-
    k2048-b256-l200-d256, whose tables (0.9 and 9.1 GiB) do not fit their index (0.25 and 0.78).

    At d <= SORT_MAX_DIM the sorted copy's block, freed at the end of the backward, takes Adam's two states
    when they are made (the first step) and keeps the rest: the next step's copy needs a segment of its own,
    and the block's remainder, the copy less two item tables, stays reserved. Replayed on a CPU
    (benchmarks/memory_trace.py) for the 10^6-item study trial K=4096, B=1024, L=200, d=64: 2.70 GiB kept,
    measured 2.67 on an H200 (a 3.125 GiB copy, 0.24 GiB tables; the model charged 0.25 before, -16.4%).
    The same rule gives 0.30, 0.33, 0.33, 0.69, 0.10 GiB for the five trials at d <= 128 measured by the
    trainer of 1ee330c or later with a copy larger than two tables (measured 0.30, 0.32, 0.35, 0.71, 0.17);
    the three of e92b87d's set with a copy of 0.39-0.78 GiB kept 0.02-0.46."""
    if shape.impl != "triton" or shape.scope != "position":
        return 0
    index = negative_index_bytes(shape)
    if shape.hidden > SORT_MAX_DIM:
        return index if index >= item_table_bytes(shape) else 0
    return max(0, index // 2 - 2 * item_table_bytes(shape))


def torch_position_excess_bytes(shape: TrialShape) -> int:
    """The PyTorch per-position losses' gathers beyond the allocated peak: the float32 gradient's own
    segment (one gather) and pinned_transient_share of one more; 0 for other losses."""
    return round((1 + pinned_transient_share(shape)) * torch_position_gather_bytes(shape))


def table_segments_bytes(shape: TrialShape) -> int:
    """The item tables' share of the excess: TABLE_SPLIT_FACTOR of a table for the split of Adam's freed
    temporary; for the PyTorch per-position losses, minus Adam's states that settle in the gather's segment
    (memory the gather's excess counts already): both from GATHER_TABLES_FOR_ADAM_STATES tables per gather
    on, linearly less down to none at half that (where one state would fit beside the bf16 cast and the
    other spill), so that the prediction grows with K."""
    table = item_table_bytes(shape)
    split = TABLE_SPLIT_FACTOR * table
    gather = torch_position_gather_bytes(shape)
    full, none = GATHER_TABLES_FOR_ADAM_STATES * table, GATHER_TABLES_FOR_ADAM_STATES * table / 2
    if gather <= none:
        return round(split)
    settled = -ADAM_STATE_TABLES * table
    if gather >= full:
        return round(settled)
    return round(split + (settled - split) * (gather - none) / (full - none))


def allocator_overhead_bytes(shape: TrialShape) -> int:
    """Peak reserved minus peak allocated memory: the step's re-requested buffers (ALLOCATOR_REREQUEST_FACTOR;
    the PyTorch per-position gathers and full CE's logits, see PINNED_TRANSIENT_SHARE; the fused
    per-position index tensor, fused_index_excess_bytes) and the item tables' share (table_segments_bytes),
    at least ALLOCATOR_MIN_EXCESS."""
    rerequested = max(round(ALLOCATOR_REREQUEST_FACTOR * largest_step_buffer_bytes(shape)),
                      torch_position_excess_bytes(shape), full_ce_logits_excess_bytes(shape),
                      fused_index_excess_bytes(shape))
    return max(rerequested + table_segments_bytes(shape), ALLOCATOR_MIN_EXCESS)


# --- phases and the prediction ------------------------------------------------------------------------


def phase_terms(shape: TrialShape) -> dict[str, dict[str, int]]:
    """The terms alive at the peak of each phase of a training step and of evaluation (allocated bytes)."""
    state = {
        "parameters": parameters_bytes(shape),
        "adam_states": adam_states_bytes(shape),
        "sampler_tables": sampler_tables_bytes(shape),
    }
    step_inputs = {
        "autocast_weight_copies": autocast_weight_copies_bytes(shape),
        "encoder_activations": encoder_activations_bytes(shape),
        "loss_hidden_copy": loss_hidden_copy_bytes(shape),
        "negative_indices": negative_index_bytes(shape),
    }
    return {
        "forward": {
            **state, **step_inputs,
            "gradients": gradients_bytes(shape),  # the previous step's, freed after the forward
            "forward_transients": forward_transients_bytes(shape),
            "loss_forward": loss_forward_bytes(shape),
        },
        "loss_backward": {
            **state, **step_inputs,
            "loss_backward": loss_backward_bytes(shape),
            # the fused kernels' item gradient exists through their backward (see loss_backward_bytes)
            "loss_item_gradient": loss_item_gradient_bytes(shape) if shape.impl == "triton" else 0,
        },
        # The loss's node has run: autograd has released what it saved, the negative indices among
        # them (counted here as before, they over-predicted c10m-position-triton-k4096-b512-l200-d128's
        # allocated peak by its 3.1 GiB index tensor); its bf16 copy of the hidden states is replaced by
        # their gradient, of the same size.
        "item_slice_backward": {
            **state, **step_inputs,
            "negative_indices": 0,
            "loss_item_gradient": loss_item_gradient_bytes(shape),
            "slice_gradient": slice_gradient_bytes(shape),
        },
        "embedding_backward": {
            **state,
            "slice_gradient": slice_gradient_bytes(shape),
            "lookup_gradient": lookup_gradient_bytes(shape),
            "encoder_gradients": gradients_bytes(shape) - item_table_bytes(shape),
        },
        "optimizer_step": {
            **state,
            "gradients": gradients_bytes(shape),
            "adam_step_temporaries": adam_step_temporaries_bytes(shape),
        },
        "evaluation": {
            **state,
            "gradients": gradients_bytes(shape),
            "autocast_weight_copies": autocast_weight_copies_bytes(shape),
            "evaluation": evaluation_bytes(shape),
        },
    }


def predict_peak_bytes(
    config: TrainConfig,
    num_items: int,
    *,
    num_users: int | None = None,
    gpu_total: int | None = None,
    device: str | None = None,
    workspaces_warmed: bool = True,
) -> MemoryPrediction:
    """Predict the peak GPU memory of training and evaluating `config` on `num_items` items.

    `num_items` is the catalogue without padding; `num_users` (optional) caps the batch sizes at the
    number of sequences; `gpu_total` is recorded in the prediction; `device` ("cuda"/"cpu") overrides
    config.device (whose "auto" is taken as CUDA), e.g. with the device a trial resolved. A CPU trial
    gets the same terms without CUDA context (the host memory of its tensors, not of the process).
    `workspaces_warmed` (default: what today's trainer does) says whether the trial made its cuBLAS
    workspaces before its first step; False predicts trials measured before the trainer did.
    """
    shape = resolve_shape(config, num_items, num_users=num_users, device=device,
                          workspaces_warmed=workspaces_warmed)
    phases = phase_terms(shape)
    allocated = {name: sum(terms.values()) for name, terms in phases.items()}
    peak_phase = max(allocated, key=lambda name: allocated[name])
    torch_max_allocated = allocated[peak_phase]
    overhead = allocator_overhead_bytes(shape)
    torch_max_reserved = torch_max_allocated + overhead
    context = DEFAULT_CUDA_CONTEXT_BYTES if shape.on_cuda else 0
    parts = {name: value for name, value in phases[peak_phase].items() if value}
    parts["allocator_overhead"] = overhead
    if context:
        parts["cuda_context"] = context
    return MemoryPrediction(
        total_bytes=sum(parts.values()),
        parts=parts,
        torch_max_allocated=torch_max_allocated,
        torch_max_reserved=torch_max_reserved,
        peak_phase=peak_phase,
        phases=allocated,
        gpu_total=gpu_total,
        device="cuda" if shape.on_cuda else "cpu",
    )


@dataclass(frozen=True)
class DatasetSize:
    """What the memory model needs to know about a trial's dataset: the catalogue (items without
    padding) and the number of users, which caps every batch (a batch never holds more sequences)."""

    num_items: int
    num_users: int | None = None

    @classmethod
    def of(cls, data: object) -> DatasetSize:
        """From a loaded dataset (`study.data.Interactions`, or anything with num_items / num_users)."""
        return cls(int(data.num_items), int(data.num_users))  # type: ignore[attr-defined]


def predict_trial_memory(
    config: TrainConfig, dataset: DatasetSize, *, gpu_total: int | None = None, device: str | None = None,
    workspaces_warmed: bool = True,
) -> MemoryPrediction:
    """The prediction `cce-study plan`, `cce-study sweep` (planning and its workers) and the trainer's
    record all make, so that the same configuration on the same dataset gets the same number of bytes
    everywhere: the catalogue and the users of the loaded dataset, the card's memory where known
    (recorded, it changes nothing), `device` and `workspaces_warmed` as predict_peak_bytes takes them."""
    return predict_peak_bytes(config, dataset.num_items, num_users=dataset.num_users, gpu_total=gpu_total,
                              device=device, workspaces_warmed=workspaces_warmed)


__all__ = [
    "DatasetSize",
    "MemoryPrediction",
    "TrialShape",
    "phase_terms",
    "predict_peak_bytes",
    "predict_trial_memory",
    "resolve_shape",
    "parameter_count",
]
