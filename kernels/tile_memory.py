"""The shared memory that a dense-negative kernel (kernels.triton_shared) needs for given tiles, in bytes.

A compiled Triton kernel records the shared memory it needs (`shared` in its metadata); the GPU refuses to
load it when that exceeds the card's per-block opt-in limit (Triton raises OutOfResources), and trying
smaller tiles costs one compilation each, up to minutes for wide float32 tiles. This estimate lets the tiles
be chosen before the first compilation. It counts what Triton 3.6 and 3.7 stage in shared memory when they
compile the kernels for sm_90 (`benchmarks/kernel_ptx.py --shared-memory` compiles them and compares;
notes/kernel-shared.md has the measurements):

- The operands of `tl.dot`. One tile is loaded inside the loop ("streamed": the item rows [block_n, d] in
  forward, grad_hidden and the fused backward; the hidden rows [block_m, d] in grad_items), one before it
  ("resident", one copy; two in the fused backward with MMA v2, whose third dot reads the hidden rows as
  its B operand). Both are staged in the hidden dtype (item rows are converted to it); float32
  item rows streamed for half hidden rows are staged as loaded, plus one converted copy.
- The software pipeline keeps `num_stages` buffers of the streamed tile where the dots run on Hopper's
  warpgroup MMA (half-precision operands, at least 64 rows on the MMA's M side: block_m, or block_n in
  grad_items) and `num_stages - 1` otherwise (float32 FMA dots, MMA v2). Item rows gathered through
  negative ids (shared and per-sequence negatives) are often pipelined less deep (not in grad_hidden with
  128 negatives a tile or more), never deeper. With one stage nothing is pipelined, and the two dots of a
  backward kernel may each stage their own copy: 2.
- A [block_m, block_n] float32 tile of softmax gradients passed to the backward's second dot through
  shared memory (not with the warpgroup MMA of a pipelined loop on one warpgroup, 4 warps, which reads it
  from registers); in the fused backward always (its third dot reads it transposed).
- In the fused backward, its [block_n, d] float32 share of the tile gradient, staged for the atomic adds.
- Per-row values pipelined with the streamed tile (log-sum-exp, gradient, target, negative id, offset):
  at most 12 bytes a row and a stage.

The d-blocked forward (`d_chunk` > 0: kernels.triton_shared's BlockConfig.block_d) streams chunks of both
operands instead, [block_m, d_chunk] of the hidden rows and [block_n, d_chunk] of the item rows, with nothing
resident: `num_stages` buffers of each (at least 2; float32 and gathered item rows pipeline fewer), a
converted copy of the item chunk where the items' dtype differs from hidden's, and 8 bytes a row and a column
for the values that the online log-sum-exp reads (ids, offsets, targets, its running max and sum). Over 540
kernels compiled for sm_90 with Triton 3.7.1 (`benchmarks/kernel_ptx.py --dblock --grid`: d 64, 96, 200, 256,
512; chunks 32 to 128; tiles 64x64 to 256x128; 1-4 stages; 4 and 8 warps; full, shared, per sequence; bf16,
fp16, fp32, bf16 hidden with fp32 items) it is never below the compiled need: 1.01x to 7.4x, median 1.04x for
half rows and items of the full catalogue and shared negatives with 2 or more stages; it counts more for
float32 (at least 1.34x: one buffer less), per-sequence negatives (pipelined less deep through their ids),
float32 items (shared negatives are gathered in hidden's dtype) and one stage.

The estimate is at least the compiled need at each of 3,894 kernels compiled with Triton 3.6.0 (d 64, 128,
256, 512; tiles 16x16 to 128x128 and 64x256; 1-4 stages; 4 warps, and 8 in the fused backward; bf16, fp16,
fp32, bf16 hidden with fp32 items; full, shared, per sequence, fused backward) and at each of 1,800 with
Triton 3.7.1 (4 and 8 warps). With 2 or more stages, 4 warps and the catalogue in order it is tight (median
1.02x the compiled need, at most 1.34x; float32 at most 1.07x); it counts more than Triton allocates for
gathered item rows (median 1.04x, up to 3.0x), float32 items for half rows (up to 3.0x), 8 warps, the fused
backward and one stage (up to 6.4x).
"""

