"""The plugin manager: built-in sinks through the hook, installed plugins through entry points,
and configuration errors that carry their location."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict

import outbox
from outbox.callable_sink import CallableSink
from outbox.hookspecs import RegisterSink
from outbox.plugins import (
    PluginError,
    build_sinks,
    describe_plugins,
    make_plugin_manager,
    sink_types,
)
from outbox.postgres_sink import PostgresSink
from outbox.settings import ConfigError, SinkSettings
from outbox.sinks import Event, Sink


class OtherOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OtherCallableSink(Sink):
    """A third-party sink that wants the name ``callable`` too."""

    Options: ClassVar[type[BaseModel]] = OtherOptions

    async def deliver(self, event: Event) -> None:
        return None


class ClashingPlugin:
    @outbox.hookimpl
    def outbox_register_sinks(self, register: RegisterSink) -> None:
        register("callable", OtherCallableSink)


JSONL_ABSENT = "the example plugin is not installed (pip install -e plugins/outbox-jsonl)"

# A plugin the tests install (with the ``site`` fixture below), so that the entry-point path
# is tested whether or not any real plugin is installed.
ARCHIVE_PLUGIN = """
import outbox
from pydantic import BaseModel


class ArchiveOptions(BaseModel):
    pass


class ArchiveSink(outbox.Sink):
    Options = ArchiveOptions

    async def deliver(self, event):
        pass


@outbox.hookimpl
def outbox_register_sinks(register):
    register("archive", ArchiveSink)
