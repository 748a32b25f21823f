"""The semi-supervised benchmark's cross-variant summary (docs/results/phantom-ssl/summary.py),
run as a user runs it, on records folders written here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "results" / "phantom-ssl" / "summary.py"
CASES = ("case01", "case02", "case03", "case04", "case05", "case06")


METHOD_BASE = {"rdri": 0.5, "unimatch": 0.6}
VARIANT_BASE = {"wide": 0.0, "hard": 0.1, "odd": 0.2}
LAST_SHIFT, WIDE_SHIFT = -0.05, 0.02


def _dice(method: str, variant: str, draw: int, case: int) -> float:
    """A deterministic Dice per (method, variant, draw, volume), different for each."""
    keys = [list(METHOD_BASE).index(method), list(VARIANT_BASE).index(variant), draw, case]
    noise = np.random.default_rng(keys).uniform(-0.2, 0.2)
    return float(METHOD_BASE[method] + VARIANT_BASE[variant] + noise)


def _write(records: Path, variant: str, method: str, draw: int, tag: str = "") -> None:
    run = (
        records / variant / (f"phantom-nl1-{method}-split{draw}-seed0" + (f"-{tag}" if tag else ""))
    )
    run.mkdir(parents=True)

    def test(shift: float) -> list[dict]:
        return [
            {"case_id": c, "dice": {"RV": d, "Myo": d, "LV": d}, "mean_dice": d}
            for i, c in enumerate(CASES)
            for d in [_dice(method, variant, draw, i) + shift]
        ]

    content = {
        "dataset": "phantom",
        "method": method,
        "n_labeled": 1,
        "draw": draw,
        "seed": 0,
        "generator_mode": "joint",
        "test": test(0.0),
        "cpu_time_s": {"segmenter": 600.0},
        "stages": {"segmenter": {"name": "segmenter", "best_step": 50, "iterations": 100}},
        # the last step LAST_SHIFT below the chosen one, the wide choice WIDE_SHIFT above
        "checkpoints": {
            "last": {"step": 100, "test": test(LAST_SHIFT)},
            "best_wide": {"step": 75, "test": test(WIDE_SHIFT)},
        },
    }
    (run / "results.json").write_text(json.dumps(content))
    (run / "config.yaml").write_text(yaml.safe_dump({"method": method, "tag": tag}))


def _summary(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        encoding="utf-8",
        timeout=120,
        env=env,
    )


def _cells(output: str, first: str) -> list[str]:
    for line in output.splitlines():
        if line.startswith(f"| {first} |"):
            return [cell.strip() for cell in line.strip("|").split("|")][1:]
    raise AssertionError(f"no row {first!r} in:\n{output}")


def test_draws_that_are_not_the_first_ones_are_named(tmp_path):
    records = tmp_path / "records"
    _write(records, "odd", "unimatch", 0)
    for draw in (1, 2):  # an ablation run first on later draws
        _write(records, "wide", "unimatch", draw, tag="abl")
    _write(records, "odd", "unimatch", 1, tag="abl")
    done = _summary(str(records))
    assert done.returncode == 0, done.stderr

    def run_mean(variant, draw):
        return np.mean([_dice("unimatch", variant, draw, i) for i in range(len(CASES))])

    wide = {d: run_mean("wide", d) for d in (1, 2)}
    cells = _cells(done.stdout, "`unimatch [abl]`")
    named = f"draw 1: {wide[1]:.3f}, draw 2: {wide[2]:.3f}"
    assert cells[0] == f"{np.mean(list(wide.values())):.3f} ({named})"
    assert cells[1] == f"{run_mean('odd', 1):.3f} (draw 1)"
    assert _cells(done.stdout, "`unimatch`")[1] == f"{run_mean('odd', 0):.3f}"  # draw 0 alone


def test_summary_averages_draws_per_variant_and_pools_the_paired_test(tmp_path):
    records = tmp_path / "records"
    for variant, draws in (("odd", 1), ("hard", 2), ("wide", 3)):
        for draw in range(draws):
            _write(records, variant, "rdri", draw)
            _write(records, variant, "unimatch", draw, tag="lrdri")
    done = _summary(str(records), "--compare", "unimatch [lrdri],rdri")
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0]
    assert header.index("`wide`") < header.index("`hard`") < header.index("`odd`")

    def run_mean(method, variant, draw):
        return np.mean([_dice(method, variant, draw, i) for i in range(len(CASES))])

    wide = [run_mean("unimatch", "wide", d) for d in range(3)]
    cells = _cells(done.stdout, "`unimatch [lrdri]`")
    each = ", ".join(f"{v:.3f}" for v in wide)
    assert cells[0] == f"{np.mean(wide):.3f} ({each})"
    assert cells[2] == f"{run_mean('unimatch', 'odd', 0):.3f}"  # one draw: no brackets
    assert cells[3] == "10.0"  # CPU minutes

    row = (
        next(line for line in done.stdout.splitlines() if "− `rdri` | `hard`" in line)
        .strip("|")
        .split("|")
    )
    x = np.array([_dice("unimatch", "hard", d, i) for d in range(2) for i in range(len(CASES))])
    y = np.array([_dice("rdri", "hard", d, i) for d in range(2) for i in range(len(CASES))])
    assert row[2].strip() == "2"
    assert row[3].strip() == f"{np.mean(x - y):+.3f}"
    assert row[4].strip() == f"{stats.wilcoxon(x, y).pvalue:.2g}"
    ahead = sum(run_mean("unimatch", "hard", d) > run_mean("rdri", "hard", d) for d in range(2))
    assert row[5].strip() == f"{ahead} of 2"

    # Pooled over the variants, one pair per (variant, draw): 3 + 2 + 1 runs.
    pairs = [(v, d) for v, n in (("wide", 3), ("hard", 2), ("odd", 1)) for d in range(n)]
    a = np.array([run_mean("unimatch", v, d) for v, d in pairs])
    b = np.array([run_mean("rdri", v, d) for v, d in pairs])
    pooled_table = done.stdout.split("| run pairs (variants) |")[1]
    pooled = _cells(pooled_table, "`unimatch [lrdri]` − `rdri`")
    assert pooled[0] == "6 (wide, hard, odd)"
    assert pooled[1] == f"{np.mean(a - b):+.3f}"
    assert pooled[3] == f"{stats.wilcoxon(a, b).pvalue:.2g}"

    # The checkpoint rules: chosen / last step / chosen on the wide validation set.
    rules_table = done.stdout.split("chosen / last / wide |")[-1]
    hard = np.mean([run_mean("rdri", "hard", d) for d in range(2)])
    expected = [hard, hard + LAST_SHIFT, hard + WIDE_SHIFT]
    assert _cells(rules_table, "`rdri`")[1] == " / ".join(f"{v:.3f}" for v in expected)

    # An ASCII terminal gets escapes for "−" and "Δ", not a traceback.
    ascii_env = {k: v for k, v in os.environ.items() if k != "PYTHONIOENCODING"}
    ascii_env.update(LC_ALL="C", PYTHONUTF8="0")
    plain = _summary(str(records), env=ascii_env)
    assert plain.returncode == 0, plain.stderr
    assert "| A \\u2212 B |" in plain.stdout


def test_summary_names_the_folder_when_it_holds_no_records(tmp_path):
    (tmp_path / "records" / "wide").mkdir(parents=True)
    done = _summary(str(tmp_path / "records"))
    assert done.returncode != 0
    assert str(tmp_path / "records") in done.stderr and "tfaug records" in done.stderr
