"""The ``Secret`` type: an option that the configuration names rather than spells out.

A sink's options model declares a password, a token or a URL with credentials as
:data:`Secret`; the operator then writes ``{ env = "NAME" }`` or ``{ file = "/path" }``
instead of the value, and the model holds a :class:`pydantic.SecretStr` that never appears
in a ``repr`` or a log line. The value itself is accepted too.

Sinks import this module, never :mod:`outbox.settings`.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, SecretStr

__all__ = ["Secret", "literal_secret", "resolve_secret", "secret_fields"]


def resolve_secret(value: Any) -> Any:
    """``{ env = "NAME" }`` and ``{ file = "path" }`` become the secret they point to."""
    if isinstance(value, Mapping) and set(value) in ({"env"}, {"file"}):
        if "env" in value:
            name = str(value["env"])
            if name not in os.environ:
                raise ValueError(f"environment variable {name} is not set")
            return SecretStr(os.environ[name])
        path = Path(str(value["file"])).expanduser()
        try:
            return SecretStr(path.read_text(encoding="utf-8").strip())
        except OSError as error:
            raise ValueError(f"cannot read secret file {path}: {error.strerror}") from error
    return value


Secret = Annotated[SecretStr, BeforeValidator(resolve_secret)]
"""A :class:`pydantic.SecretStr` that may be given as ``{ env = "NAME" }`` or
``{ file = "path" }``."""


def secret_fields(model: type[BaseModel]) -> dict[str, str]:
    """The fields of ``model`` that hold a secret, each by the key a configuration file
    writes (its alias, if it has one) to its name."""
    return {
        field.alias or name: name
        for name, field in model.model_fields.items()
        if _holds_secret(field.annotation)
    }


def _holds_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    return any(_holds_secret(arg) for arg in typing.get_args(annotation))


def literal_secret(value: Any) -> bool:
    """True when ``value``, written in a configuration file for a secret option, is the
    secret itself rather than where to find it. A URL counts only when it carries a
    password: most URLs are addresses, not credentials."""
    if isinstance(value, list):
        return any(literal_secret(item) for item in value)
    if not isinstance(value, str) or not value:
        return False
    if "://" in value:
        try:
            return bool(urlsplit(value).password)
        except ValueError:  # not a URL after all; say nothing rather than guess
            return False
    if "=" in value and " " in value.strip():  # a libpq "key=value ..." string
        return "password=" in value
    return True
