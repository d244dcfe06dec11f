"""Registry of training methods; every module in models/methods/ is imported so its methods register."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from models.methods.base import TrainingMethod

_METHODS: dict[str, type[TrainingMethod]] = {}
_DISCOVERED = False


def register(cls: type[TrainingMethod]) -> type[TrainingMethod]:
    """Class decorator: make a TrainingMethod available under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a non-empty class attribute 'name'")
    existing = _METHODS.get(name)
    if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"training method {name!r} is registered twice ({existing.__qualname__}, {cls.__qualname__})")
    _METHODS[name] = cls
    return cls


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    import models.methods as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in {"base", "registry"} and not info.name.startswith("_"):
            importlib.import_module(f"models.methods.{info.name}")
    _DISCOVERED = True


def available_methods() -> list[str]:
    """Names of all registered training methods, sorted."""
    _discover()
    return sorted(_METHODS)


def get_method_class(name: str) -> type[TrainingMethod]:
    """The class registered under ``name``."""
    _discover()
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown training method {name!r} (available: {', '.join(sorted(_METHODS))})") from None


def get_method(name: str, **options: Any) -> TrainingMethod:
    """Instantiate the method ``name`` with ``options``."""
    return get_method_class(name)(**options)
