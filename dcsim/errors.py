"""The one user-facing error type: it names the file, the field and what is wrong."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pydantic is imported where a model is validated, not by every command that may fail
    from pydantic import ValidationError


class UserError(Exception):
    """Bad input from the user; the CLI prints it and exits with status 2 (no traceback)."""

    def __init__(self, reason: str, file: str | Path | None = None, field: str | None = None) -> None:
        self.file = str(file) if file is not None else None
        self.field = field
        self.reason = reason
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.field:
            where.append(f"field '{self.field}'")
        prefix = ": ".join(where)
        return f"{prefix}: {self.reason}" if prefix else self.reason


def from_validation(err: ValidationError, file: str | Path | None) -> UserError:
    """Turn a pydantic ValidationError into one UserError that lists every bad field."""
    parts = []
    first_field = None
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        if e["type"] == "nested_field" and e.get("ctx", {}).get("subfield"):  # a field inside a nested model
            loc = f"{loc}.{e['ctx']['subfield']}" if loc else e["ctx"]["subfield"]  # (the model's own: as it is)
        loc = loc or "(top level)"
        first_field = first_field or loc
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling)"
        parts.append(f"field '{loc}': {msg}")
    if len(parts) == 1:
        return UserError(parts[0].split(": ", 1)[1], file, first_field)
    return UserError("; ".join(parts), file, None)


def validate_file(model: type, data: dict, path: str | Path):
    """Validate data read from `path` against a pydantic model; errors name the file and the field. A number
    that is not finite (.inf, .nan, an overflow such as 1e400, `--set x=inf`) is refused wherever it stands:
    no field of a scenario, profile or plan means anything at infinity."""
    from pydantic import ValidationError

    try:
        obj = model.model_validate(data)
    except ValidationError as e:
        raise from_validation(e, path) from None
    where = non_finite(obj.model_dump() if hasattr(obj, "model_dump") else data)
    if where is not None:
        loc, v = where
        raise UserError(f"must be a finite number, got {v}", path, loc)
    return obj


def non_finite(obj: object, loc: str = "") -> tuple[str, float] | None:
    """The first (dotted field, value) holding an infinite or NaN number in nested dicts and lists, or None."""
    import math

    if isinstance(obj, float):
        return None if math.isfinite(obj) else (loc or "(top level)", obj)
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        hit = non_finite(v, f"{loc}.{k}" if loc else str(k))
        if hit is not None:
            return hit
    return None


def load_model(model: type, path: str | Path):
    """Read a YAML file and validate it against a pydantic model."""
    return validate_file(model, load_yaml(path), path)


# errors of the file system that are the user's to mend (a path, a permission, a full disk), not ours
USER_OS_ERRORS = frozenset({errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR,
                            errno.ENOENT, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ELOOP, errno.EEXIST})


def guarded(call, *args) -> int:
    """Run a command handler the way every CLI entry must: a UserError, or a file-system error on a path the user
    gave (too long, no permission, disk full), becomes one line and exit 2."""
    import sys

    try:
        return int(call(*args) or 0)
    except UserError as e:
        print(f"dcsim: error: {printable(e.message)}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in USER_OS_ERRORS or e.filename is None:
            raise
        msg = UserError(e.strerror or str(e), _short(str(e.filename))).message
        print(f"dcsim: error: {printable(msg)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dcsim: interrupted", file=sys.stderr)
        return 130


def printable(text: str) -> str:
    """A message as one line of plain text: control characters and line breaks that came with the user's input
    (a newline in a name, an escape sequence) are written as escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _short(path: str) -> str:
    """A path short enough to print (an over-long one keeps its start and end)."""
    return path if len(path) <= 120 else path[:60] + "..." + path[-40:]


def check_input(path: str | Path, field: str | None = None, what: str = "file") -> Path:
    """An input file that must exist and be a file: a missing one, a folder or a path the system cannot take is
    a UserError naming it (`what` says what was expected, e.g. "trace file")."""
    p = Path(path)
    try:
        if p.is_file():
            return p
        if p.is_dir():
            raise UserError(f"is a folder; expected a {what}", p, field)
        p.stat()
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise UserError("the path, or a part of it, is longer than the system allows", _short(str(p)),
                            field) from None
        if e.errno == errno.EACCES:
            raise UserError("cannot read (permission denied)", p, field) from None
    raise UserError(f"{what} not found", p, field)


def read_text(path: str | Path, field: str | None = None, what: str = "file") -> str:
    """The text of a UTF-8 file; a missing or unreadable file, a folder, or bytes that are not UTF-8 text
    (a binary file, another encoding) become a UserError naming the file and where it went wrong."""
    p = check_input(path, field, what)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read: {e.strerror}", p, field) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(f"not UTF-8 text (byte {e.start}, line {line}: {data[e.start:e.start + 1]!r}); is it a "
                        f"binary file, or saved in another encoding?", p, field) from None
    if "\x00" in text:
        raise UserError(f"not a text file (a NUL byte at line {text[: text.index(chr(0))].count(chr(10)) + 1})",
                        p, field)
    return text


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, turning a missing, unreadable or malformed file into a UserError."""
    import yaml

    p = Path(path)
    text = read_text(p)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"malformed YAML{where}: {getattr(e, 'problem', e)}", p) from None
    if not isinstance(data, dict):
        raise UserError("expected a mapping at the top level", p)
    return data
