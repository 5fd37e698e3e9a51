"""The names of a setting, and reading settings from text: flags and ``GEVENTCOMET_*`` variables.

One setting has one name in three spellings, all derived from its :class:`~geventcomet.config.Config`
field (``timeout_s``): the flag ``--timeout``, the file key ``timeout`` (``max_timeout`` for
``max_timeout_s``; dashes are accepted too) and the environment variable ``GEVENTCOMET_TIMEOUT``.
A field's ``_s`` (seconds) suffix is dropped from every spelling; the environment names that kept
it (``GEVENTCOMET_TIMEOUT_S``, those of geventcomet 0.1) still work, with a warning.

This module knows nothing of :class:`Config` itself (it is given the fields), so that
``config`` can use it without an import cycle.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

ENV_PREFIX = "GEVENTCOMET_"
#: The variable naming a configuration file, as ``--config`` does.
CONFIG_ENV = ENV_PREFIX + "CONFIG"
#: Variables geventcomet's own processes pass to each other; never a user's setting.
INTERNAL_ENV = frozenset({"GEVENTCOMET_WORKER_CONFIG", "GEVENTCOMET_READY_FD", "GEVENTCOMET_HEARTBEAT_FD",
                          "GEVENTCOMET_METRICS_FD", "GEVENTCOMET_METRICS_FILE"})
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class ConfigError(ValueError):
    """A setting the configuration refuses: ``field`` (a Config field name), the ``value``
    refused and ``allowed``, what would be accepted. Its text names the flag and the variable."""

    def __init__(self, field: str, value: Any, allowed: str, *, secret: bool = False) -> None:
        self.field, self.value, self.allowed, self.secret = field, value, allowed, secret
        shown = "***" if secret else quoted(value)
        super().__init__(f"{flag_of(field)} {shown} (or {env_of(field)}): {allowed}")


def quoted(value: Any) -> str:
    """``value`` as typed when it is one plain word (``70000``, ``LOUD``), else in quotes."""
    text = str(value)
    return text if re.fullmatch(r"[\w.:/@*+,-]+", text) else repr(text)


def key_of(name: str) -> str:
    """The file key and the base of the other spellings: ``timeout_s`` -> ``timeout``."""
    return name.removesuffix("_s")


def flag_of(name: str) -> str:
    """``max_timeout_s`` -> ``--max-timeout``."""
    return "--" + key_of(name).replace("_", "-")


def env_of(name: str) -> str:
    """``max_timeout_s`` -> ``GEVENTCOMET_MAX_TIMEOUT``."""
    return ENV_PREFIX + key_of(name).upper()


def old_env_of(name: str) -> str | None:
    """The variable's 0.1 name, when it differs: ``GEVENTCOMET_MAX_TIMEOUT_S``."""
    old = ENV_PREFIX + name.upper()
    return old if old != env_of(name) else None


def kind_of(f: dataclasses.Field) -> type:
    if isinstance(f.type, type):
        return f.type
    return {"int": int, "float": float, "bool": bool}.get(str(f.type), str)


def describe_kind(f: dataclasses.Field) -> str:
    """What a value of this field looks like, for an error message."""
    kind = kind_of(f)
    if kind is bool:
        return "must be true or false (also 1/0, yes/no, on/off)"
    if kind is int:
        return "must be a whole number"
    if kind is float:
        return "must be a number of seconds" if f.name.endswith("_s") else "must be a number"
    return "must be text"


def parse_text(f: dataclasses.Field, raw: str) -> Any:
    """The value of ``raw`` (from a flag or a variable) for field ``f``; ConfigError if it is none."""
    kind = kind_of(f)
    text = raw.strip()
    if kind is bool:
        if text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
        raise ConfigError(f.name, raw, describe_kind(f))
    if kind is str:
        return raw
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f.name, raw, describe_kind(f), secret=bool(f.metadata.get("secret"))) from None
    if kind is float and not math.isfinite(value):
        raise ConfigError(f.name, raw, describe_kind(f) + " (finite)")
    return value


@dataclass
class EnvSettings:
    """What the environment sets: ``values`` by field, the variable each came from, warnings."""

    values: dict[str, Any] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def read_env(fields: Iterable[dataclasses.Field], environ: Mapping[str, str]) -> EnvSettings:
    """The settings of ``GEVENTCOMET_*`` variables (ConfigError for a value that is none).

    Warns about a variable under its old name, and about every unknown ``GEVENTCOMET_*`` one
    (once, in one warning), naming the closest real name.
    """
    found = EnvSettings()
    by_name: dict[str, dataclasses.Field] = {}
    for f in fields:
        by_name[env_of(f.name)] = f
        old = old_env_of(f.name)
        if old is not None:
            by_name[old] = f
    for var in sorted(environ):
        setting = by_name.get(var)
        if setting is None or (var != env_of(setting.name) and env_of(setting.name) in environ):
            continue
        f = setting
        if var != env_of(f.name):
            found.warnings.append(f"{var} is the old name of {env_of(f.name)}: it still works, "
                                  f"but rename it")
        found.values[f.name] = parse_text(f, environ[var])
        found.names[f.name] = var
    shadowed = [var for var, f in by_name.items() if var in environ and var != env_of(f.name)
                and env_of(f.name) in environ]
    for var in shadowed:
        found.warnings.append(f"{var} is ignored: {env_of(by_name[var].name)} is set too")
    unknown = [var for var in sorted(environ) if var.startswith(ENV_PREFIX) and var not in by_name
               and var not in INTERNAL_ENV and var != CONFIG_ENV]
    if unknown:
        bases = [name.removeprefix(ENV_PREFIX) for name in [*by_name, CONFIG_ENV]]
        hints = [var + suggest(var.removeprefix(ENV_PREFIX), bases).replace("mean ", "mean " + ENV_PREFIX)
                 for var in unknown]
        found.warnings.append("unknown environment variables ignored: " + ", ".join(hints))
    return found


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