from __future__ import annotations

KERNELS = ("forward", "grad_hidden", "grad_items", "fused_backward", "dblock_backward")
# The rows on the M side of a warpgroup MMA: with fewer, Triton uses MMA v2 (Ampere's instructions).
WGMMA_MIN_ROWS = 64
ROW_VALUE_BYTES = 12


def shared_memory_bytes(kernel: str, *, block_m: int, block_n: int, num_stages: int, num_warps: int,
                        block_d: int, hidden_bytes: int, items_bytes: int, d_chunk: int = 0) -> int:
    """Estimated shared memory of one launch of `kernel` (one of KERNELS) with tiles of block_m rows and
    block_n negatives, rows padded to block_d, hidden and item elements of the given sizes; d_chunk > 0:
    the d-blocked forward with chunks of that width; "dblock_backward" (always d-blocked) takes d_chunk as the
    chunk its host code launches."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel: expected one of {', '.join(KERNELS)}, got {kernel!r}")
    if kernel == "dblock_backward":
        if not d_chunk:
            raise ValueError("d_chunk: the d-blocked backward needs its chunk of d (> 0)")
        return _dblock_backward_bytes(block_m=block_m, block_n=block_n, num_stages=num_stages,
                                      block_d=block_d, hidden_bytes=hidden_bytes, d_chunk=d_chunk)
    if d_chunk:
        if kernel != "forward":
            raise ValueError(f"d_chunk: only the forward kernel has a d-blocked form, not {kernel!r}")
        chunk = min(d_chunk, block_d)
        stage = block_m * chunk * hidden_bytes + block_n * chunk * items_bytes
        converted = block_n * chunk * hidden_bytes if items_bytes != hidden_bytes else 0
        return max(num_stages, 2) * stage + converted + 8 * (block_m + block_n)
    if kernel == "grad_items":
        streamed_rows, streamed_bytes, resident_rows, mma_rows = block_m, hidden_bytes, block_n, block_n
    else:
        streamed_rows, streamed_bytes, resident_rows, mma_rows = block_n, items_bytes, block_m, block_m
    warpgroup_mma = hidden_bytes == 2 and mma_rows >= WGMMA_MIN_ROWS
    converted = streamed_bytes != hidden_bytes
    if num_stages == 1:
        buffers = 2
    elif warpgroup_mma and not converted:
        buffers = num_stages
    else:
        buffers = num_stages - 1
    streamed = buffers * streamed_rows * block_d * streamed_bytes
    if converted:
        streamed += streamed_rows * block_d * hidden_bytes
    resident = resident_rows * block_d * hidden_bytes
    if kernel == "fused_backward" and hidden_bytes == 2 and not warpgroup_mma:
        resident *= 2  # MMA v2 stages the hidden rows once as the A operand, once as the B operand
    scores = 0
    in_registers = warpgroup_mma and num_stages > 1 and num_warps <= 4
    if kernel == "fused_backward" or (kernel != "forward" and not in_registers):
        scores = block_m * block_n * 4
    tile_gradient = block_n * block_d * 4 if kernel == "fused_backward" else 0
    return streamed + resident + scores + tile_gradient + ROW_VALUE_BYTES * streamed_rows * num_stages


def _dblock_backward_bytes(*, block_m: int, block_n: int, num_stages: int, block_d: int, hidden_bytes: int,
                           d_chunk: int) -> int:
    """The d-blocked backward of shared negatives: the row block's hidden chunks, resident ([block_m, d]
    padded to whole chunks); `num_stages` buffers of the negative tile's chunks ([block_n, d] of the
    gathered copy, which is in hidden's dtype whatever the items'); the softmax-gradient tile staged for
    its transposed product ([block_m, block_n] in hidden's dtype); one float32 [block_n, d_chunk] chunk of the
    tile gradient converted for the atomic adds; and 8 bytes a negative and stage (ids, offsets)."""
    chunk = min(d_chunk, block_d)
    width = -(-block_d // chunk) * chunk
    stages = max(num_stages, 1)
    return (block_m * width * hidden_bytes + stages * block_n * width * hidden_bytes
            + block_m * block_n * hidden_bytes + block_n * chunk * 4 + 8 * block_n * stages)
