"""Every rule of a trial's configuration is stated once (study/config.py) and holds at every entry point:
TrainConfig itself, `cce-study train`, `cce-study plan`, `cce-study sweep` (refused before any dataset is
loaded or Ray starts, with one line and exit code 2) and a sweep's Optuna worker."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from study import cli, config, sweep
from study.config import ConfigError, FieldError, TrainConfig, check_field, check_for_catalogue
from study.sweep import command as sweep_command
from study.sweep import driver as sweep_driver
from study.sweep import trial as sweep_trial

# Each rule between fields: (settings that break it, the field its error names, part of its message).
CROSS_FIELD_RULES: dict[str, tuple[dict[str, Any], str, str]] = {
    "hidden_divisible_by_heads": ({"hidden": 42, "heads": 4}, "heads", "hidden=42 is not divisible"),
    "no_logq_for_bce": ({"loss": "bce", "logq_correction": True}, "logq_correction", "'bce'"),
    "no_logq_for_gbce": ({"loss": "gbce", "logq_correction": True}, "logq_correction", "'gbce'"),
    "no_drawn_for_bce": ({"loss": "bce", "negative_scope": "drawn"}, "negative_scope", "'bce'"),
    "no_drawn_for_gbce": ({"loss": "gbce", "negative_scope": "drawn"}, "negative_scope", "'gbce'"),
    "drawn_is_uniform": ({"loss": "ce-neg", "negative_scope": "drawn", "sampling": "popularity"},
                         "sampling", "'popularity'"),
}
SYNTHETIC = "synthetic:users=30,items=40,mean_len=6,seed=1"


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CCE_STUDY_DEBUG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("rule", CROSS_FIELD_RULES)
def test_trainconfig_refuses_each_combination(rule: str) -> None:
    settings, field, fragment = CROSS_FIELD_RULES[rule]
    with pytest.raises(ConfigError, match=f"^{field}: .*{fragment}"):
        TrainConfig(**settings)
    with pytest.raises(ConfigError, match=f"^{field}: "):
        TrainConfig.from_dict(settings)
    # each setting alone is fine: the rule is about the combination
    for name, value in settings.items():
        TrainConfig(**{name: value})
        assert check_field(name, value) == value


@pytest.mark.parametrize("rule", CROSS_FIELD_RULES)
def test_a_sweep_spec_breaking_a_rule_is_refused_before_ray_starts(
        rule: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings, field, fragment = CROSS_FIELD_RULES[rule]
    *fixed, (axis, value) = settings.items()  # one setting as an axis, the others fixed in [trial]
    trial = "\n".join(f"{name} = {_toml(v)}" for name, v in fixed)
    spec = tmp_path / "spec.toml"
    spec.write_text(textwrap.dedent(f"""
        name = "rules"
        datasets = [{SYNTHETIC!r}]
        [trial]
        max_len = 6
        epochs = 1
        """) + trial + textwrap.dedent(f"""
        [axes]
        num_negatives = [4]
        batch_size = [8]
        max_len = [6]
        {axis} = [{_toml(value)}]
        """))

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the spec should be refused before this")

    monkeypatch.setattr(sweep_driver, "start_ray", must_not_run)
    monkeypatch.setattr(sweep_driver, "ray_session", must_not_run)
    monkeypatch.setattr(sweep_command, "plan_trials", must_not_run)  # loads the datasets
    db = tmp_path / "results.sqlite"
    for dry_run in (["--dry-run"], []):
        line = one_line_error(capsys, ["sweep", str(spec), "--db", str(db), *dry_run])
        assert "spec.toml: axes: the point " in line, line
        assert f"{axis}={value!r} is invalid: {field}: " in line, line
        assert fragment in line, line
    assert not db.exists()


@pytest.mark.parametrize("rule", CROSS_FIELD_RULES)
def test_train_refuses_each_combination_with_one_line(rule: str, capsys: pytest.CaptureFixture[str]) -> None:
    settings, field, fragment = CROSS_FIELD_RULES[rule]
    argv = ["train", "--dataset", SYNTHETIC, "--device", "cpu", "--epochs", "1", "--no-progress"]
    for name, value in settings.items():
        option = config.option_for(name)
        argv += [option.flag] if option.sets is not None else [option.flag, str(value)]
    line = one_line_error(capsys, argv)
    assert f"{field}: " in line and fragment in line, line


@pytest.mark.parametrize("rule", [rule for rule, (settings, _, _) in CROSS_FIELD_RULES.items()
                                  if "logq_correction" not in settings])  # plan has no --logq axis
def test_plan_skips_each_invalid_point_with_its_reason(rule: str, capsys: pytest.CaptureFixture[str]) -> None:
    settings, field, fragment = CROSS_FIELD_RULES[rule]
    argv = ["plan", "--budget", "40GiB", "--num-items", "1000", "--json"]
    for name, value in settings.items():
        argv += [config.option_for(name).flag, str(value)]
    assert cli.main(argv) == 1  # the one point is invalid: nothing fits
    out = capsys.readouterr().out
    assert f'"reason": "{field}: ' in out and fragment in out, out


def test_values_checked_alone_do_not_depend_on_other_fields(capsys: pytest.CaptureFixture[str]) -> None:
    # heads=5 does not divide the default hidden=64, but it is a valid value on its own
    assert check_field("heads", 5) == 5
    plan = ["plan", "--budget", "40GiB", "--num-items", "1000", "--heads", "5", "--hidden", "40"]
    assert cli.main(plan) == 0
    capsys.readouterr()
    with pytest.raises(FieldError) as error:
        check_field("heads", 0)
    assert (error.value.field, error.value.reason) == ("heads", "must be a positive integer, got 0")
    assert check_field("lr", 1) == 1.0 and isinstance(check_field("lr", 1), float)


def test_the_catalogue_rule_is_one_function_used_by_every_entry_point(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sampled = TrainConfig(dataset=SYNTHETIC, loss="ce-neg", num_negatives=41)
    with pytest.raises(ConfigError, match="^num_negatives: 41 exceeds the catalogue of 40 items$"):
        check_for_catalogue(sampled, 40)
    check_for_catalogue(sampled, 41)
    check_for_catalogue(sampled.replace(loss="ce"), 40)  # full CE samples nothing
    # the sweep driver's plan and the Optuna worker say the same
    planned = sweep.PlannedTrial(sweep.trial_id("s", sampled), sampled, num_items=40)
    assert planned.invalid_reason == f"num_negatives: 41 exceeds the catalogue of 40 items of {SYNTHETIC}; " \
                                     "not launched"

    def trial_function(*args: object, **kwargs: object) -> None:
        raise AssertionError("a trial over the catalogue must not be launched")

    monkeypatch.setattr(sweep_trial, "resolve_trial_function", lambda reference: trial_function)
    settings = sweep.TrialSettings("s", "any:function", card_bytes=None, planned={planned.trial_id: planned})
    record = sweep.execute_trial(sampled.to_dict(), settings)
    assert record.status == "failed" and record.error == planned.invalid_reason
    assert record.num_items == 40


def test_options_come_from_the_fields() -> None:
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert [option.field for option in config.OPTIONS] == fields
    flags = [option.flag for option in config.OPTIONS]
    assert len(set(flags)) == len(flags) and all(flag.startswith("--") for flag in flags)
    for option in config.OPTIONS:
        kind = config.field_type(option.field)
        assert (option.sets is not None) == (kind.base is bool)
        assert option.default == getattr(TrainConfig(), option.field)


@pytest.mark.parametrize(("hint", "text", "expected"), [
    (int, "12", 12), (float, "1e-3", 1e-3), (float | None, "none", None), (int | None, "3", 3),
    (config.LossName, "ce-neg", "ce-neg"), (str, "ml-1m", "ml-1m"),
])
def test_value_from_text(hint: Any, text: str, expected: Any) -> None:
    assert config.value_from_text(hint, text) == expected


@pytest.mark.parametrize(("hint", "value", "message"), [
    (int, "12", "must be an integer, got '12'"),  # typed sources (TOML) are not parsed from text
    (int, True, "must be an integer, got True"),
    (float, float("inf"), "must be a finite number, got inf"),
    (config.LossName, "xent", "'xent' is not one of ce, ce-neg, bce, gbce"),
    (bool, 1, "must be true or false, got 1"),
    (str, 3, "must be a string, got 3"),
])
def test_checked_value_refuses(hint: Any, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}$"):
        config.checked_value(hint, value)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)
