"""The effective configuration of ``geventcomet serve``: flags over environment over file over defaults.

:func:`load` gathers the settings from the four places, remembers where each value came
from, and builds the :class:`~geventcomet.config.Config`. Any mistake becomes one
:class:`LoadError` whose message is one line naming the setting as the user wrote it (the
flag, the variable or the file key), the value, and what is allowed, e.g.::

    GEVENTCOMET_LOG_LEVEL=LOUD (or --log-level): must be DEBUG, INFO, WARNING or ERROR

:func:`describe` and :func:`as_toml` show the result with each value's origin, secrets
masked (secret fields as ``***``, credentials inside URLs by ``mask_credentials``).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from .config import Config, check_token_given_once
from .config_env import CONFIG_ENV, ConfigError, env_of, flag_of, key_of, parse_text, quoted, read_env
from .config_file import ConfigFileError, read_config_file
from .security import mask_credentials

DEFAULT = "default"


class LoadError(ValueError):
    """A configuration mistake, as one line for the user."""

    #: What the command prints before the line.
    heading = "bad configuration"


@dataclass
class Loaded:
    """A Config, where each of its values came from, and the warnings to log once logging is up."""

    config: Config
    #: Field name -> ``default``, ``flag --x``, ``env GEVENTCOMET_X`` or ``file PATH``.
    sources: dict[str, str]
    warnings: list[str] = field(default_factory=list)


def load(flags: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> Loaded:
    """The configuration from ``flags`` (field name -> text as typed, or a bool, or None) and
    ``environ``; ``flags["config"]`` (or ``GEVENTCOMET_CONFIG``) names a TOML file."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    raw: dict[str, str] = {}  # the text the user typed, to quote it back
    path = flags.get("config") or environ.get(CONFIG_ENV) or ""
    if path:
        try:
            file_values = read_config_file(path, fields.values())
        except ConfigFileError as exc:
            raise LoadError(str(exc)) from None
        values.update(file_values)
        sources.update(dict.fromkeys(file_values, f"file {path}"))
    try:
        env = read_env(fields.values(), environ)
    except ConfigError as exc:
        var = next((v for v in (env_of(exc.field), f"GEVENTCOMET_{exc.field.upper()}") if v in environ), "")
        raise LoadError(spell(exc, f"env {var}", str(exc.value))) from None
    values.update(env.values)
    for name, var in env.names.items():
        sources[name], raw[name] = f"env {var}", environ[var]
    for name, given in flags.items():
        if name not in fields or given is None:
            continue
        try:
            values[name] = given if isinstance(given, bool) else parse_text(fields[name], given)
        except ConfigError as exc:
            raise LoadError(spell(exc, f"flag {flag_of(name)}", str(given))) from None
        sources[name], raw[name] = f"flag {flag_of(name)}", str(given)
    try:
        check_token_given_once(values)
        config = Config(**values)
    except ConfigError as exc:
        source = sources.get(exc.field, DEFAULT)
        raise LoadError(spell(exc, source, raw.get(exc.field, exc.value))) from None
    return Loaded(config, {name: sources.get(name, DEFAULT) for name in fields}, env.warnings)


def spell(exc: ConfigError, source: str, value: Any) -> str:
    """The error as the user wrote the setting: ``--port abc``, ``GEVENTCOMET_PORT=abc``, a file's key."""
    name = exc.field
    shown = "***" if exc.secret else quoted(value)
    kind, _, where = source.partition(" ")
    if kind == "flag":
        return f"{flag_of(name)} {shown} (or {env_of(name)}): {exc.allowed}"
    if kind == "env":
        return f"{where}={shown} (or {flag_of(name)}): {exc.allowed}"
    if kind == "file":
        return f"{where}: {key_of(name)} = {shown} (or {flag_of(name)}, {env_of(name)}): {exc.allowed}"
    return str(exc)


def shown_value(config: Config, f: dataclasses.Field) -> Any:
    """A value as it may be shown: a secret as ``***`` (when set), URL credentials masked."""
    value = getattr(config, f.name)
    if f.metadata.get("secret") and value:
        return "***"
    return mask_credentials(value) if isinstance(value, str) else value


def describe(loaded: Loaded) -> str:
    """One line for the start-up log: each value under the place it came from."""
    groups: dict[str, list[str]] = {}
    for f in dataclasses.fields(loaded.config):
        source = loaded.sources[f.name]
        place = "environment" if source.startswith("env ") else source.split(" ")[0]
        place = f"file {source[5:]}" if place == "file" else place
        groups.setdefault(place, []).append(f"{key_of(f.name)}={shown_value(loaded.config, f)}")
    order = ["flag", "environment", *sorted(p for p in groups if p.startswith("file ")), "default"]
    return " | ".join(f"{place}: {' '.join(groups[place])}" for place in order if place in groups)


def as_dict(loaded: Loaded) -> dict[str, dict[str, Any]]:
    """``{key: {"value": ..., "from": ...}}``, secrets masked (the JSON log's structured field)."""
    return {key_of(f.name): {"value": shown_value(loaded.config, f), "from": loaded.sources[f.name]}
            for f in dataclasses.fields(loaded.config)}


def as_toml(loaded: Loaded) -> str:
    """The effective configuration as a TOML file, each line saying where its value came from."""
    lines = ["# the effective configuration of geventcomet serve (secrets shown as ***)"]
    for f in dataclasses.fields(loaded.config):
        value = shown_value(loaded.config, f)
        # A JSON string is a TOML basic string (same escapes).
        text = ("true" if value else "false") if isinstance(value, bool) else (
            json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value))
        lines.append(f"{key_of(f.name) + ' = ' + text:<48} # {loaded.sources[f.name]}")
    return "\n".join(lines) + "\n"
