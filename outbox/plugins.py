"""The plugin manager and the sink types it knows.

The built-in sinks register through the same hook as third-party ones; third-party
packages are found through the entry-point group ``outbox``.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy
from pydantic import ValidationError

from outbox import hookspecs
from outbox.exceptions import ConfigError, PluginError

if TYPE_CHECKING:
    from outbox.settings import SinkSettings
    from outbox.sinks import Sink

BUILTIN_PLUGINS = ("outbox.callable_sink", "outbox.postgres_sink", "outbox.webhook_sink")


def make_plugin_manager(*, entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the built-in sinks and, unless disabled, installed plugins.

    Raises :class:`PluginError` when a plugin fails to load or implements an unknown hook.
    """
    manager = pluggy.PluginManager("outbox")
    manager.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name)
    if entry_points:
        _load_entry_points(manager)
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as error:  # a misspelt hook name
        raise PluginError(str(error)) from error
    return manager


def _load_entry_points(manager: pluggy.PluginManager) -> None:
    try:
        manager.load_setuptools_entrypoints("outbox")
    except Exception as error:
        culprit = _failing_entry_point()
        raise PluginError(
            f"plugin {culprit} failed to load: {type(error).__name__}: {error}"
        ) from error


def _failing_entry_point() -> str:
    for entry_point in importlib.metadata.entry_points(group="outbox"):
        try:
            entry_point.load()
        except Exception:
            return f"{entry_point.name!r} ({entry_point.value})"
    return "(unknown)"


def sink_types(manager: pluggy.PluginManager) -> dict[str, type[Sink]]:
    """Every registered sink type by name.

    Raises :class:`PluginError` when two plugins claim one name.
    """
    found: dict[str, type[Sink]] = {}

    def register(name: str, sink_class: type[Sink]) -> None:
        if name in found and found[name] is not sink_class:
            raise PluginError(
                f"sink type {name!r} is registered twice: by {found[name].__module__} "
                f"and by {sink_class.__module__}"
            )
        found[name] = sink_class

    manager.hook.outbox_register_sinks(register=register)
    return found


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    name: str
    package: str | None
    version: str | None
    sink_types: tuple[str, ...]


def describe_plugins(manager: pluggy.PluginManager) -> list[PluginInfo]:
    """What each loaded plugin is and which sink types it brings."""
    distributions = dict(manager.list_plugin_distinfo())
    described = []
    for name, plugin in manager.list_name_plugin():
        registered = _types_registered_by(plugin)
        dist = distributions.get(plugin)
        package = dist.metadata["Name"] if dist is not None else _own_package(name)
        version = dist.version if dist is not None else _own_version(name)
        described.append(PluginInfo(name, package, version, registered))
    return described


def _types_registered_by(plugin: object) -> tuple[str, ...]:
    registered: list[str] = []
    impl = getattr(plugin, "outbox_register_sinks", None)
    if impl is not None:
        impl(register=lambda type_name, _sink_class: registered.append(type_name))
    return tuple(registered)


def _own_package(plugin_name: str) -> str | None:
    return "outbox-relay" if plugin_name.startswith("outbox.") else None


def _own_version(plugin_name: str) -> str | None:
    if not plugin_name.startswith("outbox."):
        return None
    try:
        return importlib.metadata.version("outbox-relay")
    except importlib.metadata.PackageNotFoundError:
        return None


def build_sinks(
    configured: Mapping[str, SinkSettings], types: Mapping[str, type[Sink]]
) -> dict[str, Sink]:
    """Validate each ``[sinks.NAME]`` with its type's model and build the enabled sinks.

    Raises :class:`~outbox.exceptions.ConfigError` listing every problem with its location.
    """
    errors: list[tuple[str, str]] = []
    sinks: dict[str, Sink] = {}
    for name, settings in configured.items():
        sink_class = types.get(settings.type)
        if sink_class is None:
            known = ", ".join(sorted(types)) or "none"
            errors.append(
                (f"sinks.{name}.type", f"unknown sink type {settings.type!r} (known: {known})")
            )
            continue
        try:
            options = sink_class.Options.model_validate(settings.options())
        except ValidationError as error:
            errors.extend(
                (f"sinks.{name}." + ".".join(str(p) for p in item["loc"]), _message(item))
                for item in error.errors()
            )
            continue
        sinks[name] = sink_class(options)
    if errors:
        raise ConfigError(errors)
    return sinks


def _message(item: Any) -> str:
    if item["type"] == "extra_forbidden":
        return "unknown key"
    return str(item["msg"]).removeprefix("Value error, ")
