"""Validate the analytic memory model (study/memory_model.py) against measured GPU memory.

    python3 benchmarks/memory_validation.py --out DIR [--quick] [--only NAME,...] [--timeout 900]

For each configuration (fused and PyTorch losses, d 64-256, K up to 16k, batch up to 1024, length
up to 512, catalogues up to 10^6 from `synthetic:` datasets), a short real trial runs through
`study.train.run_trial` (1 epoch, 5 steps) in its OWN subprocess, because memory is returned to
the driver only at process exit and each trial must start from an empty card. The subprocess writes
the trial record and the model's prediction; this driver collects them into

    DIR/memory_validation.csv    one row per configuration: predicted vs measured (torch max allocated,
                                 torch max reserved, NVML process peak), relative errors, status
    DIR/memory_validation.json   the same rows plus the card, versions and the summary
    DIR/summary.txt              median absolute relative error and worst under-prediction per measure

Relative error = (predicted - measured) / measured; negative is an under-prediction. The
done-criterion is checked on the headline peak (NVML's process memory; torch reserved + the
model's CUDA context where NVML can't see the process): median |error| <= 10% and no configuration
more than 10% below its measured peak. A configuration that fails (out of memory, crash, timeout)
is recorded with its status and error and left out of the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Catalogues: uniform popularity (alpha=0) so that nearly every item of the catalogue occurs and
# the trial's catalogue is close to the nominal size; few users keep full-catalogue evaluation short.
CATALOGUES = {
    "2k": "synthetic:users=3000,items=2000,mean_len=100,alpha=0.5,seed=1",
    "100k": "synthetic:users=3000,items=100000,mean_len=200,alpha=0,seed=2",
    # 3M interactions in long histories: ~95% of the items occur, and few users (1,100: enough for the
    # 1,024-sequence batch) keep the full-catalogue evaluation short (it dominated each trial's time).
    "1m": "synthetic:users=1100,items=1000000,mean_len=2800,alpha=0,seed=3",
}
COMMON: dict[str, Any] = {
    "epochs": 1, "max_steps_per_epoch": 5, "patience": 1, "progress": False, "device": "cuda",
}


def _case(name: str, catalogue: str, **settings: Any) -> dict[str, Any]:
    return {"name": name, "config": {**COMMON, "dataset": CATALOGUES[catalogue], **settings}}


def _neg(scope: str, k: int, impl: str, **settings: Any) -> dict[str, Any]:
    return {"loss": "ce-neg", "negative_scope": scope, "num_negatives": k, "loss_impl": impl, **settings}


CASES: list[dict[str, Any]] = [
    # catalogue 10^6
    _case("1m-position-triton-k2047", "1m", **_neg("position", 2047, "triton", batch_size=256, max_len=200)),
    _case("1m-position-torch-k511", "1m", **_neg("position", 511, "torch", batch_size=256, max_len=200)),
    _case("1m-drawn-triton-k4096", "1m", **_neg("drawn", 4096, "triton", batch_size=256, max_len=200)),
    _case("1m-drawn-triton-k16384", "1m", **_neg("drawn", 16384, "triton", batch_size=128, max_len=200)),
    _case("1m-batch-triton-k16384", "1m", **_neg("batch", 16384, "triton", batch_size=256, max_len=200)),
    _case("1m-batch-torch-k4096", "1m", **_neg("batch", 4096, "torch", batch_size=256, max_len=200)),
    _case("1m-batch-torch-k16384", "1m", **_neg("batch", 16384, "torch", batch_size=256, max_len=200)),
    _case("1m-sequence-triton-k1024", "1m", **_neg("sequence", 1024, "triton", batch_size=256, max_len=200)),
    _case("1m-sequence-torch-k1024", "1m", **_neg("sequence", 1024, "torch", batch_size=256, max_len=200)),
    _case("1m-full-triton-b64", "1m", loss="ce", loss_impl="triton", batch_size=64, max_len=200),
    _case("1m-position-triton-k511-d256", "1m",
          **_neg("position", 511, "triton", batch_size=256, max_len=256, hidden=256)),
    _case("1m-drawn-triton-k1024-d128-b1024", "1m",
          **_neg("drawn", 1024, "triton", batch_size=1024, max_len=100, hidden=128)),
    # catalogue 10^5
    _case("100k-full-torch-b32", "100k", loss="ce", loss_impl="torch", batch_size=32, max_len=200),
    _case("100k-full-triton-b256", "100k", loss="ce", loss_impl="triton", batch_size=256, max_len=200),
    _case("100k-position-triton-k1024-d128-b512", "100k",
          **_neg("position", 1024, "triton", batch_size=512, max_len=200, hidden=128)),
    _case("100k-position-torch-k256-d128", "100k",
          **_neg("position", 256, "torch", batch_size=256, max_len=200, hidden=128)),
    _case("100k-drawn-triton-k8192-l512", "100k",
          **_neg("drawn", 8192, "triton", batch_size=256, max_len=512)),
    _case("100k-batch-torch-k8192-b512", "100k", **_neg("batch", 8192, "torch", batch_size=512, max_len=200)),
    _case("100k-bce-position-k256", "100k", loss="bce", negative_scope="position", num_negatives=256,
          batch_size=256, max_len=200),
    _case("100k-gbce-batch-k1024", "100k", loss="gbce", negative_scope="batch", num_negatives=1024,
          batch_size=256, max_len=200),
    _case("100k-batch-triton-k4096-d256-4blocks", "100k",
          **_neg("batch", 4096, "triton", batch_size=256, max_len=200, hidden=256, blocks=4, heads=4)),
    _case("100k-drawn-triton-k2048-b1024", "100k",
          **_neg("drawn", 2048, "triton", batch_size=1024, max_len=200)),
    _case("100k-drawn-torch-k512", "100k", **_neg("drawn", 512, "torch", batch_size=128, max_len=200)),
    _case("100k-position-triton-k256-popularity-logq", "100k",
          **_neg("position", 256, "triton", batch_size=256, max_len=200, sampling="popularity",
                 logq_correction=True)),
    _case("100k-batch-torch-k2048-popularity-logq", "100k",
          **_neg("batch", 2048, "torch", batch_size=256, max_len=200, sampling="popularity",
                 logq_correction=True)),
    # catalogue 2*10^3
    _case("2k-full-torch-b256", "2k", loss="ce", loss_impl="torch", batch_size=256, max_len=200),
    _case("2k-full-triton-b1024", "2k", loss="ce", loss_impl="triton", batch_size=1024, max_len=200),
    _case("2k-position-triton-k512-b512-l512", "2k",
          **_neg("position", 512, "triton", batch_size=512, max_len=512)),
    _case("2k-position-torch-k128-d256-l512", "2k",
          **_neg("position", 128, "torch", batch_size=256, max_len=512, hidden=256)),
    _case("2k-bce-position-k1", "2k", loss="bce", negative_scope="position", num_negatives=1, batch_size=128,
          max_len=200),
    _case("2k-drawn-triton-k1024-d128-b1024-l512", "2k",
          **_neg("drawn", 1024, "triton", batch_size=1024, max_len=512, hidden=128)),
    _case("2k-sequence-torch-k512-nodropout", "2k",
          **_neg("sequence", 512, "torch", batch_size=512, max_len=200, dropout=0.0)),
    _case("2k-full-torch-fp32", "2k", loss="ce", loss_impl="torch", batch_size=128, max_len=200,
          precision="fp32"),
]
QUICK = [
    "2k-full-torch-b256", "2k-position-triton-k512-b512-l512", "2k-bce-position-k1",
    "100k-full-triton-b256", "100k-position-torch-k256-d128", "100k-drawn-triton-k2048-b1024",
    "1m-position-triton-k2047", "1m-batch-torch-k4096",
]
MEASURES = (
    ("torch_max_allocated", "predicted_torch_max_allocated"),
    ("torch_max_reserved", "predicted_torch_max_reserved"),
    ("process_peak", "predicted_peak_bytes"),
)
CRITERION_MEDIAN = 0.10
CRITERION_UNDER = -0.10


def run_worker(config_json: str, result_path: Path) -> int:
    """In the subprocess: one trial, then its record and the model's prediction as JSON."""
    from study.config import TrainConfig
    from study.memory_model import predict_peak_bytes
    from study.train import run_trial

    config = TrainConfig.from_dict(json.loads(config_json))
    started = time.perf_counter()
    record = run_trial(config)
    prediction = None
    if record.num_items is not None:
        prediction = predict_peak_bytes(config, record.num_items, num_users=record.num_users,
                                        gpu_total=record.memory.gpu_total)
    result = {
        "record": record.to_dict(),
        "seconds": time.perf_counter() - started,
        "prediction": None if prediction is None else {
            "total_bytes": prediction.total_bytes,
            "torch_max_allocated": prediction.torch_max_allocated,
            "torch_max_reserved": prediction.torch_max_reserved,
            "peak_phase": prediction.peak_phase,
            "parts": prediction.parts,
            "phases": prediction.phases,
        },
    }
    result_path.write_text(json.dumps(result, default=str))
    return 0


