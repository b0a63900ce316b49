"""Local build sources -> the files to read, and every path passed over, with the reason.

``lmops.storage.list_files`` (``Path.rglob``, fine for our own stage directories) neither follows
directory symlinks nor says what it passed over, so a linked sub-corpus, a dangling link or a
directory it could not list would leave a build without a word. Here:

- directory symlinks are followed, once: a directory already listed (same device and inode) is not
  listed again and is named, as ``symlink_loop`` when the link points back to a directory above it,
  else ``duplicate_dir``; real directories are walked before linked ones, so a directory that is
  both in the tree and linked is named by its real path;
- a symlink that cannot be followed is ``dangling_symlink`` (no target) or ``symlink_loop`` (ELOOP);
- a directory that cannot be listed (permission denied, I/O error) is ``unlistable``;
- names starting with "." are not entered or read: ``hidden_dir`` is named (it may hold a whole
  corpus, e.g. ``.git/``), ``hidden_file`` is only counted (dot files are metadata: ``.DS_Store``,
  the sample corpus's ``.complete`` marker);
- sockets, FIFOs and devices are ``not_a_file`` (reading a FIFO would block the build).

A glob is walked the same way from its longest wildcard-free directory, entering only directories
its pattern can still match below (``*`` within one name, ``**`` any depth, as in ``glob``), so a
symlink loop under ``**`` is listed once instead of forty times.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from lmops.storage import Entry

WILDCARDS = "*?["


@dataclass(frozen=True)
class Passed:
    """A path the listing did not enter or read."""

    uri: str
    reason: str
    detail: str
    named: bool = True  # listed by name in the build report, not only counted


def list_local(source: str) -> tuple[list[Entry], list[Passed]]:
    """The files a local file, directory or glob names (sorted), and the paths passed over."""
    path = Path(source).expanduser()
    if any(c in source for c in WILDCARDS):
        parts = path.parts
        first = next(i for i, p in enumerate(parts) if any(c in p for c in WILDCARDS))
        base = Path(*parts[:first]) if first else Path(".")
        return _Walk(parts[first:]).run(base) if base.is_dir() else ([], [])
    if path.is_dir():
        return _Walk(None).run(path)
    if path.is_file():  # named on its own: read whatever its name
        return [Entry(str(path), path.stat().st_size)], []
    return [], []


def _matches(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Does the relative path ``parts`` match the glob ``pattern`` (components) in full?"""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(pattern[1:], parts[1:])


def _may_match_below(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Could ``parts`` or a path below it match ``pattern``? (Which directories a glob enters.)"""
    if not parts:
        return True
    if not pattern:
        return False
    if pattern[0] == "**":
        return True
    return fnmatch.fnmatchcase(parts[0], pattern[0]) and _may_match_below(pattern[1:], parts[1:])


class _Walk:
    def __init__(self, pattern: tuple[str, ...] | None):
        self.pattern = pattern  # None: everything below the root
        self.files: list[Entry] = []
        self.passed: list[Passed] = []
        self.listed: dict[tuple[int, int], Path] = {}  # (st_dev, st_ino) of each listed directory -> where
        self.links: list[tuple[Path, tuple[str, ...]]] = []  # directory symlinks, walked after the real tree

    def run(self, root: Path) -> tuple[list[Entry], list[Passed]]:
        self._tree(root, ())
        while self.links:
            self._tree(*self.links.pop(0))
        return sorted(self.files, key=lambda e: e.uri), self.passed

    def _pass(self, path: Path, reason: str, detail: str, named: bool = True) -> None:
        self.passed.append(Passed(str(path), reason, detail, named))

    def _wanted_dir(self, rel: tuple[str, ...]) -> bool:
        return self.pattern is None or _may_match_below(self.pattern, rel)

    def _wanted_file(self, rel: tuple[str, ...]) -> bool:
        return self.pattern is None or _matches(self.pattern, rel)

    def _tree(self, top: Path, top_rel: tuple[str, ...]) -> None:
        stack = [(top, top_rel)]  # explicit stack: a deep tree must not hit the recursion limit
        while stack:
            directory, rel = stack.pop()
            names = self._list(directory)
            subdirs = []
            for name in names:
                kind = self._entry(directory / name, rel + (name,))
                if kind == "dir":
                    subdirs.append((directory / name, rel + (name,)))
            stack.extend(reversed(subdirs))

    def _list(self, directory: Path) -> list[str]:
        """The sorted names in ``directory``, or none when it was listed before or cannot be."""
        try:
            st = os.stat(directory)
            with os.scandir(directory) as it:
                names = sorted(e.name for e in it)
        except OSError as e:
            self._pass(directory, "unlistable", f"cannot list the directory: {e.strerror or e}")
            return []
        key = (st.st_dev, st.st_ino)
        if key in self.listed:
            target, parent = os.path.realpath(directory), os.path.realpath(directory.parent)
            if parent == target or parent.startswith(target.rstrip(os.sep) + os.sep):
                self._pass(directory, "symlink_loop", f"links back to {target}, a directory above it")
            else:
                self._pass(directory, "duplicate_dir", f"the same directory as {self.listed[key]}, listed there")
            return []
        self.listed[key] = directory
        return names

    def _entry(self, path: Path, rel: tuple[str, ...]) -> str | None:
        """Record one directory entry; returns "dir" for a real directory to walk now."""
        if path.name.startswith("."):
            if path.is_dir() and self._wanted_dir(rel):
                self._pass(path, "hidden_dir", "hidden directory: not read (name starts with '.')")
            elif not path.is_dir() and self._wanted_file(rel):
                self._pass(path, "hidden_file", "hidden file: not read", named=False)
            return None
        try:
            st = os.stat(path)  # follows symlinks
        except OSError as e:
            if self._wanted_dir(rel):
                reason = "symlink_loop" if e.errno == errno.ELOOP else "dangling_symlink"
                target = f"symbolic link to {os.readlink(path)!r}: " if path.is_symlink() else ""
                self._pass(path, reason if path.is_symlink() else "unlistable", f"{target}{e.strerror or e}")
            return None
        if stat.S_ISDIR(st.st_mode):
            if not self._wanted_dir(rel):
                return None
            if path.is_symlink():
                self.links.append((path, rel))
                return None
            return "dir"
        if not self._wanted_file(rel):
            return None
        if stat.S_ISREG(st.st_mode):
            self.files.append(Entry(str(path), st.st_size))
        else:
            self._pass(path, "not_a_file", "a socket, FIFO or device: not read")
        return None
