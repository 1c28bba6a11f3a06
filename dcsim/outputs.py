"""Writing outputs without losing a user's files: every command that writes goes through here.

A folder that dcsim writes holds a marker, `.dcsim-output.json` ({"format", "command", "files"}), listing the
files it wrote. A folder is replaced only when its marker names the same command (or, for folders written before
markers, when it holds that command's own signature file), or when it is empty; otherwise the command stops with
exit 2 unless --force. Even with --force only the files dcsim writes are replaced or removed; anything else in the
folder stays. New folders are built in a temporary sibling and renamed into place when complete, so a failed
command leaves no half-written folder. Single files (a profile, a trace, a report) are written to a temporary
sibling and renamed; an existing file is replaced only when it carries dcsim's mark (`owned_*` below).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from dcsim.errors import UserError

MARKER = ".dcsim-output.json"
LOCK = ".dcsim-lock"
FORMAT = "dcsim-output/1"
FORCE_HINT = "choose another path or pass --force (which replaces only dcsim's own files)"


# ---- paths -----------------------------------------------------------------------------------
def check_path_length(path: str | Path, field: str | None = None) -> Path:
    """Refuse a path, or one of its components, longer than the file system allows (before any work)."""
    p = Path(path)
    anchor = p.resolve().anchor or "/"
    try:
        name_max = os.pathconf(anchor, "PC_NAME_MAX")
        path_max = os.pathconf(anchor, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        name_max, path_max = 255, 4096
    for part in p.parts:
        if len(os.fsencode(part)) > name_max:
            raise UserError(f"a path component is longer than the system allows ({name_max} bytes): "
                            f"{part[:40]}...", _short(p), field)
    if len(os.fsencode(str(p.absolute()))) >= path_max:
        raise UserError(f"the path is longer than the system allows ({path_max} bytes)", _short(p), field)
    return p


def _short(p: Path) -> str:
    s = str(p)
    return s if len(s) <= 120 else s[:60] + "..." + s[-40:]


def _check_parent(out: Path, field: str | None) -> None:
    """The folder that will hold `out` must be a writable folder (created when missing, where it can be)."""
    parent = out.absolute().parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError("is a file, not a folder", probe, field)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError("cannot write here (permission denied)", probe, field)


# ---- folders ---------------------------------------------------------------------------------
def read_marker(folder: Path) -> dict | None:
    """The marker of a folder dcsim wrote, or None (absent or unreadable: not a folder of ours)."""
    try:
        m = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("files"), list):
        return None
    return m


def owned_folder(folder: Path, command: str, signature: Callable[[Path], bool] | None = None) -> bool:
    """Whether `folder` was written by `command`: its marker says so, or (older folders, without a marker)
    `signature(folder)` recognises the command's own files."""
    m = read_marker(folder)
    if m is not None:
        return m.get("command") == command
    return bool(signature and signature(folder))


def check_folder(out: str | Path, command: str, force: bool, field: str = "--out",
                 signature: Callable[[Path], bool] | None = None) -> Path:
    """Refuse, before any work, an output folder that cannot or must not be written: a path too long, a regular
    file, an unwritable place, or an existing folder of something else (unless force)."""
    p = check_path_length(out, field)
    if p.exists() and not p.is_dir():
        raise UserError("exists and is a file, not a folder; choose another --out", p, field)
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise UserError("cannot write here (permission denied)", p, field)
        if not force and any(p.iterdir()) and not owned_folder(p, command, signature):
            m = read_marker(p)
            what = f"a folder written by `dcsim {m.get('command')}`" if m else "a folder dcsim did not write"
            raise UserError(f"this is {what}; {FORCE_HINT}", p, field)
    else:
        _check_parent(p, field)
    return p


def _files_under(folder: Path) -> list[str]:
    """Relative paths of the regular files under folder (the marker and lock left out), sorted."""
    out = []
    for root, _, names in os.walk(folder):
        for n in names:
            rel = Path(root, n).relative_to(folder).as_posix()
            if rel not in (MARKER, LOCK):
                out.append(rel)
    return sorted(out)


def write_marker(folder: Path, command: str, files: list[str] | None = None, **extra: object) -> None:
    """Record in `folder` that `command` wrote it, and which files are its own."""
    files = _files_under(folder) if files is None else files
    text = json.dumps({"format": FORMAT, "command": command, "files": files, **extra}, indent=1) + "\n"
    write_file(folder / MARKER, lambda t: t.write_text(text, encoding="utf-8"))


def _old_files(out: Path, command: str) -> set[str]:
    """The files an earlier run of `command` wrote into `out` (none where another command, or no marker)."""
    m = read_marker(out)
    return set(m["files"]) if m and m.get("command") == command else set()


def _only_ours(out: Path, old: set[str]) -> bool:
    """Whether everything under `out` is dcsim's: its listed files, the marker, the lock, and folders."""
    if Path.cwd().resolve() in (out.resolve(), *out.resolve().parents):
        return False  # never move the working folder (or one above it) away, even for a moment
    if not set(_files_under(out)) <= old:
        return False
    dirs = {Path(f).parent.as_posix() for f in old}
    for root, names, _ in os.walk(out):
        for n in names:
            rel = Path(root, n).relative_to(out).as_posix()
            if not any(d == rel or d.startswith(rel + "/") for d in dirs):
                return False  # a folder that is not one of ours, even an empty one
    return True


