"""The top-k ranking of study/training/metrics.py against the int64-key ranking it replaced
(tests/metrics_reference.py): identical metric dicts, to the last digit, on fresh random score matrices
full of ties and special values, through each way the tie fallback runs (torch ops on the tied rows, on
every row, and the Triton kernel in the interpreter), and end to end on real data."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported: its kernels run on CPU tensors

import metrics_reference as reference  # noqa: E402

import study.training.metrics as metrics  # noqa: E402
from study.training.metrics import RankingAccumulator, target_ranks, top_k_items  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
INF = float("inf")
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def random_scores(generator: torch.Generator, rows: int, items: int, dtype: torch.dtype) -> torch.Tensor:
    """Scores with heavy ties (a few quantised levels, or continuous, or a constant row), NaN, +-inf,
    -0.0 next to 0.0, and rows mostly excluded (-inf), so that ties straddle the k-th position, fall on
    the target, and rows hold fewer rankable items than k."""
    levels = int(torch.randint(1, 12, (1,), generator=generator))
    style = int(torch.randint(0, 4, (1,), generator=generator))
    if style == 0:
        scores = torch.randn(rows, items, generator=generator)
    else:
        scores = torch.randint(-levels, levels + 1, (rows, items), generator=generator) / 4.0
    draw = torch.rand(rows, items, generator=generator)
    excluded_share = float(torch.rand(1, generator=generator)) ** 2
    scores[draw < excluded_share] = -INF
    scores[(draw > 0.97) & (draw < 0.98)] = float("nan")
    scores[(draw > 0.98) & (draw < 0.985)] = INF
    scores[(scores == 0) & (torch.rand(rows, items, generator=generator) < 0.5)] = -0.0
    if rows > 2:
        scores[1] = float(scores[0, 0]) if style else 0.5  # a row where everything ties
        scores[2, : max(1, items // 2)] = -INF  # a row mostly excluded
    return scores.to(dtype)


def accumulate(accumulator_type: type, num_items: int, ks: tuple[int, ...],
               chunks: list[tuple[torch.Tensor, torch.Tensor]], *, consume: bool,
               device: str = "cpu") -> dict[str, float]:
    accumulator = accumulator_type(num_items, ks)
    for scores, targets in chunks:
        accumulator.add(scores.to(device, copy=True), targets.to(device), consume=consume)
    return accumulator.result()


def random_case(generator: torch.Generator, dtype: torch.dtype
                ) -> tuple[int, tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]]:
    num_items = int(torch.randint(1, 3000, (1,), generator=generator)) if torch.rand(
        1, generator=generator) < 0.3 else int(torch.randint(1, 160, (1,), generator=generator))
    ks = (1, 5, 10, 20, 100)
    if torch.rand(1, generator=generator) < 0.2:
        ks = (1, num_items)  # k = the catalogue
    chunks = []
    for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
        rows = int(torch.randint(1, 24, (1,), generator=generator))
        scores = random_scores(generator, rows, num_items, dtype)
        targets = torch.randint(0, num_items, (rows,), generator=generator)
        # a target tied with others (and maybe at -inf or NaN), as seen items restored are
        scores[0, targets[0]] = scores[0, int(torch.randint(0, num_items, (1,), generator=generator))]
        chunks.append((scores, targets))
    return num_items, ks, chunks


@pytest.fixture
def tie_rows_seen(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the rows that went through the tie fallback (so a test shows it exercised it)."""
    seen: list[int] = []
    fallback = metrics.complete_tied_rows

    def counting(values: torch.Tensor, columns: torch.Tensor, bound: torch.Tensor, above: torch.Tensor,
                 need: torch.Tensor) -> None:
        seen.append(int((need > 0).sum()))
        fallback(values, columns, bound, above, need)

    monkeypatch.setattr(metrics, "complete_tied_rows", counting)
    yield seen


def compare_on_random_cases(seed: int, cases: int, dtypes: tuple[torch.dtype, ...] = DTYPES,
                            device: str = "cpu") -> None:
    """The reference on CPU, the current accumulator on `device`."""
    generator = torch.Generator().manual_seed(seed)
    for case in range(cases):
        dtype = dtypes[case % len(dtypes)]
        num_items, ks, chunks = random_case(generator, dtype)
        consume = bool(case % 2)
        expected = accumulate(reference.RankingAccumulator, num_items, ks, chunks, consume=False)
        got = accumulate(RankingAccumulator, num_items, ks, chunks, consume=consume, device=device)
        assert got == expected, f"case {case}: {dtype}, {num_items} items, ks {ks}, consume {consume}"


