"""Named classes of one kind: routers, batching policies, meters, trace and profile importers, engines.

Every choice a user makes by name takes this one shape: a class registers itself with `@REGISTRY.register("name")`
in the file that defines it, so adding one touches one file, and a lookup of an unknown name is refused naming
the file, the field and the names that exist.

A registry given a base class also finds classes that are not registered: a name holding a colon is a reference,
`package.module:Class` (imported as Python imports it) or `path/to/file.py:Class` (a file, loaded once per
process); and a registry given an entry-point group finds the plain names that installed packages declare there
(`[project.entry-points."dcsim.routers"] sqf = "mypkg.routers:ShortestQueueFirst"`). A class found either way
must subclass the base.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Callable, Generic, Iterator, TypeVar

from dcsim.errors import UserError

T = TypeVar("T")

REF_FORMS = "package.module:Class or path/to/file.py:Class"


def is_ref(name: str) -> bool:
    """Whether a name refers to a class by module or file (it holds a colon) rather than by registered name."""
    return ":" in name


def split_ref(name: str) -> tuple[str, str, bool]:
    """(module or file, attribute, whether it is a file): a file ends in .py or holds a path separator."""
    target, _, attr = name.rpartition(":")
    return target, attr, target.endswith(".py") or "/" in target or "\\" in target


def absolute_ref(name: object, folder: str | Path) -> object:
    """A reference to a file made absolute against `folder` (a scenario's folder, so that a worker reading the
    scenario elsewhere finds the same file); any other name as it is."""
    if not isinstance(name, str) or not is_ref(name):
        return name
    target, attr, is_file = split_ref(name)
    if not is_file:
        return name
    try:
        p = Path(target).expanduser()
        return name if p.is_absolute() else f"{(Path(folder) / p).resolve()}:{attr}"
    except (OSError, ValueError, RuntimeError):  # a path the system cannot take: the lookup will say so
        return name


def _relative_file(name: str) -> bool:
    if not is_ref(name):
        return False
    target, _, is_file = split_ref(name)
    return is_file and not Path(target).is_absolute()


# files loaded by path, once per process: a second scenario naming the same file gets the same classes
_FILE_MODULES: dict[Path, ModuleType] = {}


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _failure(e: BaseException, fallback: str) -> str:
    """Where importing a user's module failed (its first frame in the user's code, or a syntax error's line) and
    the exception in one line."""
    where = fallback
    if isinstance(e, SyntaxError) and e.filename:
        where = f"{e.filename}, line {e.lineno}"
    else:
        skip = {__file__, importlib.__file__}
        frames = [f for f in traceback.extract_tb(e.__traceback__)
                  if f.filename not in skip and not f.filename.startswith("<")]
        if frames:
            where = f"{frames[0].filename}, line {frames[0].lineno}"
    return f"importing it failed ({where}): {_one_line(e)}"


def _valid_dotted(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


class Registry(Generic[T]):
    """Classes of one kind by name; reads like a read-only mapping (`name in reg`, `reg[name]`, `sorted(reg)`).

    `base`: also resolve references (module:Class, file.py:Class) to subclasses of it; `group`: also find plain
    names in that entry-point group of installed packages. Both only through `get`; `in` and `[]` see the
    registered names."""

    def __init__(self, kind: str, base: type | None = None, group: str | None = None) -> None:
        self.kind = kind  # in messages: "unknown <kind> 'x'"
        self.base = base
        self.group = group
        self._classes: dict[str, type[T]] = {}
        self._found: dict[str, type[T]] = {}  # references and entry points resolved in this process

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: file the class under `name`."""

        def add(cls: type[T]) -> type[T]:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} '{name}' is registered twice ({self._classes[name].__qualname__} "
                                 f"and {cls.__qualname__})")
            self._classes[name] = cls
            return cls

        return add

    def get(self, name: object, file: str | Path | None = None, field: str | None = None,
            relative_to: str | Path | None = None) -> type[T]:
        """The class registered as `name`, or (with a base) the class a reference or an entry point names; an
        unknown name, or a reference that cannot be followed, is a UserError naming the file and the field.
        A relative file reference is read from `relative_to` (default: the current folder)."""
        if isinstance(name, str):
            cls = self._classes.get(name)
            if cls is not None:
                return cls
            if self.base is not None:
                key = name if not _relative_file(name) else str(
                    absolute_ref(name, relative_to if relative_to is not None else Path.cwd()))
                cls = self._found.get(key)
                if cls is None:
                    cls = (self._resolve(key, repr(name), file, field) if is_ref(name)
                           else self._entry_point(name, file, field))
                if cls is not None:
                    self._found[key] = cls
                    return cls
        choices = self.names() + sorted(set(self._entry_points()) - set(self._classes))
        more = f"; or a class of your own as {REF_FORMS}" if self.base is not None else ""
        raise UserError(f"unknown {self.kind} {name!r} (known: {', '.join(choices)}{more})", file, field)

    # ---- references and entry points -----------------------------------------------------------
    def _refused(self, name: str, why: str, file: str | Path | None, field: str | None) -> UserError:
        return UserError(f"{self.kind} {name}: {why}", file, field)

    def _resolve(self, ref: str, name: str, file: str | Path | None, field: str | None) -> type[T]:
        """The class `ref` (module:Class or /abs/file.py:Class) names, checked to subclass the base."""
        target, attr, is_file = split_ref(ref)
        if not _valid_dotted(attr):
            raise self._refused(name, f"'{attr}' after the colon is not a class name (expected {REF_FORMS})",
                                file, field)
        mod = self._load_file(Path(target), name, file, field) if is_file else self._import(target, name, file,
                                                                                             field)
        obj: object = mod
        for part in attr.split("."):
            if not hasattr(obj, part):
                holds = sorted(k for k, v in vars(mod).items() if isinstance(v, type) and issubclass(v, self.base)
                               and v is not self.base and v.__module__ == mod.__name__)
                hint = f" (it defines: {', '.join(holds)})" if holds else ""
                where = target if is_file else f"module '{target}'"
                raise self._refused(name, f"{where} has no attribute '{attr}'{hint}", file, field)
            obj = getattr(obj, part)
        base = self.base
        assert base is not None  # references are followed only by registries with a base
        if not isinstance(obj, type) or not issubclass(obj, base):
            what = f"class {attr}" if isinstance(obj, type) else f"'{attr}' (a {type(obj).__name__}, not a class)"
            raise self._refused(name, f"{what} is not a {self.kind}: it must subclass "
                                f"{base.__module__}.{base.__qualname__}", file, field)
        return obj

    def _import(self, module: str, name: str, file: str | Path | None, field: str | None) -> ModuleType:
        if not _valid_dotted(module):
            raise self._refused(name, f"'{module}' is not a module path (expected {REF_FORMS})", file, field)
        importlib.invalidate_caches()  # a package installed or written since this process looked
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and (module == e.name or module.startswith(e.name + ".")):
                raise self._refused(name, f"no module named '{e.name}' (is its package installed, or its folder on "
                                    "PYTHONPATH, wherever the scenario runs?)", file, field) from None
            raise self._refused(name, _failure(e, f"module {module}"), file, field) from None
        except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's module raised while being imported
            raise self._refused(name, _failure(e, f"module {module}"), file, field) from None

    def _load_file(self, path: Path, name: str, file: str | Path | None, field: str | None) -> ModuleType:
        try:
            path = path.resolve()
            found = path.is_file()
        except (OSError, ValueError, RuntimeError):
            found = False
        if path in _FILE_MODULES:
            return _FILE_MODULES[path]
        if not found:
            raise self._refused(name, f"file not found: {path} (a relative path is read from the scenario "
                                "file's folder)", file, field)
        if path.suffix != ".py":
            raise self._refused(name, f"{path} is not a Python file (its name must end in .py)", file, field)
        stem = re.sub(r"\W", "_", path.stem)
        modname = f"dcsim_file_{stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"
        spec = importlib.util.spec_from_file_location(modname, path)
        if spec is None or spec.loader is None:
            raise self._refused(name, f"{path} cannot be loaded as a Python module", file, field)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod  # before running it: dataclasses and pickling look their module up
        try:
            spec.loader.exec_module(mod)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's file raised while being imported
            sys.modules.pop(modname, None)
            raise self._refused(name, _failure(e, str(path)), file, field) from None
        _FILE_MODULES[path] = mod
        return mod

    def _entry_points(self) -> dict:
        if self.group is None:
            return {}
        from importlib.metadata import entry_points

        return {ep.name: ep for ep in entry_points(group=self.group)}

    def _entry_point(self, name: str, file: str | Path | None, field: str | None) -> type[T] | None:
        ep = self._entry_points().get(name)
        if ep is None:
            return None
        dist = getattr(getattr(ep, "dist", None), "name", None)
        label = f"'{name}' (entry point '{ep.value}' in {self.group}" + (f", package {dist})" if dist else ")")
        if not is_ref(ep.value) or split_ref(ep.value)[2]:
            raise self._refused(label, f"'{ep.value}' is not module:Class", file, field)
        return self._resolve(ep.value, label, file, field)

    # ---- mapping-like view of the registered names -----------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __getitem__(self, name: str) -> type[T]:
        return self._classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def items(self) -> Iterator[tuple[str, type[T]]]:
        return iter(self._classes.items())

    def values(self) -> Iterator[type[T]]:
        return iter(self._classes.values())