"""


# -- registration -------------------------------------------------------------------------------


def test_built_in_sink_types_come_through_the_hook() -> None:
    manager = make_plugin_manager(entry_points=False)
    types = sink_types(manager)
    assert types["callable"] is CallableSink
    assert types["postgres"] is PostgresSink
    implementers = {impl.plugin_name for impl in manager.hook.outbox_register_sinks.get_hookimpls()}
    assert {"outbox.callable_sink", "outbox.postgres_sink"} <= implementers


def test_without_entry_points_no_installed_plugin_is_loaded() -> None:
    assert "jsonl" not in sink_types(make_plugin_manager(entry_points=False))


def test_installed_plugin_comes_through_its_entry_point(site: Path) -> None:
    install_fake_plugin(site, "fake_outbox_archive", ARCHIVE_PLUGIN)
    types = sink_types(make_plugin_manager())
    assert types["archive"] is sys.modules["fake_outbox_archive"].ArchiveSink


def test_the_example_plugin_comes_through_its_entry_point() -> None:
    jsonl = pytest.importorskip("outbox_jsonl", reason=JSONL_ABSENT)
    assert sink_types(make_plugin_manager())["jsonl"] is jsonl.JsonlSink


def test_every_registered_class_is_a_sink_with_an_options_model() -> None:
    for name, sink_class in sink_types(make_plugin_manager()).items():
        assert issubclass(sink_class, Sink), name
        assert issubclass(sink_class.Options, BaseModel), name
        assert sink_class.Options is not BaseModel, f"{name} has no Options model of its own"


def test_two_plugins_claiming_one_type_name_is_an_error_naming_both() -> None:
    manager = make_plugin_manager(entry_points=False)
    manager.register(ClashingPlugin(), name="clashing")
    with pytest.raises(PluginError) as caught:
        sink_types(manager)
    message = str(caught.value)
    assert "'callable'" in message
    assert "outbox.callable_sink" in message
    assert __name__ in message  # where OtherCallableSink lives


def test_registering_the_same_class_twice_is_harmless() -> None:
    class Again:
        @outbox.hookimpl
        def outbox_register_sinks(self, register: RegisterSink) -> None:
            register("callable", CallableSink)

    manager = make_plugin_manager(entry_points=False)
    manager.register(Again())
    assert sink_types(manager)["callable"] is CallableSink


def test_describe_plugins_says_who_brings_what(site: Path) -> None:
    install_fake_plugin(site, "fake_outbox_archive", ARCHIVE_PLUGIN)
    described = {info.name: info for info in describe_plugins(make_plugin_manager())}
    assert described["outbox.callable_sink"].sink_types == ("callable",)
    assert described["outbox.callable_sink"].package == "outbox-relay"
    assert described["outbox.postgres_sink"].sink_types == ("postgres",)
    archive = described["archive"]
    assert (archive.package, archive.version, archive.sink_types) == (
        "fake-outbox-archive",
        "0.1",
        ("archive",),
    )


def test_describe_plugins_names_the_example_plugin() -> None:
    pytest.importorskip("outbox_jsonl", reason=JSONL_ABSENT)
    described = {info.name: info for info in describe_plugins(make_plugin_manager())}
    jsonl = described["jsonl"]
    assert (jsonl.package, jsonl.version, jsonl.sink_types) == ("outbox-jsonl", "0.1.0", ("jsonl",))


# -- plugins that are broken -----------------------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path where tests install fake distributions."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("fake_outbox_"):
            del sys.modules[name]


def install_fake_plugin(site: Path, module: str, source: str) -> None:
    (site / f"{module}.py").write_text(source, encoding="utf-8")
    dist_info = site / f"{module}-0.1.dist-info"
    dist_info.mkdir()
    name = module.replace("_", "-")
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n", encoding="utf-8"
    )
    (dist_info / "entry_points.txt").write_text(
        f"[outbox]\n{module.removeprefix('fake_outbox_')} = {module}\n", encoding="utf-8"
    )


def test_plugin_that_fails_to_import_is_named(site: Path) -> None:
    install_fake_plugin(site, "fake_outbox_broken", "raise RuntimeError('no licence key')\n")
    with pytest.raises(PluginError) as caught:
        make_plugin_manager()
    message = str(caught.value)
    assert "'broken'" in message
    assert "fake_outbox_broken" in message
    assert "no licence key" in message


def test_installed_plugin_claiming_a_taken_name(site: Path) -> None:
    source = (
        "import outbox\n"
        "from outbox.callable_sink import CallableSink\n"
        "class Imposter(CallableSink):\n"
        "    pass\n"
        "@outbox.hookimpl\n"
        "def outbox_register_sinks(register):\n"
        "    register('postgres', Imposter)\n"
    )
    install_fake_plugin(site, "fake_outbox_imposter", source)
    with pytest.raises(PluginError, match="'postgres'") as caught:
        sink_types(make_plugin_manager())
    assert "outbox.postgres_sink" in str(caught.value)
    assert "fake_outbox_imposter" in str(caught.value)


def test_installed_plugin_with_a_misspelt_hook(site: Path) -> None:
    source = "import outbox\n@outbox.hookimpl\ndef outbox_register_sink(register):\n    pass\n"
    install_fake_plugin(site, "fake_outbox_typo", source)
    with pytest.raises(PluginError, match="outbox_register_sink"):
        make_plugin_manager()


# -- build_sinks: options validated by each type, errors located ---------------------------------


def build(**sinks: dict[str, Any]) -> dict[str, Sink]:
    configured = {name: SinkSettings.model_validate(values) for name, values in sinks.items()}
    return build_sinks(configured, sink_types(make_plugin_manager(entry_points=False)))


def errors_of(**sinks: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        build(**sinks)
    return caught.value.errors


def test_valid_sinks_are_built() -> None:
    built = build(
        cache={"type": "callable", "target": "os:getcwd", "concurrency": 4},
        audit={"type": "postgres", "schema": "audit", "table": "events"},
    )
    assert isinstance(built["cache"], CallableSink)
    assert built["cache"].concurrency == 4
    assert isinstance(built["audit"], PostgresSink)
    assert built["audit"].transactional  # no dsn: the outbox's own database


def test_postgres_sink_with_a_dsn_is_not_transactional(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_TEST_AUDIT_URL", "postgresql://u:pw@elsewhere/audit")
    built = build(audit={"type": "postgres", "table": "t", "dsn": {"env": "OUTBOX_TEST_AUDIT_URL"}})
    assert not built["audit"].transactional


def test_unknown_type_lists_the_known_ones() -> None:
    ((where, message),) = errors_of(cache={"type": "kafka"})
    assert where == "sinks.cache.type"
    assert "'kafka'" in message
    assert "known: callable, postgres" in message


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("outbox_no_such_module_xyz:handle", "cannot import module 'outbox_no_such_module_xyz'"),
        ("os:no_such_function", "module 'os' has no attribute 'no_such_function'"),
        ("os.path:no.such", "module 'os.path' has no attribute 'no.such'"),
        ("os:sep", "'os:sep' is not callable"),
        ("os.getcwd", "is not of the form 'package.module:function'"),
        ("os:", "is not of the form"),
        (":getcwd", "is not of the form"),
    ],
)
def test_callable_target_errors(target: str, expected: str) -> None:
    ((where, message),) = errors_of(cache={"type": "callable", "target": target})
    assert where == "sinks.cache.target"
    assert expected in message


def test_callable_target_whose_module_fails_as_it_runs(site: Path) -> None:
    (site / "fake_outbox_exploding.py").write_text("1 / 0\n", encoding="utf-8")
    ((where, message),) = errors_of(cache={"type": "callable", "target": "fake_outbox_exploding:f"})
    assert where == "sinks.cache.target"
    assert "ZeroDivisionError" in message


def test_nested_callable_target_resolves() -> None:
    assert isinstance(build(cache={"type": "callable", "target": "os.path:join"})["cache"], Sink)


def test_unknown_option_key() -> None:
    assert errors_of(cache={"type": "callable", "target": "os:getcwd", "colour": "red"}) == [
        ("sinks.cache.colour", "unknown key")
    ]


def test_missing_required_option() -> None:
    assert errors_of(cache={"type": "callable"}) == [("sinks.cache.target", "Field required")]


def test_postgres_option_errors_use_the_configured_key() -> None:
    errors = dict(errors_of(audit={"type": "postgres", "schema": "bad-schema", "table": "t"}))
    assert set(errors) == {"sinks.audit.schema"}


def test_missing_secret_of_a_sink_option() -> None:
    errors = errors_of(audit={"type": "postgres", "table": "t", "dsn": {"env": "OUTBOX_TEST_NOPE"}})
    assert errors == [("sinks.audit.dsn", "environment variable OUTBOX_TEST_NOPE is not set")]


def test_every_sink_error_is_reported_at_once() -> None:
    errors = errors_of(
        a={"type": "nope"},
        b={"type": "callable", "target": "os:getcwd", "colour": 1},
        c={"type": "callable", "target": "os:sep"},
        d={"type": "callable", "target": "os:getcwd"},  # valid; not an error
    )
    assert [where for where, _ in errors] == ["sinks.a.type", "sinks.b.colour", "sinks.c.target"]