def test_metrics_equal_the_key_based_reference_on_random_tie_heavy_chunks(tie_rows_seen: list[int]) -> None:
    compare_on_random_cases(seed=20261129, cases=160)
    assert sum(tie_rows_seen) > 100  # rows whose k-th and (k+1)-th values tie went through the fallback


def test_the_fallback_on_every_row_as_on_cuda_without_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    def every_row(values: torch.Tensor, columns: torch.Tensor, bound: torch.Tensor, above: torch.Tensor,
                  need: torch.Tensor) -> None:
        metrics._complete_tied_rows_torch(values, columns, bound, above, need, rows=None)

    monkeypatch.setattr(metrics, "complete_tied_rows", every_row)
    compare_on_random_cases(seed=5, cases=40)


def test_the_fallback_through_the_triton_kernel_in_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET", "").strip().lower() not in ("1", "true", "on", "yes"):
        pytest.skip("the kernel runs on CPU tensors only in the Triton interpreter")
    from study.training.topk_ties import complete_tied_rows_triton

    tied_rows = []

    def kernel(values: torch.Tensor, columns: torch.Tensor, bound: torch.Tensor, above: torch.Tensor,
               need: torch.Tensor) -> None:
        tied_rows.append(int((need > 0).sum()))
        complete_tied_rows_triton(values, columns, bound, above, need)

    monkeypatch.setattr(metrics, "complete_tied_rows", kernel)
    compare_on_random_cases(seed=9, cases=40, dtypes=(torch.float32, torch.float64))
    assert sum(tied_rows) > 30


@pytest.mark.cuda
def test_metrics_on_cuda_equal_the_reference() -> None:
    """On the GPU: torch's CUDA topk and sorts, and the Triton kernel compiled (pytest -m cuda)."""
    compare_on_random_cases(seed=77, cases=200, device="cuda")


def test_without_the_tie_fallback_the_comparison_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The random cases are hard enough: topk's k best, sorted by (value desc, column asc) but with
    whichever tied items topk picked at the k-th position, changes a metric."""
    def without_fallback(values: torch.Tensor, k: int) -> torch.Tensor:
        candidate_values, columns = values.topk(k, dim=1)
        by_column = columns.argsort(dim=1, stable=True)
        columns, candidate_values = columns.gather(1, by_column), candidate_values.gather(1, by_column)
        return columns.gather(1, (candidate_values + 0.0).argsort(dim=1, descending=True, stable=True))

    monkeypatch.setattr(metrics, "top_k_columns", without_fallback)
    with pytest.raises(AssertionError, match="case"):
        compare_on_random_cases(seed=20261129, cases=160)


def test_ranks_and_top_k_lists_equal_the_reference_keys_including_excluded_positions() -> None:
    generator = torch.Generator().manual_seed(3)
    for case in range(60):
        dtype = DTYPES[case % len(DTYPES)]
        items = int(torch.randint(1, 400, (1,), generator=generator))
        scores = random_scores(generator, 17, items, dtype)
        targets = torch.randint(0, items, (17,), generator=generator)
        keys = reference.order_keys(scores)
        assert torch.equal(target_ranks(scores, targets), reference._ranks_from_keys(keys, targets))
        for k in sorted({1, min(items, 7), min(items, 100), items}):
            assert torch.equal(top_k_items(scores, k), keys.topk(k, dim=1).indices), (case, k)


def test_consume_overwrites_only_float32_and_float64_scores() -> None:
    scores = torch.tensor([[float("nan"), 1.0, -0.0]], dtype=torch.bfloat16)
    kept = scores.clone()
    RankingAccumulator(3, (1,)).add(scores, torch.tensor([0]), consume=True)
    assert torch.equal(scores.isnan(), kept.isnan())
    scores = scores.float()
    RankingAccumulator(3, (1,)).add(scores, torch.tensor([0]), consume=False)
    assert scores.isnan().any()


def test_the_tie_kernel_compiles_for_sm90() -> None:
    """The interpreter accepts code the compiler refuses (a loop-carried type that changes, say):
    compile the kernel to PTX for an H200, in a process without TRITON_INTERPRET."""
    triton = pytest.importorskip("triton")
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip(f"triton {triton.__version__} has no NVIDIA backend here")
    program = (
        "import triton\n"
        "from triton.backends.compiler import GPUTarget\n"
        "from triton.compiler import ASTSource\n"
        "from study.training.topk_ties import BLOCK, _complete_tied_rows_kernel\n"
        "for dtype in ('fp32', 'fp64'):\n"
        "    signature = {'values_ptr': '*' + dtype, 'columns_ptr': '*i64', 'bound_ptr': '*' + dtype,\n"
        "                 'above_ptr': '*i64', 'need_ptr': '*i64', 'num_items': 'i32', 'row_stride': 'i32',\n"
        "                 'columns_stride': 'i32', 'BLOCK': 'constexpr'}\n"
        "    source = ASTSource(_complete_tied_rows_kernel, signature, constexprs={'BLOCK': BLOCK})\n"
        "    compiled = triton.compile(source, target=GPUTarget('cuda', 90, 32))\n"
        "    assert '.entry _complete_tied_rows_kernel' in compiled.asm['ptx']\n"
        "    print(dtype, 'compiled')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("compiled") == 2


# --- end to end on real data ------------------------------------------------------------------------


@pytest.fixture
def data_root(request: pytest.FixtureRequest) -> Path:
    """CCE_STUDY_DATA_PATH where it names a folder, else the shared copies next to the checkout."""
    named = os.environ.get("CCE_STUDY_DATA_PATH", "")
    if named and Path(named).is_dir():
        return Path(named)
    shared: Path = request.getfixturevalue("shared_data")
    return shared


def both_ways(monkeypatch: pytest.MonkeyPatch, run: Callable[[], dict[str, float]]
              ) -> tuple[dict[str, float], dict[str, float]]:
    """`run()` with the evaluator's accumulator as it is, then with the key-based reference."""
    import study.training.evaluate as evaluate

    new = run()
    monkeypatch.setattr(evaluate, "RankingAccumulator", reference.RankingAccumulator)
    old = run()
    monkeypatch.undo()
    return new, old