def install(tmp: Path, out: Path, command: str) -> Path:
    """Put the completed folder `tmp` in place as `out`. A new `out`, or one that holds only this command's
    earlier files, is swapped in by renames; any other keeps every file dcsim did not write: its own old files are
    removed or replaced, the new ones moved in, the marker last."""
    new = _files_under(tmp)
    write_marker(tmp, command, new)
    out_abs = out.absolute()
    if not out.exists():
        out_abs.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, out_abs)
        return out
    old = _old_files(out, command)
    if tmp.parent == out_abs.parent and _only_ours(out, old):
        trash = Path(tempfile.mkdtemp(prefix=f".{out_abs.name}.", suffix=".old", dir=out_abs.parent))
        os.rename(out_abs, trash / "x")
        os.rename(tmp, out_abs)
        shutil.rmtree(trash, ignore_errors=True)  # held only dcsim's own files (checked above)
        return out
    for rel in sorted(old - set(new)):
        f = out / rel
        if f.is_file() or f.is_symlink():
            f.unlink()
            _prune_empty(f.parent, out)
    for rel in new:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_dir() and not dst.is_symlink():
            raise UserError("a folder stands where dcsim writes a file; move it away", dst)
        os.replace(tmp / rel, dst)
    os.replace(tmp / MARKER, out / MARKER)
    shutil.rmtree(tmp, ignore_errors=True)  # now only empty folders of ours
    return out


def _prune_empty(d: Path, top: Path) -> None:
    """Remove folders left empty under `top` by removing dcsim's old files (never `top` itself)."""
    while d != top and top in d.parents:
        try:
            d.rmdir()
        except OSError:
            return
        d = d.parent


@contextlib.contextmanager
def staged_folder(out: str | Path, command: str, force: bool, field: str = "--out",
                  signature: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Build an output folder in a temporary sibling, then install it as `out`: all of it, or nothing (a failure
    removes the temporary folder, which holds only what this command wrote)."""
    p = check_folder(out, command, force, field, signature)
    parent = p.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create this folder: {e.strerror}", parent, field) from None
    if p.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
        parent = p.absolute()  # a folder we may write into under one we may not: stage inside it
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{p.absolute().name}.", suffix=".partial", dir=parent))
    except OSError as e:
        raise UserError(f"cannot write here: {e.strerror}", parent, field) from None
    try:
        yield tmp
        install(tmp, p, command)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def start_staging(tmp: Path, command: str) -> Path:
    """A fixed-name working folder (a resumable command's OUT.partial), fresh: an earlier one of this command is
    cleared; anything else there is refused."""
    if tmp.exists():
        if not tmp.is_dir() or read_marker(tmp) is None or read_marker(tmp).get("command") != command:
            raise UserError(f"exists and dcsim did not write it; move it away ({FORCE_HINT.split('; ')[0]})", tmp)
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write_marker(tmp, command, [], complete=False)
    return tmp


@contextlib.contextmanager
def locked(folder: Path, what: str) -> Iterator[None]:
    """Hold `folder`/.dcsim-lock for the duration: a second process writing the same folder stops with exit 2.
    The lock is the operating system's (flock), so a killed process never leaves it held."""
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / LOCK, "a+")
    try:
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no flock (Windows): the lock is advisory only there
            pass
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                f.seek(0)
                holder = f.read().strip()
                raise UserError(f"another {what} is writing into this folder" +
                                (f" (process {holder})" if holder else "") + "; wait for it or choose another --out",
                                folder / LOCK) from None
            raise
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        f.close()


# ---- single files ----------------------------------------------------------------------------
def check_file(out: str | Path, force: bool, owned: Callable[[Path], bool], field: str = "-o") -> Path:
    """Refuse, before any work, an output file that cannot or must not be written: a path too long, a folder,
    an unwritable place, or an existing file that dcsim did not write (`owned` says; unless force)."""
    p = check_path_length(out, field)
    if p.is_dir():
        raise UserError("is a folder; give a file name", p, field)
    _check_parent(p, field)
    if p.exists() and not force and not owned(p):
        raise UserError(f"exists and dcsim did not write it; {FORCE_HINT}", p, field)
    return p


def write_file(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary sibling, then rename: readers never see half a file, and a failure leaves the
    old file as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name keeps the file's suffix: writers that choose a format by it (savefig) still can
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _head(path: Path, n: int = 65536) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def owned_profile(path: Path) -> bool:
    """A device profile YAML (as `dcsim fit` writes): a mapping with the profile's identifying keys."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and {"schema_version", "name", "device", "model", "engine"} <= set(data)


def owned_figure(path: Path, beside: Path) -> bool:
    """A PNG that matplotlib drew, beside a profile dcsim wrote (the figure `dcsim fit` draws for it)."""
    head = _head(path, 4096)
    return head.startswith(b"\x89PNG") and b"Matplotlib" in head and owned_profile(beside)


def owned_trace(path: Path) -> bool:
    """A Parquet trace carrying dcsim's provenance metadata."""
    try:
        import pyarrow.parquet as pq

        from dcsim.traces.trace import PROVENANCE_KEY

        return PROVENANCE_KEY in (pq.read_schema(path).metadata or {})
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False


REPORT_MARK = b'<meta name="generator" content="dcsim'


def owned_report(path: Path) -> bool:
    """An HTML report of `dcsim report` (its generator tag, or the version line of reports made before it)."""
    head = _head(path)
    return head.startswith(b"<!DOCTYPE html>") and (REPORT_MARK in head or b"&middot; dcsim " in head)
