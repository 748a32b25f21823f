"""Files written so that a kill never leaves a torn one: atomic writes and JSON lines.

Every file a run, a cache or a search writes goes through a temporary sibling (named per
process, so concurrent writers never share one) and an atomic rename: a reader sees the
old content or the new, never a part. No TensorFlow here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it onto ``path`` on success.

    Args:
        path: the final file.
        suffix: appended to the temporary name, for writers that insist on an ending
            (Keras weights need ``.weights.h5``).

    The parent folder is created if missing. On an exception the temporary file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, content: bytes) -> None:
    """Write ``content`` to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(content)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, content: Any) -> None:
    """Write ``content`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(content, indent=2, sort_keys=False))


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSON-lines file (``[]`` if absent); a torn last line (a kill mid-write)
    is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def write_jsonl_atomic(path: str | Path, rows: list[dict]) -> None:
    """Replace a JSON-lines file by ``rows`` atomically."""
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one JSON-serialisable row to a JSON-lines file and flush it to disk."""
    with Path(path).open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(row) + "\n")
