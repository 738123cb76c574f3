"""The adapter contract (ovbench/contract.py): every registered method keeps it at its tiny
scale, and `ovbench check-adapter` names the one broken promise of each broken adapter
(tests/broken_adapters.py) with exit status 1."""

from __future__ import annotations

import pytest

from cli_process import TRAINABLE, ovbench
from ovbench import registry
from ovbench.contract import CHECK_NAMES, TRAINING_CHECKS, CheckResult, run_contract
from ovbench.interface import OpenVocabSegmenter


def render(results: list[CheckResult]) -> str:
    width = max(len(r.name) for r in results)
    return "\n".join(f"{r.name:<{width}}  {r.status:<4}  {r.seconds:5.1f}s  {r.detail}" for r in results)


def table_rows(stdout: str) -> dict[str, tuple[str, str]]:
    """check -> (status, detail) from the rich table `check-adapter` prints (a detail that
    wraps inside its cell continues on lines whose check cell is empty)."""
    rows: dict[str, list[str]] = {}
    last = None
    for line in stdout.splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.strip("│").split("│")]
        if len(cells) != 3:
            continue
        if cells[0]:
            last = cells[0]
            rows[last] = [cells[1], cells[2]]
        elif last is not None:
            rows[last][1] = f"{rows[last][1]} {cells[2]}".strip()
    return {name: (status, detail) for name, (status, detail) in rows.items()}


def default_scale(name: str) -> str | None:
    return "tiny" if "tiny" in registry.method_scales(name) else None


def check_adapter(home, *args: str) -> tuple[int, dict[str, tuple[str, str]], str]:
    """`ovbench check-adapter ARGS` through the installed executable: (exit status, table
    rows, stdout)."""
    proc = ovbench(home, "check-adapter", *args)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc.returncode, table_rows(proc.stdout), proc.stdout


@pytest.mark.parametrize("name", registry.method_names())
def test_registered_method_keeps_the_contract(name, isolated_home):
    training_free = registry.adapter_class(registry.resolve_method(name).config.adapter).loss is OpenVocabSegmenter.loss
    if name == "gsnet":
        # gsnet goes through the executable, as a user runs it: `ovbench check-adapter gsnet`
        # (default scale tiny) exits 0 and prints the table (the same checks as in process)
        code, rows, stdout = check_adapter(isolated_home, "gsnet")
        assert code == 0, stdout
        assert "gsnet — adapter contract (tiny scale)" in stdout and "OK: 10 passed, 0 failed, 0 skipped" in stdout, stdout
        results = [CheckResult(check, status, detail) for check, (status, detail) in rows.items()]
    else:
        results = run_contract(name, scale=default_scale(name))
    table = render(results)
    assert [r.name for r in results] == list(CHECK_NAMES), table
    assert all(r.status in ("pass", "fail", "skip") and "\n" not in r.detail for r in results), table
    assert not [r.name for r in results if r.failed], f"{name} breaks the adapter contract:\n{table}"
    by_name = {r.name: r for r in results}
    assert by_name["builds"].status == "pass" and by_name["predict shape"].status == "pass", table
    for check in TRAINING_CHECKS:
        expected = ("skip", "training-free") if training_free else ("pass",)
        assert (by_name[check].status, by_name[check].detail)[: len(expected)] == expected, table


def test_tests_trainable_adapter_keeps_the_contract():
    results = run_contract(TRAINABLE)
    table = render(results)
    assert [(r.name, r.status) for r in results] == [(name, "pass") for name in CHECK_NAMES[:-1]] + [("official layout", "skip")], table
    assert results[-1].detail == "no official layout"


def test_unbuildable_method_fails_builds_and_skips_the_rest():
    results = run_contract(TRAINABLE, overrides=["model.width=3"])  # GroupNorm(4, 3) cannot be built
    assert results[0].name == "builds" and results[0].status == "fail", render(results)
    assert "\n" not in results[0].detail and results[0].detail
    assert [(r.status, r.detail) for r in results[1:]] == [("skip", "not built")] * (len(CHECK_NAMES) - 1)


IN_PROCESS_BROKEN = [
    ("DeadParameterSegmenter", "gradients", "no gradient reaches 2 parameter(s) of the optimiser groups: unused_head.weight, unused_head.bias"),
    ("FrozenInGroupsSegmenter", "optimiser groups",
     "2 frozen parameter(s) (requires_grad=False) in the groups: text_projection.weight, text_projection.bias"),
    ("BatchNormalisedSegmenter", "batch independence", "image 0 predicted alone differs from image 0 of a batch of 2"),
]


@pytest.mark.parametrize(("adapter", "failing", "fragment"), IN_PROCESS_BROKEN, ids=[b[0] for b in IN_PROCESS_BROKEN])
def test_contract_names_the_broken_row(adapter, failing, fragment):
    results = run_contract(TRAINABLE, overrides={"adapter": f"broken_adapters:{adapter}"})
    table = render(results)
    assert [r.name for r in results if r.failed] == [failing], table
    assert fragment in next(r.detail for r in results if r.failed), table


BROKEN = [
    ("HalfResolutionSegmenter", "predict shape", ["T=1: scores (2, 1, 32, 32)", "expected (2, 1, 64, 64)"]),
    ("SortedVocabularySegmenter", "vocabulary order", ["did not follow the classes when the vocabulary was permuted"]),
    ("ForgottenParameterSegmenter", "optimiser groups", ["1 trainable parameter(s) in no optimiser group: score_bias"]),
]


@pytest.mark.parametrize(("adapter", "failing", "fragments"), BROKEN, ids=[b[0] for b in BROKEN])
def test_check_adapter_names_the_broken_promise(isolated_home, adapter, failing, fragments):
    code, rows, stdout = check_adapter(isolated_home, TRAINABLE, f"adapter=broken_adapters:{adapter}")
    assert code == 1, stdout
    assert list(rows) == list(CHECK_NAMES), stdout
    assert [name for name, (status, _) in rows.items() if status == "fail"] == [failing], stdout
    detail = rows[failing][1]
    for fragment in fragments:
        assert fragment in detail, (fragment, detail)
    assert f"FAILED ({failing}): 8 passed, 1 failed, 1 skipped" in stdout, stdout


def test_check_adapter_unknown_method_is_one_error_line(capsys):
    from ovbench.cli import main

    assert main(["check-adapter", "gsnett"]) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: unknown method 'gsnett'"), captured.err
    assert "did you mean 'gsnet'" in lines[0] and captured.out == ""