def test_model_and_popularity_evaluation_on_ml_1m_equal_the_reference(
        data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ml-1m's validation users (6,040 x 3,416 items), a randomly initialised SASRec and the popularity
    baseline (whose counts tie in most top-100 lists), seen items excluded, chunks of 389 users as on
    diginetica: identical metric dicts."""
    from models.sasrec import SASRec
    from study.data import load_dataset, make_split
    from study.training.evaluate import evaluate_model, evaluate_popularity, prepare_evaluation

    split = make_split(load_dataset(str(data_root / "ml-1m")), "loo", seed=0)
    torch.manual_seed(0)
    max_len = 20
    model = SASRec(split.num_items, max_len=max_len, hidden=16, blocks=1, heads=1, dropout=0.0)
    prepared = prepare_evaluation(split.validation, num_items=split.num_items, max_len=max_len, device="cpu")
    max_scores = 389 * split.num_items

    def model_metrics() -> dict[str, float]:
        return evaluate_model(model, prepared, num_items=split.num_items, max_len=max_len, batch_size=1024,
                              device="cpu", max_scores=max_scores)

    def popularity_metrics() -> dict[str, float]:
        return evaluate_popularity(split.item_counts, prepared, max_len=max_len, batch_size=1024,
                                   max_scores=max_scores)

    for run in (model_metrics, popularity_metrics):
        new, old = both_ways(monkeypatch, run)
        assert new == old
        assert 0 < new["coverage@100"] <= 1 and new["hit@100"] > 0


def test_eval_split_ranking_mode_compares_old_and_new_in_one_process(tmp_path: Path) -> None:
    """benchmarks/eval_split.py --mode ranking on a small synthetic log on CPU: both accumulators timed,
    metrics identical, profiles written."""
    import json

    command = [sys.executable, str(ROOT / "benchmarks" / "eval_split.py"), "--mode", "ranking",
               "--datasets", "synthetic:users=300", "--max-len", "8", "--hidden", "16",
               "--eval-batch-size", "128", "--device", "cpu", "--repeats", "1", "--profile-chunks", "2",
               "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (result,) = json.loads((tmp_path / "eval_split.json").read_text())
    for name in ("model", "popularity"):
        assert result[name]["differ"] == []
        assert result[name]["old"]["metrics"] == result[name]["new"]["metrics"]
        assert len(result[name]["new"]["seconds"]) == 1
    assert result["profile"]["chunks"] >= 2
    assert sorted(path.name for path in tmp_path.glob("profile-*.txt")) == [
        "profile-synthetic_users_300-after-new.txt", "profile-synthetic_users_300-after-old.txt"]