def run_case(case: dict[str, Any], out_dir: Path, timeout_s: float) -> dict[str, Any]:
    """One configuration in its own process; a row for the table whatever happens."""
    result_path = out_dir / "trials" / f"{case['name']}.json"
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(case["config"]),
               "--result", str(result_path)]
    row: dict[str, Any] = {"name": case["name"], **_setting_columns(case["config"])}
    started = time.perf_counter()
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=REPO,
                                  check=False)
    except subprocess.TimeoutExpired:
        row.update(status="timeout", error=f"no result within {timeout_s:.0f} s")
        return row
    row["seconds"] = round(time.perf_counter() - started, 1)
    (out_dir / "trials" / f"{case['name']}.log").write_text(finished.stdout + finished.stderr)
    if finished.returncode != 0 or not result_path.exists():
        tail = (finished.stderr or finished.stdout).strip().splitlines()[-1:] or ["(no output)"]
        row.update(status="crashed", error=f"exit {finished.returncode}: {tail[0]}")
        return row
    result = json.loads(result_path.read_text())
    record, prediction = result["record"], result["prediction"]
    memory = record["memory"]
    row.update(status=record["status"], error=record.get("error"), num_items=record.get("num_items"),
               num_users=record.get("num_users"), loss_impl_ran=record.get("loss_impl"))
    row["torch_max_allocated"] = memory.get("torch_max_allocated")
    row["torch_max_reserved"] = memory.get("torch_max_reserved")
    row["nvml_process_peak"] = memory.get("nvml_process_peak")
    if prediction is not None:
        row["predicted_torch_max_allocated"] = prediction["torch_max_allocated"]
        row["predicted_torch_max_reserved"] = prediction["torch_max_reserved"]
        row["predicted_peak_bytes"] = prediction["total_bytes"]
        row["predicted_peak_phase"] = prediction["peak_phase"]
        context = prediction["parts"].get("cuda_context", 0)
        # The headline: NVML's process memory, or torch reserved + the model's context without NVML.
        if row["nvml_process_peak"] is not None:
            row["process_peak"], row["process_peak_source"] = row["nvml_process_peak"], "nvml"
        elif row["torch_max_reserved"] is not None:
            row["process_peak"] = row["torch_max_reserved"] + context
            row["process_peak_source"] = "torch_reserved+context"
        for measured, predicted in MEASURES:
            if row.get(measured) and row.get(predicted) is not None:
                row[f"error_{measured}"] = (row[predicted] - row[measured]) / row[measured]
    return row


