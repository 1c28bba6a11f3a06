"""Named classes of one kind: routers, batching policies, meters, trace and profile importers, engines.

Every choice a user makes by name takes this one shape: a class registers itself with `@REGISTRY.register("name")`
in the file that defines it, so adding one touches one file, and a lookup of an unknown name is refused naming
the file, the field and the names that exist.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from dcsim.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes of one kind by name; reads like a read-only mapping (`name in reg`, `reg[name]`, `sorted(reg)`)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # in messages: "unknown <kind> 'x'"
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: file the class under `name`."""

        def add(cls: type[T]) -> type[T]:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} '{name}' is registered twice ({self._classes[name].__qualname__} "
                                 f"and {cls.__qualname__})")
            self._classes[name] = cls
            return cls

        return add

    def get(self, name: object, file: str | None = None, field: str | None = None) -> type[T]:
        """The class registered as `name`; an unknown name is a UserError naming the file, the field and the
        known names."""
        if not isinstance(name, str) or name not in self._classes:
            raise UserError(f"unknown {self.kind} {name!r} (known: {', '.join(sorted(self._classes))})", file, field)
        return self._classes[name]

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