class ParamsError(ValueError):
    """A named class's parameters failed its model: `field` is the parameter, `reason` what is wrong."""

    def __init__(self, field: str | None, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


class ParamsRegistry(Registry[T]):
    """A registry whose classes each carry their own pydantic `Params` model, a subclass of `params_base` (which
    refuses unknown keys; `params_name`: its public dotted name, for messages), chosen by the scenario key
    `name_field`: batching policies, power policies."""

    def __init__(self, kind: str, base: type, group: str, params_base: type, params_name: str,
                 name_field: str) -> None:
        super().__init__(kind, base=base, group=group)
        self.params_base = params_base
        self.params_name = params_name
        self.name_field = name_field

    def named(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: register the class under `name` and give it that `name`."""

        def register(cls: type[T]) -> type[T]:
            self.register(name)(cls)
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return register

    def params_class(self, name: str) -> type[T]:
        """The class a scenario names (registered, an entry point or a reference), its Params checked; a
        ParamsError on the name's field otherwise."""
        try:
            cls = self.get(name, None, self.name_field)
        except UserError as e:
            raise ParamsError(self.name_field, e.reason) from None
        params = getattr(cls, "Params", None)
        if not (isinstance(params, type) and issubclass(params, self.params_base)):
            what = getattr(params, "__qualname__", params)
            raise ParamsError(self.name_field, f"{self.kind} {name!r}: its Params ({what}) must subclass "
                              f"{self.params_name}, which refuses unknown keys")
        return cls

    def parse(self, name: str, data: dict):
        """`data` (the mapping without the name) validated by the named class's own Params model; a ParamsError
        naming the parameter that is wrong."""
        from pydantic import ValidationError

        cls = self.params_class(name)
        try:
            return cls.Params.model_validate(data)  # type: ignore[attr-defined]
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"]) or None
            msg = "unknown key (check the spelling)" if err["type"] == "extra_forbidden" else err["msg"]
            raise ParamsError(loc, msg) from None
