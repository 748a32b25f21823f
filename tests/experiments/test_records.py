"""Copying the records of finished runs: what is copied, and what is never overwritten."""

from __future__ import annotations

import json
from pathlib import Path

from tfaug.cli import main
from tfaug.experiments.records import copy_records, record_files


def _finished_run(runs: Path, name: str, dice: float = 0.5) -> Path:
    """A finished run directory: config, results, a stage of its own and a linked shared
    stage (as gdgi's generator stages are), weights and TensorBoard files."""
    run = runs / name
    (run / "checkpoints" / "segmenter").mkdir(parents=True)
    (run / "config.yaml").write_text("method: gdgi\n")
    (run / "checkpoints" / "segmenter" / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "checkpoints" / "segmenter" / "best.weights.h5").write_bytes(b"\0" * 64)
    shared = runs / "phantom-nl1-generators-split0-seed0" / "checkpoints" / "gv"
    shared.mkdir(parents=True, exist_ok=True)
    (shared / "metrics.jsonl").write_text('{"step": 2}\n')
    (shared / "done.json").write_text('{"iterations": 2}')
    (run / "checkpoints" / "gv").symlink_to(shared, target_is_directory=True)
    (run / "tb").mkdir()
    (run / "tb" / "events").write_bytes(b"\1")
    (run / "results.json").write_text(json.dumps({"test": [{"mean_dice": dice}]}))
    return run


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_record_holds_what_reports_read_through_links_and_no_weights(tmp_path):
    run = _finished_run(tmp_path / "runs", "phantom-nl1-gdgi-split0-seed0")
    unfinished = tmp_path / "runs" / "phantom-nl1-aff-split0-seed0"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("method: aff\n")

    outcome = copy_records(tmp_path / "runs", tmp_path / "records")

    assert outcome.copied == [run.name]  # neither the unfinished run nor the generator folder
    copied = _tree(tmp_path / "records")
    assert copied == {
        f"{run.name}/{relative}": (run / relative).read_bytes()
        for relative in (
            "config.yaml",
            "checkpoints/gv/done.json",
            "checkpoints/gv/metrics.jsonl",
            "checkpoints/segmenter/metrics.jsonl",
            "results.json",
        )
    }
    assert not (tmp_path / "records" / run.name / "checkpoints" / "gv").is_symlink()
    assert record_files(tmp_path / "records" / run.name) == record_files(run)


def test_nothing_is_overwritten_and_a_second_copy_changes_nothing(tmp_path):
    runs, records = tmp_path / "runs", tmp_path / "records"
    _finished_run(runs, "same")
    _finished_run(runs, "other", dice=0.5)
    _finished_run(runs, "busy")
    _finished_run(records, "other", dice=0.9)  # a finished run with other results
    (records / "busy").mkdir()
    (records / "busy" / "config.yaml").write_text("unfinished\n")
    assert copy_records(runs, records).copied == ["same"]
    before = _tree(records)

    outcome = copy_records(runs, records)

    assert (outcome.copied, outcome.present) == ([], ["same"])
    assert [name for name, _ in outcome.conflicts] == ["busy", "other"]
    assert "unfinished" in outcome.conflicts[0][1] and "other results" in outcome.conflicts[1][1]
    assert _tree(records) == before


def test_an_interrupted_copy_leaves_no_run_and_the_next_copy_completes_it(tmp_path):
    runs, records = tmp_path / "runs", tmp_path / "records"
    run = _finished_run(runs, "phantom-nl1-rdri-split0-seed0")
    partial = records / ".partial" / run.name
    partial.mkdir(parents=True)
    (partial / "config.yaml").write_text("torn")  # what a kill mid-copy leaves
    assert list(records.glob("*/results.json")) == []

    assert copy_records(runs, records).copied == [run.name]
    assert (records / run.name / "config.yaml").read_bytes() == (run / "config.yaml").read_bytes()


def test_the_command_reports_each_run_and_exits_1_on_conflicts_2_on_a_missing_folder(
    tmp_path, capsys
):
    runs, records = tmp_path / "runs", tmp_path / "records"
    _finished_run(runs, "a")
    assert main(["records", str(runs), str(records)]) == 0
    assert "a: copied" in capsys.readouterr().out
    (records / "a" / "results.json").write_text("{}")
    assert main(["records", str(runs), str(records)]) == 1
    assert "a: not copied" in capsys.readouterr().err
    assert main(["records", str(tmp_path / "nowhere"), str(records)]) == 2
    error = capsys.readouterr().err
    assert "nowhere: no such runs folder" in error and "--runs-dir" in error


def test_a_run_without_a_config_is_copied_without_one(tmp_path):
    run = _finished_run(tmp_path / "runs", "r")
    (run / "config.yaml").unlink()  # runs written before configs were kept
    assert copy_records(tmp_path / "runs", tmp_path / "records").copied == ["r"]
    assert not (tmp_path / "records" / "r" / "config.yaml").exists()
    assert (tmp_path / "records" / "r" / "results.json").is_file()
