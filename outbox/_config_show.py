"""``outbox config show``: the effective configuration, secrets redacted, and where each value
came from: the default, the file (with its path), an environment variable (by name) or a flag.

The settings load as every command loads them (:func:`outbox.settings.load_settings`); the
provenance is found afterwards by asking the same sources pydantic-settings reads (the TOML
file, the ``OUTBOX_*`` environment) which keys they hold, in the same order of precedence:
flags < nothing; environment < flags; file < environment; defaults last. Nothing in the
loading path changes for it.

A sink's options are shown as its type's model validated them (its defaults filled in, every
``Secret`` field redacted); when that model cannot be had (an unknown type, an option that
does not validate: ``outbox config check`` says why), the options as written, with every key
that names a secret redacted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from pydantic import ValidationError
from pydantic_settings import EnvSettingsSource, TomlConfigSettingsSource

from outbox import _output, plugins
from outbox._command import Command, config_option, database_url_option
from outbox.exceptions import PluginError
from outbox.settings import DEFAULT_CONFIG_FILE, Settings, SinkSettings, load_settings

REDACTED = "**********"
# Option names that hold a secret when a sink's own model cannot say (see the docstring).
_SECRET_NAME = re.compile(r"secret|password|passwd|token|dsn|credential|api_?key", re.I)
_URL_CREDENTIALS = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", re.I)

Path_ = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Entry:
    key: str
    """Dotted: ``relay.batch_size``, ``sinks.billing.url``."""
    value: Any
    source: str
    """``default``, ``file``, ``environment`` or ``flag``."""
    origin: str | None
    """The file's path, the variable's or the flag's name; None for a default."""


@dataclasses.dataclass(frozen=True)
class Sources:
    """What each source holds, by key path: the file's keys, the environment's, the flags'."""

    file: Path | None
    file_values: dict[str, Any]
    env_values: dict[str, Any]
    flags: dict[Path_, str]
    """Key path to the flag (or click's environment variable) that set it."""


def effective(settings: Settings, sources: Sources) -> list[Entry]:
    """Every leaf of the effective configuration, redacted, with its source."""
    tree = settings.model_dump(mode="json", by_alias=True, exclude={"sinks"})
    tree["sinks"] = {name: _sink_tree(sink) for name, sink in settings.sinks.items()}
    return [_entry(path, value, sources) for path, value in _leaves(tree, ())]


def _leaves(tree: Any, path: Path_) -> list[tuple[Path_, Any]]:
    if isinstance(tree, dict) and (tree or not path):
        return [leaf for key, value in tree.items() for leaf in _leaves(value, (*path, key))]
    return [(path, tree)]


def _entry(path: Path_, value: Any, sources: Sources) -> Entry:
    key = ".".join(path)
    if path in sources.flags:
        origin = sources.flags[path]
        kind = "environment" if origin.startswith("OUTBOX_") else "flag"
        return Entry(key, value, kind, origin)
    if _holds(sources.env_values, path):
        return Entry(key, value, "environment", _variable(path))
    if _holds(sources.file_values, path):
        return Entry(key, value, "file", str(sources.file))
    return Entry(key, value, "default", None)


def _holds(values: Mapping[str, Any], path: Path_) -> bool:
    """Whether ``values`` sets ``path``, or a prefix of it as a whole (a JSON object in one
    environment variable, a list of tables)."""
    node: Any = values
    for part in path:
        if not isinstance(node, Mapping) or part.lower() not in {k.lower() for k in node}:
            return False
        node = next(v for k, v in node.items() if k.lower() == part.lower())
    return True


def _variable(path: Path_) -> str:
    """The ``OUTBOX_*`` variable that set ``path``: the longest prefix of it in the environment
    (names are case-insensitive; a nested key's is ``OUTBOX_RELAY__BATCH_SIZE``)."""
    present = {name.upper() for name in os.environ}
    for end in range(len(path), 0, -1):
        name = "OUTBOX_" + "__".join(path[:end]).upper()
        if name in present:
            return name
    return "OUTBOX_" + "__".join(path).upper()


def _sink_tree(sink: SinkSettings) -> dict[str, Any]:
    shared = sink.model_dump(mode="json", exclude_none=True, exclude=set(sink.options()))
    return {**shared, **_options(sink)}


def _options(sink: SinkSettings) -> dict[str, Any]:
    try:
        sink_class = plugins.sink_types(plugins.make_plugin_manager()).get(sink.type)
        if sink_class is not None:
            dumped: dict[str, Any] = sink_class.Options.model_validate(sink.options()).model_dump(
                mode="json"
            )
            return dumped
    except (PluginError, ValidationError):
        pass
    return {name: _redact_written(name, value) for name, value in sink.options().items()}


def _redact_written(name: str, value: Any) -> Any:
    if isinstance(value, Mapping) and set(value) in ({"env"}, {"file"}):
        return REDACTED
    if _SECRET_NAME.search(name):
        return REDACTED
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(rf"\g<1>{REDACTED}@", value)
    return value


def sources(config: Path | None, flags: dict[Path_, str]) -> Sources:
    """What the file ``load_settings`` reads (``config``, else the default file if it exists)
    and the environment hold."""
    path = config or (DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None)
    file_values = {} if path is None else TomlConfigSettingsSource(Settings, toml_file=path)()
    return Sources(path, file_values, EnvSettingsSource(Settings)(), flags)


@click.command("show", cls=Command)
@config_option
@database_url_option()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def config_show(
    ctx: click.Context, config: Path | None, database_url: str | None, as_json: bool
) -> None:
    """The effective configuration, secrets redacted, and where each value came from:
    default, file (its path), environment (the variable) or flag."""
    settings = load_settings(config, database_url=database_url)
    flags: dict[Path_, str] = {}
    if database_url is not None:
        by_env = ctx.get_parameter_source("database_url") == ParameterSource.ENVIRONMENT
        flags[("database_url",)] = "OUTBOX_DATABASE_URL" if by_env else "--database-url"
    found = sources(config, flags)
    entries = effective(settings, found)
    if as_json:
        file = None if found.file is None else str(found.file)
        _output.echo_json({"file": file, "settings": [dataclasses.asdict(e) for e in entries]})
        return
    click.echo(f"configuration file: {found.file or 'none'}")
    rows = [
        [e.key, _shown(e.value), e.source + (f" ({e.origin})" if e.origin else "")] for e in entries
    ]
    _output.table([["KEY", "VALUE", "SOURCE"], *rows])


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
