"""Every bad input to `linear_cross_entropy` raises a ValueError that names the argument."""

from __future__ import annotations

import pytest
import torch

from kernels import linear_cross_entropy

B, L, D, C, K = 2, 3, 4, 10, 5


def good_inputs():
    generator = torch.Generator().manual_seed(0)
    return {
        "hidden": torch.randn(B, L, D, generator=generator),
        "items": torch.randn(C, D, generator=generator),
        "targets": torch.randint(0, C, (B, L), generator=generator),
    }


def call(negatives=None, **changes):
    arguments = good_inputs()
    arguments.update(changes)
    hidden, items, targets = arguments.pop("hidden"), arguments.pop("items"), arguments.pop("targets")
    return linear_cross_entropy(hidden, items, targets, negatives, impl=arguments.pop("impl", "torch"),
                                **arguments)


def negatives_of(shape, low=0, high=C):
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(1))


BAD_CALLS = {
    "hidden 1-d": ("hidden", dict(hidden=torch.randn(D))),
    "hidden 4-d": ("hidden", dict(hidden=torch.randn(1, B, L, D))),
    "hidden not a tensor": ("hidden", dict(hidden=[[1.0] * D])),
    "hidden integer": ("hidden", dict(hidden=torch.ones(B, L, D, dtype=torch.int64))),
    "hidden float64": ("hidden", dict(hidden=torch.randn(B, L, D, dtype=torch.float64))),
    "items wrong d": ("items", dict(items=torch.randn(C, D + 1))),
    "items 3-d": ("items", dict(items=torch.randn(C, D, 1))),
    "items empty": ("items", dict(items=torch.randn(0, D))),
    "items half with float32 hidden": ("items", dict(items=torch.randn(C, D).half())),
    "items bf16 with fp16 hidden": ("items", dict(hidden=torch.randn(B, L, D).half(),
                                                  items=torch.randn(C, D).bfloat16())),
    "targets float": ("targets", dict(targets=torch.zeros(B, L))),
    "targets wrong shape": ("targets", dict(targets=torch.zeros(B * L, dtype=torch.int64))),
    "targets too large": ("targets", dict(targets=torch.full((B, L), C))),
    "targets negative": ("targets", dict(targets=torch.full((B, L), -1))),
    "ignore_index not int": ("ignore_index", dict(ignore_index=1.5)),
    "reduction": ("reduction", dict(reduction="avg")),
    "impl": ("impl", dict(impl="cuda")),
    "remove_accidental_hits": ("remove_accidental_hits", dict(remove_accidental_hits=1)),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_argument_is_named(case):
    argument, changes = BAD_CALLS[case]
    with pytest.raises(ValueError, match=f"^{argument}:"):
        call(**changes)


BAD_NEGATIVES = {
    "float tensor": ("negatives", torch.zeros(K), {}),
    "wrong rows": ("negatives", negatives_of((B + 1, K)), {}),
    "4-d": ("negatives", negatives_of((B, L, K, 1)), {}),
    "3-d wrong leading": ("negatives", negatives_of((B, L + 1, K)), {}),
    "too large": ("negatives", negatives_of((K,), C, C + 3), {}),
    "negative index": ("negatives", negatives_of((B, L, K), -3, 0), {}),
    "K > C": ("negatives", negatives_of((C + 1,)), {}),
    "K = 0": ("negatives", torch.zeros(B, 0, dtype=torch.int64), {}),
    "int K > C": ("negatives", C + 1, {"seed": 1}),
    "int K = 0": ("negatives", 0, {"seed": 1}),
    "bool": ("negatives", True, {}),
    "list": ("negatives", [1, 2], {}),
    "int without seed": ("seed", K, {}),
    "seed not int": ("seed", K, {"seed": 1.0}),
    "seed with tensor": ("seed", negatives_of((K,)), {"seed": 3}),
    "seed with full": ("seed", None, {"seed": 3}),
    "log_q with full": ("log_q", None, {"log_q": "uniform"}),
    "log_q bad name": ("log_q", negatives_of((K,)), {"log_q": "popularity"}),
    "log_q wrong shape": ("log_q", negatives_of((K,)), {"log_q": torch.randn(C - 1)}),
    "log_q integer": ("log_q", negatives_of((K,)), {"log_q": torch.zeros(C, dtype=torch.int64)}),
    "log_q a list": ("log_q", negatives_of((K,)), {"log_q": [0.0] * C}),
}


@pytest.mark.parametrize("case", sorted(BAD_NEGATIVES))
def test_bad_negatives_seed_or_log_q_is_named(case):
    argument, negatives, changes = BAD_NEGATIVES[case]
    with pytest.raises(ValueError, match=f"^{argument}:"):
        call(negatives, **changes)


def test_out_of_range_message_gives_value_and_position():
    targets = torch.randint(0, C, (B, L), generator=torch.Generator().manual_seed(2))
    targets[1, 2] = C + 7
    with pytest.raises(ValueError, match=rf"targets: value {C + 7} at index \(5,\)"):
        call(targets=targets)


def test_hidden_2d_rejects_per_sequence_shape():
    hidden = torch.randn(B * L, D)
    targets = torch.randint(0, C, (B * L,))
    with pytest.raises(ValueError, match="^negatives:"):
        call(negatives_of((B, K)), hidden=hidden, targets=targets)


def test_ignore_index_is_allowed_outside_range():
    targets = torch.randint(0, C, (B, L), generator=torch.Generator().manual_seed(3))
    targets[0, 0] = -1
    loss = call(negatives_of((K,)), targets=targets, ignore_index=-1)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("argument", ["items", "targets", "negatives", "log_q"])
def test_different_device_is_named(argument):
    meta = torch.device("meta")
    arguments = good_inputs()
    negatives = negatives_of((K,))
    log_q = torch.randn(C)
    if argument == "negatives":
        negatives = negatives.to(meta)
    elif argument == "log_q":
        log_q = log_q.to(meta)
    else:
        arguments[argument] = arguments[argument].to(meta)
    with pytest.raises(ValueError, match=f"^{argument}:.*meta"):
        linear_cross_entropy(arguments["hidden"], arguments["items"], arguments["targets"], negatives,
                             log_q=log_q, impl="torch")


@pytest.mark.parametrize("negatives", [None, "shared", "sequence", "position", "flat", "drawn"])
def test_valid_schemes_are_accepted(negatives):
    tensor_or_int = {None: None, "shared": negatives_of((K,)), "sequence": negatives_of((B, K)),
                     "position": negatives_of((B, L, K)), "flat": negatives_of((B * L, K)),
                     "drawn": K}[negatives]
    seed = 5 if negatives == "drawn" else None
    loss = call(tensor_or_int, seed=seed, reduction="none")
    assert loss.shape == (B, L) and loss.dtype == torch.float32 and torch.all(loss > 0)


# `cce-study bench-loss`: option parsing and the clear error without a GPU.


def bench_args(*argv):
    import argparse

    from study.benchmarks import loss as bench_loss

    parser = argparse.ArgumentParser()
    bench_loss.configure(parser)
    return parser.parse_args(list(argv))


def test_bench_defaults_match_the_design_case():
    from study.benchmarks.loss import available_impls, build_cases

    args = bench_args()
    (case,) = build_cases(args)
    assert (case.scheme, case.rows, case.hidden_dim, case.catalogue, case.negatives, case.dtype) == (
        "shared", 51_200, 64, 1_000_000, 4096, "bf16")
    assert case.flops == 6 * 51_200 * 4096 * 64
    assert available_impls(None)[:3] == ["triton", "torch", "compile"]


def test_bench_lists_expand_to_cases_with_full_once():
    from study.benchmarks.loss import available_impls, build_cases

    args = bench_args("--scheme", "full,position,sequence", "--negatives", "511,2047", "--rows", "4000",
                      "--seq-len", "200", "--catalogue", "100000", "--dtype", "fp16")
    cases = build_cases(args)
    assert [(c.scheme, c.negatives) for c in cases] == [
        ("full", 100_000), ("position", 511), ("position", 2047), ("sequence", 511), ("sequence", 2047)]
    assert all(c.dtype == "fp16" and c.rows == 4000 for c in cases)
    assert available_impls("torch,cce") == ["torch", "cce"]


@pytest.mark.parametrize(("argv", "option"), [
    (("--scheme", "shared,banana"), "--scheme"),
    (("--negatives", "12,x"), "--negatives"),
    (("--negatives", "0"), "--negatives"),
    (("--negatives", "2000", "--catalogue", "1000"), "--negatives"),
    (("--scheme", "sequence", "--rows", "1000", "--seq-len", "300"), "--seq-len"),
    (("--rows", "0"), "--rows"),
])
def test_bench_bad_option_is_named(argv, option):
    from study.benchmarks.loss import build_cases

    with pytest.raises(ValueError, match=f"^{option}:"):
        build_cases(bench_args(*argv))


def test_bench_bad_impl_is_named():
    from study.benchmarks.loss import available_impls

    with pytest.raises(ValueError, match="^--impls:.*liger"):
        available_impls("torch,liger")


def test_bench_without_cuda_is_a_one_line_user_error(monkeypatch, tmp_path):
    from study.benchmarks import loss as bench_loss
    from study.cli import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "bench.json"
    with pytest.raises(UserError, match="CUDA") as error:
        bench_loss.run(bench_args("--out", str(out)))
    assert "\n" not in str(error.value)
    assert not out.exists()


def test_bench_table_row_shows_oom_and_numbers():
    from study.benchmarks.loss import Case, Measurement, table_row

    case = Case("position", 1024, 64, 5000, 511, 200, "bf16")
    oom = table_row(Measurement(case, "torch", status="OOM"))
    assert "OOM" in oom and "position" in oom
    row = table_row(Measurement(case, "triton", time_ms=1.234, peak_extra_bytes=2**29, tflops=12.5,
                                rel_diff_loss=3e-4, rel_diff_grad_hidden=2e-3, rel_diff_grad_items=5e-3,
                                compared_with="cce"))
    assert "1.23" in row and "0.500" in row and "12.5" in row and "3.0e-04" in row
    assert "5.0e-03" in row and "vs cce" in row
    as_json = Measurement(case, "triton", peak_extra_bytes=2**30).as_json()
    assert as_json["peak_extra_gib"] == 1.0 and as_json["scheme"] == "position"


def test_bench_module_entry_point_prints_one_line_and_exits_2(monkeypatch, capsys):
    from study.benchmarks import loss as bench_loss

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_loss.main(["--scheme", "shared"]) == 2
    assert bench_loss.main(["--scheme", "nope"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "CUDA" in lines[0] and "--scheme" in lines[1]


def test_bench_design_preset_covers_the_design_table():
    from study.benchmarks.loss import build_cases, case_impls, output_path

    args = bench_args("--preset", "design", "--out", "somewhere")
    cases = build_cases(args)
    assert len(cases) == 14 and all(c.catalogue == 1_000_000 and c.dtype == "bf16" for c in cases)
    by_key = {(c.scheme, c.hidden_dim, c.negatives): c for c in cases}
    assert by_key[("position", 256, 511)].rows == 65_536 and by_key[("shared", 64, 4096)].rows == 51_200
    assert case_impls(by_key[("position", 64, 2047)], args) == ["public", "triton", "torch", "published"]
    assert case_impls(by_key[("full", 256, 1_000_000)], args) == ["public", "triton", "cce", "cce-exact"]
    assert "compile" in case_impls(by_key[("sequence", 256, 16384)], args)
    assert all("public" in case_impls(c, args) and "triton" in case_impls(c, args) for c in cases)
    assert str(output_path(args)) == "somewhere/loss-bench.json"
    with pytest.raises(ValueError, match="^--out:"):
        output_path(bench_args("--preset", "design"))
    assert str(output_path(bench_args("--out", "x.json"))) == "x.json"


def test_bench_loads_the_published_kernel_under_its_own_name(tmp_path, monkeypatch):
    """The published package is also called cut_cross_entropy: it must not replace Apple's."""
    import sys
    import types

    from study.benchmarks.loss import load_published

    package = tmp_path / "cut_cross_entropy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "utils.py").write_text(
        "def _build_flat_valids(targets, ignore_index, shift):\n    return None\n")
    (package / "cce.py").write_text(
        "from cut_cross_entropy.utils import _build_flat_valids\n"
        "class CCEParams:\n    pass\n"
        "class LinearCrossEntropyFunction:\n    @staticmethod\n"
        "    def apply(*args):\n        return 'published'\n")
    apple = types.ModuleType("cut_cross_entropy")
    monkeypatch.setitem(sys.modules, "cut_cross_entropy", apple)
    published = load_published(tmp_path)
    assert published.apply() == "published" and published.build_flat_valids(None, -100, 0) is None
    assert sys.modules["cut_cross_entropy"] is apple
    assert "published_cce.cce" in sys.modules and "cut_cross_entropy.cce" not in sys.modules
    assert str(tmp_path) not in sys.path
    for name in [n for n in sys.modules if n.startswith("published_cce")]:
        monkeypatch.delitem(sys.modules, name)
    assert load_published(tmp_path / "missing") is None


def test_bench_summary_gives_public_over_bare_and_speed_ups():
    from study.benchmarks.loss import Case, Measurement, summary_lines

    case = Case("position", 51_200, 64, 1_000_000, 2047, 200, "bf16")
    lines = summary_lines([Measurement(case, "torch", time_ms=128.0),
                           Measurement(case, "triton", time_ms=16.0),
                           Measurement(case, "public", time_ms=16.8),
                           Measurement(case, "published", time_ms=32.0)])
    assert "public/bare 1.050" in lines[-1] and "vs torch 8.00x" in lines[-1]
    assert "vs published 2.00x" in lines[-1]
