"""A sample corpus of real English prose made offline from Python's own standard library.

Three kinds of text, read with ``ast`` or line scanning (no stdlib module is imported): docstrings
of modules, classes and functions outside the tests; block comments (consecutive ``#`` lines); and the
language reference topics that ``pydoc_data/topics.py`` ships. The walk is sorted and the records
are written in a fixed order, so a given Python version always produces the same bytes.
The corpus keeps the stdlib's natural duplicates (copied docstrings, license headers), which gives
the build stage's dedup real work.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import sys
import sysconfig
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

SAMPLE_CORPUS = Path(".state/sample-corpus")
"""Where the presets' default source points (relative: the repository root of a checkout)."""
MARKER = ".complete"  # a dot file: lmops.storage.list_files ignores it, so it never becomes a source
FILE_TARGET_BYTES = 2_000_000
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}
TEST_DIRS = {"test", "tests", "idle_test"}
"""Docstrings are not taken from tests: parsing them is most of the cost and their docstrings are terse;
their comment blocks (found without parsing) are kept."""
MIN_COMMENT_CHARS = 80  # shorter comment blocks are mostly "# XXX" and "# noqa", not prose


def ensure_sample_corpus(sources: list[str]) -> None:
    """The presets' default source is the sample corpus: make it (offline, deterministic) on first use."""
    if any(Path(s) == SAMPLE_CORPUS for s in sources):
        make_sample_corpus(SAMPLE_CORPUS)


def make_sample_corpus(dest: str | Path, *, stdlib: str | Path | None = None) -> Path:
    """Write the corpus as ``<kind>-NN.jsonl`` files (``text``, ``source``) under dest; reuse a finished one.

    ``stdlib``: the library tree to read (default: this interpreter's standard library; tests pass a
    small copy). A dest with the completion marker is returned as it is.
    """
    dest = Path(dest)
    if (dest / MARKER).is_file():
        return dest
    root = Path(stdlib) if stdlib is not None else Path(sysconfig.get_paths()["stdlib"])
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        written = {}
        for kind, records in (("docstrings", docstrings(root)), ("comments", comment_blocks(root)),
                              ("reference", reference_topics(root))):
            written.update(_write_jsonl_files(tmp, kind, records))
        (tmp / MARKER).write_text(json.dumps({"python": sys.version.split()[0], "stdlib": str(root),
                                              "files": written}, indent=1, sort_keys=True) + "\n")
        if dest.exists():  # an unfinished earlier attempt (no marker): replace it
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def stdlib_files(root: Path, skip: set[str] = frozenset()) -> Iterator[tuple[str, bytes]]:
    """(path relative to root, bytes) of every stdlib .py file outside installed packages and ``skip`` dirs."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in SKIP_DIRS and d not in skip and not d.startswith("config-"))
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = Path(dirpath) / name
                yield path.relative_to(root).as_posix(), path.read_bytes()


def _parse(source: bytes) -> ast.Module | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # old escape sequences in a few modules
        try:
            return ast.parse(source)
        except (SyntaxError, ValueError):
            return None  # e.g. lib2to3 fixtures in Python 2 syntax


def docstrings(root: Path) -> Iterator[dict]:
    """One record per docstring, sourced ``<file>:<qualified name>``."""
    for rel, source in stdlib_files(root, skip=TEST_DIRS):
        tree = _parse(source)
        if tree is not None:
            for qualname, doc in _docstrings_of(tree, ""):
                yield {"text": doc, "source": f"{rel}:{qualname or '<module>'}"}


_DEFS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings_of(node: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
    """(qualified name, docstring) of the node and every definition below it, in source order."""
    if isinstance(node, (ast.Module, *_DEFS)):
        doc = ast.get_docstring(node, clean=True)
        if doc and doc.strip():
            yield prefix, doc
    for child in ast.iter_child_nodes(node):
        if isinstance(child, _DEFS):
            yield from _docstrings_of(child, f"{prefix}.{child.name}" if prefix else child.name)
        elif isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
            yield from _docstrings_of(child, prefix)  # defs inside if/try/with keep the outer name


def comment_blocks(root: Path) -> Iterator[dict]:
    """Runs of consecutive full-line ``#`` comments, sourced ``<file>:<first line>``."""
    for rel, source in stdlib_files(root):
        lines = source.decode("utf-8", "replace").split("\n")
        block: list[str] = []
        start = 0
        for lineno, line in enumerate([*lines, ""], 1):
            stripped = line.strip()
            if stripped.startswith("#") and not stripped.startswith(("#!", "# -*-")):
                text = stripped.lstrip("#").strip()
                if any(c.isalpha() for c in text) or not block:  # skip "#####" rulers
                    start = start or lineno
                    block.append(text)
                continue
            if block:
                prose = "\n".join(block).strip()
                if len(prose) >= MIN_COMMENT_CHARS:
                    yield {"text": prose, "source": f"{rel}:{start}"}
                block, start = [], 0


def reference_topics(root: Path) -> Iterator[dict]:
    """The language reference pages bundled for pydoc's help(): a dict of topic -> text."""
    path = root / "pydoc_data" / "topics.py"
    tree = _parse(path.read_bytes()) if path.is_file() else None
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                    yield {"text": value.value, "source": f"pydoc_data/topics.py:{key.value}"}


def _write_jsonl_files(dest: Path, kind: str, records: Iterator[dict]) -> dict[str, int]:
    """Records into ``<kind>-NN.jsonl`` files of about FILE_TARGET_BYTES each; returns name -> bytes."""
    written: dict[str, int] = {}
    buf: list[bytes] = []
    size = 0

    def flush() -> None:
        name = f"{kind}-{len(written):02d}.jsonl"
        (dest / name).write_bytes(b"".join(buf))
        written[name] = size

    for rec in records:
        line = (json.dumps(rec, ensure_ascii=False) + "\n").encode()
        buf.append(line)
        size += len(line)
        if size >= FILE_TARGET_BYTES:
            flush()
            buf, size = [], 0
    if buf:
        flush()
    return written