def _setting_columns(config: dict[str, Any]) -> dict[str, Any]:
    keys = ("loss", "loss_impl", "negative_scope", "num_negatives", "batch_size", "max_len", "hidden",
            "blocks", "sampling", "precision")
    return {key: config.get(key) for key in keys}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per measure: trials compared, median |relative error|, worst under-prediction; and the criterion."""
    summary: dict[str, Any] = {"trials": len(rows), "compared": 0, "measures": {}}
    for measured, _ in MEASURES:
        errors = [row[f"error_{measured}"] for row in rows
                  if row.get("status") == "ok" and row.get(f"error_{measured}") is not None]
        if not errors:
            continue
        summary["measures"][measured] = {
            "compared": len(errors),
            "median_abs_error": statistics.median(abs(e) for e in errors),
            "worst_under_prediction": min(errors),
            "worst_over_prediction": max(errors),
        }
    headline = summary["measures"].get("process_peak")
    if headline:
        summary["compared"] = headline["compared"]
        summary["criterion_met"] = (headline["median_abs_error"] <= CRITERION_MEDIAN
                                    and headline["worst_under_prediction"] >= CRITERION_UNDER)
    else:
        summary["criterion_met"] = None
    return summary


def environment() -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "host": platform.node()}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        env["gpu_name"], env["gpu_total"] = properties.name, int(properties.total_memory)
    env["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    return env


def format_table(rows: list[dict[str, Any]]) -> str:
    import pandas as pd

    from study.memory import format_bytes

    def gib(value: Any) -> str:
        return "-" if value is None or value != value else format_bytes(value)

    def pct(value: Any) -> str:
        return "-" if value is None or value != value else f"{100 * value:+.1f}%"

    table = pd.DataFrame([{
        "name": row["name"], "status": row.get("status"),
        "alloc meas": gib(row.get("torch_max_allocated")),
        "alloc pred": gib(row.get("predicted_torch_max_allocated")),
        "alloc err": pct(row.get("error_torch_max_allocated")),
        "reserved meas": gib(row.get("torch_max_reserved")),
        "reserved err": pct(row.get("error_torch_max_reserved")),
        "process meas": gib(row.get("process_peak")),
        "process pred": gib(row.get("predicted_peak_bytes")),
        "process err": pct(row.get("error_process_peak")),
        "phase": row.get("predicted_peak_phase", "-"),
    } for row in rows])
    return table.to_string(index=False)


def format_summary(summary: dict[str, Any], env: dict[str, Any]) -> str:
    lines = [f"card: {env.get('gpu_name')} ({env.get('gpu_total')} bytes); torch {env['torch']}, "
             f"triton {env.get('triton')}, CUDA {env.get('cuda')}, python {env['python']}"]
    for measure, values in summary["measures"].items():
        lines.append(f"{measure}: {values['compared']} trials, median |error| "
                     f"{100 * values['median_abs_error']:.1f}%, worst under-prediction "
                     f"{100 * values['worst_under_prediction']:+.1f}%, worst over-prediction "
                     f"{100 * values['worst_over_prediction']:+.1f}%")
    verdicts = {True: "MET", False: "NOT MET", None: "not evaluated (no successful trial)"}
    verdict = verdicts[summary["criterion_met"]]
    lines.append(f"criterion (process peak: median |error| <= 10%, never > 10% under): {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument("--quick", action="store_true",
                        help=f"only {len(QUICK)} representative configurations")
    parser.add_argument("--only", help="comma list of configuration names to run")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds per configuration (default 900)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="configurations run at once, each in its own process (default 1); process "
                             "memory is per process, so trials may share the card if it holds their sum")
    parser.add_argument("--list", action="store_true", help="list the configurations and exit")
    parser.add_argument("--predict-only", type=Path, metavar="CSV",
                        help="write the model's predictions for the configurations to CSV (no GPU needed; "
                             "commit it before measuring) and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return run_worker(args.worker, args.result)
    cases = CASES
    if args.quick:
        cases = [case for case in CASES if case["name"] in QUICK]
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(wanted) - {case["name"] for case in CASES})
        if unknown:
            parser.error(f"--only: unknown configuration(s): {', '.join(unknown)} (see --list)")
        cases = [case for case in CASES if case["name"] in wanted]
    if args.list:
        for case in cases:
            print(case["name"], json.dumps(case["config"]))
        return 0
    if args.predict_only is not None:
        write_predictions(cases, args.predict_only)
        return 0
    if args.out is None:
        parser.error("--out: required")
    import torch

    if not torch.cuda.is_available():
        print("memory_validation: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    if args.jobs < 1:
        parser.error("--jobs: must be at least 1")
    finished: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # threads only wait on the subprocesses
        futures = {pool.submit(run_case, case, args.out, args.timeout): case["name"] for case in cases}
        for future in as_completed(futures):
            row = future.result()
            finished[futures[future]] = row
            error = row.get("error_process_peak")
            detail = f"process error {100 * error:+.1f}%" if error is not None else (row.get("error") or "")
            print(f"[{len(finished)}/{len(cases)}] {futures[future]}: {row.get('status')} in "
                  f"{row.get('seconds', '-')} s; {detail}", flush=True)
            _write_outputs(args.out, [finished[c["name"]] for c in cases if c["name"] in finished], env)
    rows = [finished[case["name"]] for case in cases]
    summary = _write_outputs(args.out, rows, env)
    print()
    print(format_table(rows))
    print()
    print(format_summary(summary, env))
    return 0


def write_predictions(cases: list[dict[str, Any]], path: Path) -> None:
    """The model's predictions from the configurations and their datasets alone, before any measurement."""
    import pandas as pd

    from study.config import TrainConfig
    from study.data.registry import load_dataset
    from study.memory_model import predict_peak_bytes

    sizes: dict[tuple[str, int], tuple[int, int]] = {}
    rows = []
    for case in cases:
        config = TrainConfig.from_dict(case["config"])
        key = (config.dataset, config.kcore)
        if key not in sizes:
            interactions = load_dataset(config.dataset, kcore=config.kcore, progress=False)
            sizes[key] = (interactions.num_items, interactions.num_users)
        num_items, num_users = sizes[key]
        prediction = predict_peak_bytes(config, num_items, num_users=num_users, device="cuda")
        rows.append({"name": case["name"], "num_items": num_items, "num_users": num_users,
                     "predicted_peak_bytes": prediction.total_bytes,
                     "predicted_torch_max_allocated": prediction.torch_max_allocated,
                     "predicted_torch_max_reserved": prediction.torch_max_reserved,
                     "predicted_peak_phase": prediction.peak_phase})
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    print(f"wrote {len(rows)} predictions to {path}")


def _write_outputs(out_dir: Path, rows: list[dict[str, Any]], env: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    summary = summarise(rows)
    pd.DataFrame(rows).to_csv(out_dir / "memory_validation.csv", index=False)
    (out_dir / "memory_validation.json").write_text(
        json.dumps({"environment": env, "summary": summary, "rows": rows}, indent=1, default=str)
    )
    (out_dir / "summary.txt").write_text(format_summary(summary, env) + "\n")
    return summary


if __name__ == "__main__":
    sys.exit(main())
