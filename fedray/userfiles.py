"""Checks on what a user hands fedray: the text files it reads and the folder names it creates.

Every user file (config, study, sweep, device trace, workload data) is read through
:func:`read_text`, so each one refuses the same hostile inputs with the same one-line messages:
missing, a folder, unreadable, empty, binary, UTF-16/UTF-32 or another non-UTF-8 encoding. Run,
study and sweep folder names go through :func:`folder_name_problem`, so none can leave the results
root it is created in.
"""

from __future__ import annotations

import reprlib
from pathlib import Path

from fedray.errors import UserError

# Larger numbers are refused in configs and data files: no setting or measurement means that much,
# and one such value combined with another (a sum of tier weights, Mbit/s to bytes/s) overflows.
MAX_FLOAT = 1e100
MAX_INT = 2**63 - 1  # what numpy's int64 holds

MAX_FOLDER_NAME_BYTES = 200

_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),  # before UTF-16 LE: it starts with the same two bytes
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)
_TEXT_BYTES = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlong = 40
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4
_SHORT.maxlevel = 2


def short_repr(value) -> str:
    """``repr(value)`` cut to a readable length, for messages: a 5000-digit number, a long text or
    a list of a million entries must not become a 5000-character error line."""
    try:
        return _SHORT.repr(value)
    except Exception:  # a repr that raises must not hide the real problem
        return f"<{type(value).__name__}>"


def read_text(
    path: str | Path,
    where: str,
    fix: str,
    *,
    error: type[UserError] = UserError,
    max_bytes: int | None = None,
) -> str:
    """The UTF-8 text of a user's file, or ``error`` with one line ``"<where> <problem>; <fix>"``.

    ``where`` names the file for the user (e.g. ``"config file 'a.yaml'"``), ``fix`` says what
    the file should be (e.g. ``"pass a YAML config"``). A UTF-8 byte-order mark is dropped."""
    path = Path(path)
    require_file(path, where, fix, error=error)
    try:
        if max_bytes is not None and path.stat().st_size > max_bytes:
            size = path.stat().st_size / 2**20
            raise error(
                f"{where} is {size:.0f} MB, larger than any such file ({max_bytes >> 20} MB at "
                f"most); {fix}"
            )
        raw = path.read_bytes()
    except OSError as err:
        raise error(f"{where} cannot be read ({err.strerror}); check its permissions") from None
    problem = encoding_problem(raw)
    if problem is not None:
        raise error(f"{where} {problem}")
    text = raw.decode("utf-8-sig")
    if not text.strip():
        raise error(f"{where} is empty; {fix}")
    return text


def require_file(path: Path, where: str, fix: str, *, error: type[UserError] = UserError) -> None:
    """Refuse a path that is missing, a folder or a device (``/dev/zero`` never ends)."""
    if path.is_file():
        return
    if path.is_dir():
        problem = "is a folder"
    elif path.exists():
        problem = "is not a regular file"
    else:
        problem = "not found"
    raise error(f"{where} {problem}; {fix}")


def encoding_problem(raw: bytes) -> str | None:
    """Why ``raw`` is not UTF-8 text (with the fix), or None if it is."""
    for bom, name in _BOMS:
        if raw.startswith(bom):
            return f"is {name} text; save it as UTF-8"
    if b"\x00" in raw:
        # UTF-16 without a byte-order mark: in mostly-ASCII text every other byte is zero and
        # the others are printable characters
        if len(raw) % 2 == 0:
            for zeros, chars in ((raw[0::2], raw[1::2]), (raw[1::2], raw[0::2])):
                printable = sum(b in _TEXT_BYTES for b in chars)
                if zeros.count(0) > 0.9 * len(zeros) and printable > 0.9 * len(chars):
                    return "is UTF-16 text (without a byte-order mark); save it as UTF-8"
        return "is a binary file (it contains NUL bytes), not text; pass the text file"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return (
            f"is not UTF-8 text (byte {err.start} is 0x{raw[err.start]:02x}, as in Latin-1 or "
            "Windows-1252); save it as UTF-8"
        )
    return None


def folder_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a folder created inside a results root, or None if it can.

    A plain name only: no path separators, not ``.``/``..`` or anything starting with ``.``
    (hidden, and the namespace of fedray's own temporary folders), no control characters, at
    most 200 bytes (file systems hold 255, and a replaced run is kept as ``.<name>.replaced``)."""
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not text"
    if not name.strip():
        return "it is empty"
    if "/" in name or "\\" in name:
        return "it contains a path separator"
    if name.startswith("."):
        return "it starts with '.'"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "it contains a control character"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: no file system can store it
        return "it is not valid Unicode text"
    if size > MAX_FOLDER_NAME_BYTES:
        return f"it is longer than {MAX_FOLDER_NAME_BYTES} bytes"
    return None
