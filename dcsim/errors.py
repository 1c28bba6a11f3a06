"""The one user-facing error type: it names the file, the field and what is wrong."""

from __future__ import annotations

from pathlib import Path

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
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        if e["type"] == "nested_field" and e.get("ctx", {}).get("subfield"):  # a field inside a nested model
            loc = f"{loc}.{e['ctx']['subfield']}"
        first_field = first_field or loc
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling)"
        parts.append(f"field '{loc}': {msg}")
    if len(parts) == 1:
        return UserError(parts[0].split(": ", 1)[1], file, first_field)
    return UserError("; ".join(parts), file, None)


def validate_file(model: type, data: dict, path: str | Path):
    """Validate data read from `path` against a pydantic model; errors name the file and the field."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise from_validation(e, path) from None


def load_model(model: type, path: str | Path):
    """Read a YAML file and validate it against a pydantic model."""
    return validate_file(model, load_yaml(path), path)


def guarded(call, *args) -> int:
    """Run a command handler the way every CLI entry must: a UserError becomes one line and exit 2."""
    import sys

    try:
        return int(call(*args) or 0)
    except UserError as e:
        print(f"dcsim: error: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dcsim: interrupted", file=sys.stderr)
        return 130


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, turning a missing file or malformed YAML into a UserError."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError("file not found", p)
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"malformed YAML{where}: {getattr(e, 'problem', e)}", p) from None
    if not isinstance(data, dict):
        raise UserError("expected a mapping at the top level", p)
    return data
