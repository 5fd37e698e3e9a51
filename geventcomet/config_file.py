"""The ``--config PATH`` file: TOML (the standard library's ``tomllib``), with the flags' names.

::

    # comet.toml
    host = "0.0.0.0"
    port = 8080
    backend = "redis://127.0.0.1:6379/0"
    max_timeout = 120          # the flag --max-timeout; "max-timeout" is accepted too
    access_log = true

Every key is a setting's name (:func:`geventcomet.config_env.key_of`); an unknown key, a key
given twice (``max_timeout`` and ``max-timeout``), a table or a value of the wrong TOML type is
an error naming the key. Numbers are TOML numbers and booleans TOML booleans (``port = "80"`` is
refused): a file is written once and read by a program, so nothing is guessed.
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
from typing import Any, Iterable

from .config_env import describe_kind, key_of, kind_of, suggest


class ConfigFileError(ValueError):
    """The file cannot be used; the message names the file and, when it is about one, the key."""


def read_config_file(path: str, fields: Iterable[dataclasses.Field]) -> dict[str, Any]:
    """The settings of the TOML file at ``path``, by field name."""
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigFileError(f"--config {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"--config {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigFileError(f"--config {path} is not UTF-8 text") from None
    by_key = {key_of(f.name): f for f in fields}
    values: dict[str, Any] = {}
    for key, value in document.items():
        f = by_key.get(key.replace("-", "_"))
        if f is None:
            known = sorted(by_key)
            raise ConfigFileError(f"{path}: unknown key {key!r}{suggest(key.replace('-', '_'), known)}; "
                                  "the keys are the flags' names (geventcomet serve --help)")
        if f.name in values:
            raise ConfigFileError(f"{path}: {key_of(f.name)!r} is given twice (with - and with _)")
        values[f.name] = typed(path, key, f, value)
    return values


def typed(path: str, key: str, f: dataclasses.Field, value: Any) -> Any:
    """``value`` if it has the field's TOML type (an integer is a fine float); else an error."""
    kind = kind_of(f)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and ok and not math.isfinite(value):
        ok = False
    if not ok:
        shown = "***" if f.metadata.get("secret") else repr(value)
        what = {bool: "a TOML boolean (true or false)", int: "a TOML integer", float: "a TOML number",
                str: "a TOML string"}[kind]
        raise ConfigFileError(f"{path}: {key} = {shown}: {describe_kind(f)}, written as {what}")
    return value
