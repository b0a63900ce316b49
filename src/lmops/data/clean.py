"""Text normalization for the build stage: pure functions, no I/O.

The normalized text is what the dataset stores, what exact dedup hashes and what decides the split,
so two documents that differ only in encoding details (NFC vs NFD, CRLF vs LF, trailing blanks,
stray control bytes) end up byte-identical and are treated as one.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

# C0/C1 control characters except \t and \n; the BOM (U+FEFF) too, since editors leave it at the
# start of files and it is invisible. Other format characters (ZWJ, soft hyphen, bidi marks) carry
# meaning in real text and are kept.
_CONTROL = {c: None for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if chr(c) not in "\t\n"}
_CONTROL[0xFEFF] = None

# Line breaks other than \n become \n before control stripping, so "a\r\nb" and "a\rb" keep the break.
_NEWLINES = re.compile(r"\r\n|[\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_HSPACE = re.compile(r"[^\S\n]+")  # any whitespace except the newline: spaces, tabs, NBSP, ...
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalize_unicode(text: str) -> str:
    """NFC: composed characters, so "é" is one code point however the source wrote it."""
    return unicodedata.normalize("NFC", text)


def strip_control(text: str) -> str:
    """Unify line breaks to \\n, then drop control characters except \\n and \\t."""
    return _NEWLINES.sub("\n", text).translate(_CONTROL)


def normalize_whitespace(text: str) -> str:
    """Collapse horizontal whitespace runs to one space, trim lines, at most one blank line, strip."""
    text = _HSPACE.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


def clean_text(text: str) -> str:
    """The full normalization applied to every document before filtering, dedup and splitting."""
    # controls go first: dropping one between a letter and a combining mark makes a new NFC pair
    return normalize_whitespace(normalize_unicode(strip_control(text)))


def text_id(text: str) -> str:
    """The document id: sha256 of the normalized text (equal texts have equal ids)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
