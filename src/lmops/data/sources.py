"""Raw sources -> documents, with every skipped file and dropped record counted in a Tally.

Sources are local files, directories (recursive), globs and ``s3://`` prefixes: local ones listed
by ``lmops.data.listing`` (which also names what it passed over: links, hidden or unlistable
directories), S3 ones by ``lmops.storage``; a source that matches nothing is a fatal StorageError.
The format follows the extension: ``.txt`` (a document per file or per blank-line separated
paragraph), ``.jsonl`` (one JSON object a line, text in ``jsonl_field``; blank lines are not
records), ``.json`` (a JSON array of such objects, one object, or JSON lines), ``.parquet`` (text in
``parquet_column``), and the three text formats compressed as ``.gz`` or ``.zst``. Files with any
other extension are skipped and counted as ``unknown_format`` rather than guessed at: a stray
``.csv`` read as prose would pollute the corpus quietly.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from lmops.config import BuildConfig, sha256_json
from lmops.data.accounting import Tally
from lmops.data.compressed import COMPRESSIONS, CorruptCompressed, MissingDecompressor, decompress
from lmops.data.listing import Passed, list_local
from lmops.errors import LmopsError
from lmops.manifest import file_sha256
from lmops.storage import Entry, StorageError, is_s3, list_files, nothing_matches, read_bytes

TEXT_FORMATS = ("txt", "jsonl", "json")
FORMATS = (*TEXT_FORMATS, "parquet", *(f"{f}.{c}" for f in TEXT_FORMATS for c in COMPRESSIONS))
"""Format names, each also the file name ending that selects it ("jsonl.gz": gzip-compressed JSONL)."""
BINARY_SNIFF_BYTES = 8192
_SURROGATES = re.compile(r"[\ud800-\udfff]")


class BuildError(LmopsError, RuntimeError):
    """The build cannot produce a dataset; the message names the file[:line] and the config key.

    A user error (bad data or sources), so the CLI prints it as one line and exits 2.
    """


class BadRecordError(BuildError):
    """A JSONL line or parquet row that is unusable while ``build.bad_records`` is ``fail``."""


class SkipFile(Exception):
    """Raised by a reader before it records anything: the whole file is skipped for ``reason``."""

    def __init__(self, reason: str, detail: str | None = None):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class RawDoc:
    text: str
    uri: str
    line: int | None = None  # line of a JSON record, row of parquet, first line of a paragraph

    @property
    def source(self) -> str:
        """"<uri>" or "<uri>:<line>", as the output records name where each document came from."""
        return self.uri if self.line is None else f"{self.uri}:{self.line}"


@dataclass(frozen=True)
class SourceFile:
    entry: Entry
    content_id: str  # "sha256:<hex>" for local files, "etag:<etag>" for S3 objects

    @property
    def uri(self) -> str:
        return self.entry.uri


# ---------------------------------------------------------------- listing and content identity
def format_of(uri: str) -> str | None:
    name = PurePosixPath(uri).name.lower()
    return next((f for f in FORMATS if name.endswith("." + f)), None)


def format_list() -> str:
    return ", ".join("." + f for f in FORMATS)


def list_sources(sources: list[str]) -> tuple[list[SourceFile], list[Passed]]:
    """Every file the sources name, once each (sorted by URI), with a content id for the cache key;
    and every local path passed over without reading (links, hidden or unlistable directories)."""
    if not sources:
        raise BuildError("build.sources is empty: name at least one file, directory, glob or s3:// prefix")
    entries: dict[str, Entry] = {}
    passed: dict[str, Passed] = {}
    for source in sources:
        found, skipped = (list_files(source), []) if is_s3(source) else list_local(source)
        if not found and not skipped:
            raise nothing_matches(source)
        for entry in found:
            entries.setdefault(entry.uri, entry)
        for p in skipped:
            passed.setdefault(p.uri, p)
    files = [SourceFile(e, _content_id(e)) for e in sorted(entries.values(), key=lambda e: e.uri)]
    return files, [p for uri, p in sorted(passed.items()) if uri not in entries]


def _content_id(entry: Entry) -> str:
    if format_of(entry.uri) is None:
        return "unknown-format"  # skipped unread: its bytes cannot change the output
    if is_s3(entry.uri):
        return f"etag:{entry.etag}"
    try:
        return f"sha256:{file_sha256(entry.uri)}"
    except OSError:
        # counted as unreadable later; becoming readable changes the id (size alone is stable)
        return f"unreadable:{entry.size}"


def sources_digest(files: list[SourceFile]) -> str:
    """Digest of the sources' content and formats only: renaming a file keeps it, editing a byte changes it."""
    return sha256_json(sorted([format_of(f.uri) or "", f.content_id] for f in files))


