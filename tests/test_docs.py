"""The README and docs/ name only files that exist, the README's test command is CI's, and
docs/switches.md matches the config."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from tfaug.config import READ_BY_FINAL, READ_BY_RANDOM, Config

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
TOP_FOLDERS = ("tfaug", "docs", "configs", "bench", "train", "export", "tests", ".ci")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FOLDERS = "|".join(re.escape(folder) for folder in TOP_FOLDERS)
CODE_PATH = re.compile(rf"`((?:{FOLDERS})/[^`\s]*)`")


def named_paths(document: Path) -> list[tuple[str, Path]]:
    """``(as written, resolved path)`` of every relative link and every repository path in
    backticks; templates (``<run>``, ``*``, ``{…}``) and web links are left out."""
    text = document.read_text(encoding="utf-8")
    found = []
    for target in LINK.findall(text):
        target = target.split("#")[0]
        if target and not re.match(r"[a-z]+:", target):
            found.append((target, (document.parent / target).resolve()))
    for written in CODE_PATH.findall(text):
        if not re.search(r"[<>*{}]|\.\.\.|…", written):
            found.append((written, (ROOT / written.split(":")[0]).resolve()))
    return found


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_file_exists(document):
    missing = [written for written, path in named_paths(document) if not path.exists()]
    assert missing == []


def test_the_readme_starts_with_two_commands_the_second_of_which_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", readme, re.DOTALL)
    assert first_block.start() == readme.index("```")  # nothing but the title before it
    commands = first_block.group(1).strip().splitlines()
    assert len(commands) == 2
    assert "train/run.py --dataset phantom" in commands[0]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert commands[1] in ci


def test_the_check_sees_a_missing_file(tmp_path):
    document = tmp_path / "page.md"
    document.write_text("See [there](gone.md) and `tfaug/nowhere.py`.", encoding="utf-8")
    assert [written for written, path in named_paths(document) if not path.exists()] == [
        "gone.md",
        "tfaug/nowhere.py",
    ]


def config_switches() -> dict[str, dataclasses.Field]:
    """Every config field marked as a switch beyond the paper, by ``section.key``."""
    config = Config()
    return {
        f"{section.name}.{item.name}": item
        for section in dataclasses.fields(config)
        if dataclasses.is_dataclass(getattr(config, section.name))
        for item in dataclasses.fields(getattr(config, section.name))
        if item.metadata.get("switch")
    }


def switch_table() -> dict[str, list[str]]:
    """The rows of docs/switches.md's table: key → its cells."""
    rows = {}
    for line in (ROOT / "docs" / "switches.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) > 2:
            rows[cells[0].strip("`")] = cells
    return rows


def test_switches_md_lists_exactly_the_configs_switches():
    assert sorted(switch_table()) == sorted(config_switches())


def test_switches_md_states_who_reads_each_switch():
    """The 'shared generators' column says whether the generator stages read the switch, as
    the field's metadata does (which decides what runs share, tfaug/runs/shared.py)."""
    words = {None: "yes", READ_BY_FINAL: "no", READ_BY_RANDOM: "with random_before_generators"}
    for key, field in config_switches().items():
        assert switch_table()[key][2] == words[field.metadata["read_by"]], key


def test_switches_md_gives_each_switchs_default():
    """The 'paper (default)' column holds the field's default (the paper's setting)."""
    config = Config()
    for key, cells in switch_table().items():
        section, name = key.split(".")
        written = yaml.safe_load(re.match(r"`([^`]*)`", cells[1]).group(1))
        assert written == getattr(getattr(config, section), name), key
