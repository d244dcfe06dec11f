"""Registry of training methods: `@METHODS.register(name)` where a method is defined; `models.methods` imports them all."""

from __future__ import annotations

from typing import Any

from firmware_protocol.registry import Registry
from models.methods.base import TrainingMethod
from models.methods.options import describe_options

METHODS: Registry[type[TrainingMethod[Any]]] = Registry("training method")


def available_methods() -> list[str]:
    """Names of all registered training methods, sorted."""
    return METHODS.names()


def get_method_class(name: str) -> type[TrainingMethod[Any]]:
    """The class registered under `name` (one-line ValueError naming the known ones otherwise)."""
    return METHODS.get(name)


def get_method(name: str, **options: Any) -> TrainingMethod[Any]:
    """Instantiate the method `name` with raw `options` (parsed into its `Options`)."""
    return get_method_class(name)(**options)


def describe_methods() -> list[dict[str, Any]]:
    """Every registered method with its one-line description and options (name, type, default, help), JSON-able."""
    return [
        {
            "name": name,
            "description": cls.description(),
            "options": [
                {"name": o.name, "type": o.kind, "default": o.default, "help": o.help}
                for o in describe_options(cls.Options)
            ],
        }
        for name, cls in METHODS.items()
    ]
