"""Registries: names to the things users pick by name (attacks, training methods, datasets,
backbones, metrics), so the CLI, configs, validation and tests enumerate what exists instead of
hard-coding lists. Adding an entry is one decorated definition; nothing else changes.

>>> ATTACKS = Registry("attack")
>>> @ATTACKS.register
... class Displacement(Attack): name = "displacement"
>>> ATTACKS.create("displacement", eps=0.1, steps=10)
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """A dict of name -> entry, in registration order, with one-line errors for unknown names and
    for options an entry's constructor does not take."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, entry: T = None, *, name: str | None = None):
        """Register ``entry`` under ``name`` (default: its ``name`` attribute). Usable as a decorator."""
        def add(obj):
            key = name or getattr(obj, "name", None)
            if not key:
                raise TypeError(f"a {self.kind} needs a name to be registered")
            self[key] = obj
            return obj
        return add if entry is None else add(entry)

    def lookup(self, name: str) -> T:
        if name not in self:
            close = difflib.get_close_matches(str(name), list(self), n=1)
            raise ConfigError(f"unknown {self.kind} '{name}'" + (f"; did you mean '{close[0]}'?" if close else "")
                              + f"; choose from {', '.join(self)}")
        return self[name]

    def create(self, name: str, *args, **kwargs) -> Any:
        """Call the entry ``name`` with ``args`` and ``kwargs``, after checking ``kwargs`` against its signature."""
        entry = self.lookup(name)
        check_options(entry, kwargs, f"{self.kind} '{name}'", skip=len(args))
        return entry(*args, **kwargs)


def accepted_options(fn: Callable) -> set[str]:
    """Keyword names ``fn`` (a function or a class) accepts. A class's ``__init__`` that forwards
    ``**kwargs`` to its base also accepts the base's options, up the method resolution order."""
    names: set[str] = set()
    targets = [c.__init__ for c in fn.__mro__ if "__init__" in vars(c)] if inspect.isclass(fn) else [fn]
    for target in targets:
        params = inspect.signature(target).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def flag(name: str, value) -> bool:
    """An on/off option of a registered component, refused unless it is a boolean (YAML's true/false;
    the command line's ``KEY=true`` arrives as one)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def switch(value):
    """A three-way option's value (``auto | on | off``) with YAML's bare on/off, which it reads as
    booleans, turned back into the words; any other value unchanged (for the caller to check)."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


def check_options(fn: Callable, options: dict, what: str, skip: int = 0) -> None:
    """Raise a one-line ConfigError naming any key of ``options`` that ``fn`` does not take."""
    allowed = accepted_options(fn)
    if skip and not inspect.isclass(fn):
        allowed -= set(list(inspect.signature(fn).parameters)[:skip])
    unknown = set(options) - allowed
    if unknown:
        raise ConfigError(f"{what} takes no option(s) {', '.join(sorted(unknown))}"
                          + (f"; it takes {', '.join(sorted(allowed))}" if allowed else ""))
