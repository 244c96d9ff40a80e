"""The ``Secret`` type: an option that the configuration names rather than spells out.

A sink's options model declares a password, a token or a URL with credentials as
:data:`Secret`; the operator then writes ``{ env = "NAME" }`` or ``{ file = "/path" }``
instead of the value, and the model holds a :class:`pydantic.SecretStr` that never appears
in a ``repr`` or a log line. The value itself is accepted too.

Sinks import this module, never :mod:`outbox.settings`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr

__all__ = ["Secret", "resolve_secret"]


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