# ---------------------------------------------------------------- reading
def iter_documents(files: list[SourceFile], cfg: BuildConfig, tally: Tally) -> Iterator[RawDoc]:
    """The documents of every readable file; skipped files and dropped records go to the tally."""
    for f in files:
        tally.files_seen += 1
        fmt = format_of(f.uri)
        if fmt is None:
            tally.skip_file(f.uri, "unknown_format", f"extension {PurePosixPath(f.uri).suffix!r} is not one of "
                            f"{format_list()}")
            continue
        try:
            data = read_bytes(f.uri)
        except (StorageError, OSError) as e:
            tally.skip_file(f.uri, "unreadable", str(e))
            continue
        if f.content_id.startswith("sha256:") and hashlib.sha256(data).hexdigest() != f.content_id[7:]:
            raise BuildError(f"{f.uri}: changed while the build was running; run it again")
        try:
            docs = _check_and_read(f.uri, fmt, data, cfg, tally)
        except SkipFile as s:
            tally.skip_file(f.uri, s.reason, s.detail)
            continue
        tally.files_read += 1
        tally.input_bytes += len(data)
        yield from docs


def _check_and_read(uri: str, fmt: str, data: bytes, cfg: BuildConfig, tally: Tally) -> list[RawDoc]:
    if not data.strip():
        raise SkipFile("empty", f"{len(data)} bytes, no text")
    if fmt == "parquet":
        return read_parquet(uri, data, cfg, tally)
    fmt, _, compression = fmt.partition(".")
    if compression:
        data = _decompressed(uri, data, compression)
        if not data.strip():
            raise SkipFile("empty", f"decompresses to {len(data)} bytes, no text")
    if b"\0" in data[:BINARY_SNIFF_BYTES]:
        raise SkipFile("binary", f"NUL byte in the first {BINARY_SNIFF_BYTES} bytes")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    reader = {"txt": read_txt, "jsonl": read_jsonl, "json": read_json}[fmt]
    return reader(uri, data, cfg, tally)


def _decompressed(uri: str, data: bytes, compression: str) -> bytes:
    try:
        return decompress(data, compression)
    except CorruptCompressed as e:
        raise SkipFile("corrupt_compressed", str(e)) from None
    except MissingDecompressor as e:
        raise BuildError(f"{uri}: {e}") from None


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decode, replacing invalid sequences with U+FFFD; returns (text, number of sequences replaced)."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        replaced = data.decode("utf-8", "replace")
        # U+FFFD that were in the input all along survive "ignore"; only the new ones are replacements
        return replaced, replaced.count("\ufffd") - data.decode("utf-8", "ignore").count("\ufffd")


def _decode_record(raw: bytes, uri: str, where: int, cfg: BuildConfig, tally: Tally) -> str | None:
    """One record's bytes as text, invalid UTF-8 replaced and counted, or None when it is dropped."""
    text, bad = decode_utf8(raw)
    if bad and cfg.invalid_utf8 == "drop":
        tally.drop_record(uri, "invalid_utf8", where, f"{bad} invalid UTF-8 sequence(s) (build.invalid_utf8=drop)")
        return None
    if bad:
        tally.replaced_utf8(uri, bad, where)
    return text


def read_txt(uri: str, data: bytes, cfg: BuildConfig, tally: Tally) -> list[RawDoc]:
    text, bad = decode_utf8(data)
    if bad and cfg.invalid_utf8 == "drop":
        raise SkipFile("invalid_utf8", f"{bad} invalid UTF-8 sequence(s) (build.invalid_utf8=drop)")
    if bad:
        tally.replaced_utf8(uri, bad)
    if cfg.txt_mode == "file":
        docs = [RawDoc(text, uri)]
    else:
        docs = [RawDoc(par, uri, line) for line, par in paragraphs(text)]
    tally.docs_read += len(docs)
    return docs


def paragraphs(text: str) -> Iterator[tuple[int, str]]:
    """Blank-line separated paragraphs with the 1-based line each starts on."""
    start, lines = 0, []
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.strip():
            start = start or lineno
            lines.append(line)
        elif lines:
            yield start, "\n".join(lines)
            start, lines = 0, []
    if lines:
        yield start, "\n".join(lines)


def read_jsonl(uri: str, data: bytes, cfg: BuildConfig, tally: Tally) -> list[RawDoc]:
    docs = []
    # split bytes, not text: "\n" never occurs inside a multi-byte UTF-8 sequence, and a bad byte
    # then costs one record (invalid_utf8: drop), not the whole file
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        tally.docs_read += 1
        line = _decode_record(raw, uri, lineno, cfg, tally)
        if line is None:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            _bad_record(uri, lineno, "not_json", f"not JSON: {e}", cfg, tally)
            continue
        docs.extend(_record_doc(record, uri, lineno, cfg, tally))
    return docs


