"""Where every file and document of a build went: the counts and the problem report of its manifest.

Nothing may be skipped or dropped without passing through a ``Tally``; ``Tally.counts()`` then
proves ``kept + sum(dropped) == read`` before anything is published.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

REPORT_LIMIT = 200
"""Problems listed one by one in the manifest; beyond that only the per-file counts grow."""
PER_FILE_LIMIT = 1000
"""Files with per-file problem counts in the manifest; beyond that only the totals grow."""


@dataclass
class Tally:
    files_seen: int = 0
    files_read: int = 0
    files_skipped: Counter = field(default_factory=Counter)
    paths_skipped: Counter = field(default_factory=Counter)  # not files: never part of seen = read + skipped
    input_bytes: int = 0
    docs_read: int = 0
    docs_dropped: Counter = field(default_factory=Counter)
    utf8_replaced_files: set[str] = field(default_factory=set)
    utf8_replaced_sequences: int = 0
    report: list[dict[str, Any]] = field(default_factory=list)
    report_omitted: int = 0
    per_file: dict[str, Counter] = field(default_factory=dict)
    per_file_omitted: int = 0
    problem_calls: Counter = field(default_factory=Counter)  # per uri: what merge() needs to redo the limits

    # ------------------------------------------------------------ recording
    def problem(self, uri: str, reason: str, *, line: int | None = None, detail: str | None = None,
                n: int = 1) -> None:
        """Report a problem at file[:line]: listed (up to REPORT_LIMIT) and counted per file."""
        self.problem_calls[uri] += 1
        if len(self.report) < REPORT_LIMIT:
            item: dict[str, Any] = {"file": uri if line is None else f"{uri}:{line}", "reason": reason}
            if detail:
                item["detail"] = detail[:300]
            if n != 1:
                item["count"] = n
            self.report.append(item)
        else:
            self.report_omitted += 1
        if uri in self.per_file or len(self.per_file) < PER_FILE_LIMIT:
            self.per_file.setdefault(uri, Counter())[reason] += n
        else:
            self.per_file_omitted += 1

    def skip_file(self, uri: str, reason: str, detail: str | None = None) -> None:
        """A listed file none of whose content reaches the documents (binary, empty, unreadable...)."""
        self.files_skipped[reason] += 1
        self.problem(uri, reason, detail=detail)

    def skip_path(self, uri: str, reason: str, detail: str, named: bool = True) -> None:
        """A path the listing passed over (a link not followed, a hidden or unlistable directory)."""
        self.paths_skipped[reason] += 1
        if named:
            self.problem(uri, reason, detail=detail)

    def drop_record(self, uri: str, reason: str, line: int | None = None, detail: str | None = None) -> None:
        """A source record that was read but could not become a document (bad JSON, missing field...)."""
        self.docs_dropped[reason] += 1
        self.problem(uri, reason, line=line, detail=detail)

    def drop(self, reason: str, n: int = 1) -> None:
        """Documents dropped by design (filters, dedup): counted, not reported as problems."""
        if n:
            self.docs_dropped[reason] += n

    def replaced_utf8(self, uri: str, sequences: int, line: int | None = None) -> None:
        """Invalid UTF-8 kept as U+FFFD (invalid_utf8: replace): counted per file and reported."""
        self.utf8_replaced_files.add(uri)
        self.utf8_replaced_sequences += sequences
        self.problem(uri, "invalid_utf8_replaced", line=line, n=sequences)

    def merge(self, other: "Tally") -> None:
        """Add the tally of one file read after this one's files (engine: ray tallies each file apart, then merges
        them in file order): the result equals one tally that had recorded them in turn, limits included."""
        self.files_seen += other.files_seen
        self.files_read += other.files_read
        self.files_skipped.update(other.files_skipped)
        self.paths_skipped.update(other.paths_skipped)
        self.input_bytes += other.input_bytes
        self.docs_read += other.docs_read
        self.docs_dropped.update(other.docs_dropped)
        self.utf8_replaced_files |= other.utf8_replaced_files
        self.utf8_replaced_sequences += other.utf8_replaced_sequences
        room = max(0, REPORT_LIMIT - len(self.report))
        self.report.extend(other.report[:room])
        self.report_omitted += other.report_omitted + len(other.report[room:])
        # each file's problems come in one run, so a file new here enters per_file iff there is room for it
        for uri, calls in other.problem_calls.items():
            self.problem_calls[uri] += calls
            if uri in self.per_file or len(self.per_file) < PER_FILE_LIMIT:
                self.per_file.setdefault(uri, Counter()).update(other.per_file.get(uri, {}))
            else:
                self.per_file_omitted += calls

    # ------------------------------------------------------------ the manifest's view
    def counts(self, kept: int) -> dict[str, Any]:
        dropped = sum(self.docs_dropped.values())
        if kept + dropped != self.docs_read:
            raise AssertionError(
                f"document accounting is off: kept {kept} + dropped {dropped} != read {self.docs_read}"
                f" ({dict(self.docs_dropped)})"
            )
        skipped = sum(self.files_skipped.values())
        if self.files_read + skipped != self.files_seen:
            raise AssertionError(
                f"file accounting is off: read {self.files_read} + skipped {skipped} != seen {self.files_seen}"
            )
        return {
            "files": {
                "seen": self.files_seen,
                "read": self.files_read,
                "skipped": dict(sorted(self.files_skipped.items())),
                "paths_skipped": dict(sorted(self.paths_skipped.items())),
                "bytes_read": self.input_bytes,
                "invalid_utf8_replaced": {"files": len(self.utf8_replaced_files),
                                          "sequences": self.utf8_replaced_sequences},
            },
            "documents": {"read": self.docs_read, "kept": kept, "dropped": dict(sorted(self.docs_dropped.items()))},
            "report": self.report,
            "report_omitted": self.report_omitted,
            "problems_per_file": {uri: dict(sorted(c.items())) for uri, c in sorted(self.per_file.items())},
            "problems_per_file_omitted": self.per_file_omitted,
        }
