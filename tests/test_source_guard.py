"""The guard against tfaug's source changing under a running process: on a copied tree, and
a real tiny run that stops before its stage and resumes when started again."""

from __future__ import annotations

import os
import shutil

import pytest
from tiny import prepare_tiny_cache, write_tiny_yaml

from tfaug import source_guard
from tfaug.cli import main
from tfaug.source_guard import SourceChangedError, SourceSnapshot, check_source_unchanged


@pytest.fixture()
def tree(tmp_path):
    """A copy of two tfaug modules in a package folder."""
    root = tmp_path / "pkg"
    (root / "training").mkdir(parents=True)
    shutil.copy(source_guard.PACKAGE_ROOT / "losses.py", root / "losses.py")
    shutil.copy(source_guard.PACKAGE_ROOT / "training" / "loop.py", root / "training" / "loop.py")
    return root


def test_a_snapshot_names_every_file_edited_added_or_removed(tree):
    snapshot = SourceSnapshot.take(tree)
    assert set(snapshot.stamps) == {"losses.py", "training/loop.py"}
    check_source_unchanged("a stage", snapshot)  # nothing changed: no error
    (tree / "__pycache__").mkdir()
    (tree / "__pycache__" / "losses.cpython-311.pyc").write_bytes(b"\0")  # not source
    (tree / "notes.txt").write_text("not source")
    assert snapshot.changed() == []

    loop = tree / "training" / "loop.py"
    stat = loop.stat()
    os.utime(loop, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same size, newer
    (tree / "losses.py").unlink()
    (tree / "new.py").write_text("x = 1\n")
    assert snapshot.changed() == ["losses.py", "new.py", "training/loop.py"]
    with pytest.raises(SourceChangedError, match="before stage 'segmenter'") as raised:
        check_source_unchanged("stage 'segmenter'", snapshot)
    assert "losses.py, new.py, training/loop.py" in str(raised.value)
    assert "Run the same command again" in str(raised.value)


def test_a_run_stops_before_its_stage_when_the_source_changed_and_resumes_after(
    tree, tmp_path, tmp_path_factory, monkeypatch, capsys
):
    base = tmp_path_factory.getbasetemp()
    prepare_tiny_cache(base)
    args = [
        "train", "--config", str(write_tiny_yaml(tmp_path / "tiny.yaml")), "--quiet",
        "--cache-dir", str(base / "tiny-cache"), "--runs-dir", str(tmp_path / "runs"),
        "--method", "none",
    ]  # fmt: skip
    # This process "started" with the copied tree, which then changes on disk.
    monkeypatch.setattr(source_guard, "AT_IMPORT", SourceSnapshot.take(tree))
    (tree / "losses.py").write_text("# edited\n")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "tfaug: error: before stage 'segmenter'" in err and "losses.py" in err
    assert "Traceback" not in err
    (run,) = (tmp_path / "runs").iterdir()
    assert not (run / "results.json").exists()
    assert not list(run.rglob("*.weights.h5"))  # stopped before anything was trained

    monkeypatch.setattr(source_guard, "AT_IMPORT", SourceSnapshot.take(tree))  # a new process
    assert main(args) == 0
    assert (run / "results.json").is_file()