def read_json(uri: str, data: bytes, cfg: BuildConfig, tally: Tally) -> list[RawDoc]:
    """A .json file: an array of records, one record, or JSON lines (many datasets ship those as .json).

    Records follow the JSONL rules (text in ``jsonl_field``) and are located by the line their
    value starts on. An array that is not valid JSON is a corrupt file: skipped as ``invalid_json``,
    or a BadRecordError with ``bad_records: fail``.
    """
    text, bad = decode_utf8(data)
    start = len(text) - len(text.lstrip())
    if not text.startswith("[", start):
        try:
            values = [(1 + text.count("\n", 0, start), json.loads(text))]
        except json.JSONDecodeError:
            return read_jsonl(uri, data, cfg, tally)  # more than one value: JSON lines, judged line by line
    else:
        try:
            values = list(_array_items(text, start))
        except json.JSONDecodeError as e:
            if cfg.bad_records == "fail":
                raise BadRecordError(f"{uri}:{e.lineno}: not a valid JSON array: {e} "
                                     "(build.bad_records=fail; set it to skip to count and go on)") from None
            raise SkipFile("invalid_json", f"not a valid JSON array: {e}") from None
    if bad and cfg.invalid_utf8 == "drop":
        raise SkipFile("invalid_utf8", f"{bad} invalid UTF-8 sequence(s) (build.invalid_utf8=drop)")
    if bad:
        tally.replaced_utf8(uri, bad)
    docs = []
    for line, record in values:
        tally.docs_read += 1
        docs.extend(_record_doc(record, uri, line, cfg, tally))
    return docs


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _array_items(text: str, start: int) -> Iterator[tuple[int, Any]]:
    """(line, value) of each element of the JSON array at ``text[start]``; JSONDecodeError if invalid."""
    decoder = json.JSONDecoder()
    line, counted = 1 + text.count("\n", 0, start), start
    pos = _JSON_SPACE.match(text, start + 1).end()
    if not text.startswith("]", pos):
        while True:
            line, counted = line + text.count("\n", counted, pos), pos
            value, pos = decoder.raw_decode(text, pos)
            yield line, value
            pos = _JSON_SPACE.match(text, pos).end()
            if text.startswith(",", pos):
                pos = _JSON_SPACE.match(text, pos + 1).end()
            elif text.startswith("]", pos):
                break
            else:
                raise json.JSONDecodeError("Expecting ',' or ']' after an array element", text, pos)
    end = _JSON_SPACE.match(text, pos + 1).end()
    if end != len(text):
        raise json.JSONDecodeError("Extra data after the array", text, end)


def _record_doc(record: Any, uri: str, line: int, cfg: BuildConfig, tally: Tally) -> list[RawDoc]:
    """The document of one JSON record (.jsonl line or .json element), or none when it is dropped."""
    field = cfg.jsonl_field
    if not isinstance(record, dict) or field not in record:
        what = "an object" if isinstance(record, dict) else f"a JSON {type(record).__name__}"
        _bad_record(uri, line, "missing_field", f"{what} without field {field!r} (build.jsonl_field)", cfg, tally)
        return []
    value = record[field]
    if not isinstance(value, str):
        _bad_record(uri, line, "not_string", f"field {field!r} is {type(value).__name__}, expected a string", cfg, tally)
        return []
    text = _without_surrogates(value, uri, line, cfg, tally)
    return [] if text is None else [RawDoc(text, uri, line)]


def _without_surrogates(value: str, uri: str, lineno: int, cfg: BuildConfig, tally: Tally) -> str | None:
    """JSON "\\ud800" escapes decode to lone surrogates, which are invalid UTF-8 once written out."""
    n = len(_SURROGATES.findall(value))
    if not n:
        return value
    if cfg.invalid_utf8 == "drop":
        tally.drop_record(uri, "invalid_utf8", lineno, f"{n} lone surrogate escape(s) (build.invalid_utf8=drop)")
        return None
    tally.replaced_utf8(uri, n, lineno)
    return _SURROGATES.sub("\ufffd", value)


def _bad_record(uri: str, lineno: int, reason: str, message: str, cfg: BuildConfig, tally: Tally) -> None:
    if cfg.bad_records == "fail":
        raise BadRecordError(f"{uri}:{lineno}: {message} (build.bad_records=fail; set it to skip to count and go on)")
    tally.drop_record(uri, reason, lineno, message)


def read_parquet(uri: str, data: bytes, cfg: BuildConfig, tally: Tally) -> list[RawDoc]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = cfg.parquet_column
    try:
        pf = pq.ParquetFile(io.BytesIO(data))
        names = pf.schema_arrow.names
        if column not in names:
            if cfg.bad_records == "fail":
                raise BadRecordError(f"{uri}: no column {column!r} (build.parquet_column); columns: {names}")
            raise SkipFile("missing_column", f"no column {column!r} (build.parquet_column); columns: {names}")
        col = pf.read(columns=[column]).column(column)
    except (pa.ArrowException, OSError) as e:
        raise SkipFile("invalid_parquet", str(e)) from None
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
            or pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
        raise SkipFile("not_string_column", f"column {column!r} has type {col.type}, expected string")
    docs = []
    for row, value in enumerate(col.to_pylist(), 1):
        tally.docs_read += 1
        if value is None:
            _bad_record(uri, row, "missing_field", f"column {column!r} is null", cfg, tally)
            continue
        if isinstance(value, bytes):
            value = _decode_record(value, uri, row, cfg, tally)
            if value is None:
                continue
        docs.append(RawDoc(value, uri, row))
    return docs
