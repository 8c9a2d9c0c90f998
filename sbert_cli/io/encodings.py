"""Text files in any encoding (--encoding), what to say when a line is not in it, and text quoted in messages."""

from __future__ import annotations

import codecs
import re

from sbert_cli.errors import UsageError

DEFAULT_ENCODING = "utf-8"
# Text that must come out of an encoding byte for byte as ASCII for a file to be split into lines, fields and JSON
# on its bytes: GBK, GB18030, Big5 and Latin-1 pass; UTF-16, UTF-32, UTF-7 and EBCDIC do not.
_ASCII_PROBE = "\t\n\r \"',;:{}[]+-~\\/abcxyzABCXYZ0123456789"


def check_encoding(name: str) -> str:
    """--encoding NAME: a text codec Python knows, or a usage error."""
    try:
        info = codecs.lookup(name)
    except LookupError:
        raise UsageError(f"--encoding {shown(name)}: unknown encoding; pass one Python knows, e.g. gb18030, big5, utf-16") from None
    if not getattr(info, "_is_text_encoding", True):  # base64, zlib, rot13: codecs, but not of text to bytes
        raise UsageError(f"--encoding {shown(name)}: not a text encoding; pass one such as gb18030, big5, utf-16")
    return name


def is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name == "utf-8"


def ascii_compatible(encoding: str) -> bool:
    """Whether a file in this encoding can be read a line at a time on its bytes (each b'\\n' a line end)."""
    try:
        encoded = _ASCII_PROBE.encode(encoding).removeprefix(codecs.BOM_UTF8)  # utf-8-sig's mark, once at the start
        return encoded == _ASCII_PROBE.encode("ascii") and b"\n".decode(encoding) == "\n"
    except (UnicodeError, LookupError):
        return False


def undecodable(encoding: str, options: bool, detail: str = "") -> str:
    """Why a line cannot be read, and the fix: 'not valid UTF-8; pass --encoding gb18030 (or the file's encoding)'.

    GB18030 is named rather than GBK because it holds all of GBK and the characters GBK lacks (a GBK-converting
    iconv fails on those). `options`: whether --encoding exists to suggest (encode has it, evaluate does not)."""
    name = codecs.lookup(encoding).name
    title = "UTF-8" if name == "utf-8" else name.upper()
    if not options:
        fix = "convert the file, e.g. iconv -f GB18030 -t UTF-8"
    elif name in ("utf-8", "gbk", "gb2312"):
        fix = "pass --encoding gb18030 (or the file's encoding)"
    else:
        fix = f"pass the file's encoding with --encoding (it is not {shown(encoding)})"
    return f"not valid {title}{detail}; {fix}"


# Characters that would end or break a message line: C0 and C1 controls, DEL, and the line and paragraph separators.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def shown(text: str) -> str:
    """Text quoted in an error or a reject reason, its control characters escaped ('a\\tb'), so one message stays one line."""
    return _CONTROLS.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
