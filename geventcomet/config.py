"""Server configuration: one frozen dataclass, every field with its default and its help.

A field's flag, file key and environment variable are derived from its name
(:mod:`geventcomet.config_env`: ``timeout_s`` is ``--timeout``, ``timeout``,
``GEVENTCOMET_TIMEOUT``). A Config checks its own values and refuses a wrong one with
:class:`ConfigError`, which names the flag, the variable and what is allowed.
Precedence (:mod:`geventcomet.config_load`): flag, then environment, then the
``--config`` file, then the default here.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from .config_env import CONFIG_ENV, ENV_PREFIX, ConfigError, key_of, parse_text, read_env
from .config_file import read_config_file
from .security import host_policy, mask_credentials

__all__ = ["Config", "ConfigError", "ENV_PREFIX", "parse_value", "read_token_file"]
#: File descriptors kept back from the hold limit for the listener, keep-alive
#: connections between polls, logs and backend connections.
FD_RESERVE = 300


def _opt(default: Any, help: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"help": help, "secret": secret})


@dataclass(frozen=True)
class Config:
    """Everything the server can be told. Durations are float seconds."""

    host: str = _opt("127.0.0.1", "address to listen on")
    port: int = _opt(8080, "port to listen on (0 picks a free one)")
    backend: str = _opt("memory", "where events live: memory, sqlite:///path or redis://host:port/db")
    workers: int = _opt(1, "processes sharing the port (needs a shared backend)")
    timeout_s: float = _opt(25.0, "default hold time of a long-poll before the timeout reply")
    max_timeout_s: float = _opt(120.0, "largest timeout a client may ask for")
    backlog: int = _opt(1000, "events kept per channel for clients between polls")
    backlog_age_s: float = _opt(3600.0, "age after which a kept event is dropped")
    max_channels: int = _opt(16, "most channels one poll may name")
    max_body_bytes: int = _opt(64 * 1024, "largest notify body (413 beyond)")
    max_header_bytes: int = _opt(16 * 1024, "largest request head (431 beyond)")
    header_timeout_s: float = _opt(10.0, "time for a request's line and headers to arrive (408 after)")
    keepalive_timeout_s: float = _opt(75.0, "idle time before an unused keep-alive connection is closed")
    body_timeout_s: float = _opt(10.0, "time for a request body to arrive once its head has (408 after)")
    write_timeout_s: float = _opt(30.0, "time one reply (or one stream batch) may take to be sent; "
                                        "a client reading slower is dropped")
    max_reply_bytes: int = _opt(1024 * 1024, "largest poll reply or stream batch; a longer backlog is "
                                             "paged (the cursor says where the page stopped)")
    max_reply_events: int = _opt(1000, "most events in one poll reply or stream batch (paged beyond)")
    max_channels_total: int = _opt(100_000, "most channels the memory and sqlite backends hold (503 beyond)")
    max_clients_total: int = _opt(500_000, "most client registrations held at once (503 to a new client beyond)")
    max_idempotency_keys: int = _opt(500_000, "most Idempotency-Keys remembered at once (503 to a notify "
                                              "with a new key beyond)")
    max_backlog_bytes: int = _opt(512 * 1024 * 1024, "most bytes of kept events over all channels of the "
                                                     "memory and sqlite backends (oldest trimmed beyond)")
    max_batch_events: int = _opt(1000, "most events one batch notify ({\"events\": [...]}) may carry (413 beyond)")
    max_connections: int = _opt(0, "most open client connections (a new one beyond gets 503 and is "
                                   "closed); 0 = open-file limit - 100")
    max_connections_per_ip: int = _opt(0, "most open connections from one client address (503 beyond); "
                                          "0 = no limit (behind a proxy every client has its address)")
    max_waiting: int = _opt(0, "most requests held at once (503 beyond); 0 = open-file limit - 300")
    worker_stall_timeout_s: float = _opt(10.0, "with --workers: a worker whose event loop has not "
                                                "answered for this long is killed and replaced")
    drain_delay_s: float = _opt(0.0, "on SIGTERM, answer /readyz 503 for this long while still serving, "
                                     "then answer held requests (a load balancer stops sending first)")
    bayeux_session_ttl_s: float = _opt(60.0, "idle time after which a Bayeux session (a CometD or Faye "
                                              "client id) expires; its next message gets 402")
    redis_min_replicas: int = _opt(0, "Redis: answer a notify 200 only once this many replicas have it "
                                      "(Redis WAIT), else 503; 0 = do not wait")
    redis_replica_timeout_s: float = _opt(0.5, "Redis: longest WAIT for --redis-min-replicas before the "
                                               "notify is answered 503")
    client_ttl_s: float = _opt(300.0, "idle time after which a client registration expires")
    idempotency_ttl_s: float = _opt(300.0, "how long an Idempotency-Key is remembered")
    notify_token: str = _opt("", "bearer token /notify requires (empty: open); prefer "
                                 "--notify-token-file or the environment, which ps does not show",
                             secret=True)
    notify_token_file: str = _opt("", "file whose first line is the notify token (read at start, "
                                      "and by each worker; keeps the token out of ps)")
    token_secret: str = _opt("", "HS256 secret: subscriber and publisher JWTs signed with it are accepted "
                                 "(empty, and no --token-public-key: channels are public)", secret=True)
    token_public_key: str = _opt("", "PEM file of a public key: RS256/ES256 JWTs signed by its private key "
                                     "are accepted")
    public_channels: str = _opt("", "comma-separated channel patterns (name, or prefix ending in *) "
                                    "that need no token")
    authorizer: str = _opt("", "module:function called once per registration with the request and "
                               "its channels; returns the channels it grants")
    client_secret: str = _opt("", "key that signs server-issued client ids, so that a client id alone "
                                  "proves nothing (empty: kept by the backend, shared by its workers)",
                              secret=True)
    cors_origins: str = _opt("", "comma-separated origins allowed cross-origin, or *")
    allowed_hosts: str = _opt("", "comma-separated Host header values accepted (empty: any); "
                                  "guards against DNS rebinding")
    log_level: str = _opt("INFO", "DEBUG, INFO, WARNING or ERROR")
    log_format: str = _opt("text", "text, or json for one JSON object per log line")
    metrics_port: int = _opt(0, "also serve /metrics (and only it) on this port of 127.0.0.1, with no "
                                "token; 0 = off (/metrics is then on the main port, behind the admin token)")
    access_log: bool = _opt(False, "log every request at INFO (noisy with many clients)")
    test_hooks: bool = _opt(False, "enable /stats?waiting=N (wait until N requests are held), "
                                   "for tests and benchmarks; off in production")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_field(f, getattr(self, f.name))
        if not 0 <= self.timeout_s <= self.max_timeout_s:
            raise ConfigError("timeout_s", self.timeout_s,
                              f"must be between 0 and --max-timeout ({self.max_timeout_s})")
        if self.client_ttl_s <= self.max_timeout_s:
            raise ConfigError("client_ttl_s", self.client_ttl_s,
                              f"must be longer than --max-timeout ({self.max_timeout_s}), or a waiting "
                              "client's registration could expire under it")
        if self.allowed_hosts:
            try:
                host_policy(self.allowed_hosts)  # a typo is a start-up error, not a 500 per request
            except ValueError as exc:
                raise ConfigError("allowed_hosts", self.allowed_hosts, str(exc)) from None
        if self.notify_token_file:  # resolved here, so every way of building a Config sees the token
            # The file wins over a token already set: a worker gets both (its parent resolved the
            # file) and re-reads the file, so a token changed in the file applies on SIGHUP.
            object.__setattr__(self, "notify_token", read_token_file(self.notify_token_file))

    @property
    def cors_origin_set(self) -> frozenset[str]:
        return frozenset(o.strip() for o in self.cors_origins.split(",") if o.strip())

    def describe(self) -> str:
        """The configuration as one line (``key=value``, secrets masked); the command's start-up
        log says where each value came from (:func:`geventcomet.config_load.describe`)."""
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = "***"
            elif isinstance(value, str):
                value = mask_credentials(value)  # redis://:PASSWORD@host
            parts.append(f"{key_of(f.name)}={value}")
        return " ".join(parts)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> "Config":
        """Build a Config from the file named by ``GEVENTCOMET_CONFIG`` (if any), then the other
        ``GEVENTCOMET_*`` variables, then ``overrides`` (field names).

        A variable under its old name, or an unknown one, is logged as a warning (for gunicorn,
        which builds its Config here); ``geventcomet serve`` uses :mod:`geventcomet.config_load`,
        which reads a ``--config`` file too.
        """
        fields = dataclasses.fields(cls)
        path = environ.get(CONFIG_ENV)
        env = read_env(fields, environ)
        for warning in env.warnings:
            logging.getLogger("geventcomet").warning("%s", warning)
        values = {**(read_config_file(path, fields) if path else {}), **env.values,
                  **{k: v for k, v in overrides.items() if v is not None}}
        check_token_given_once(values)
        return cls(**values)


def check_token_given_once(values: Mapping[str, Any]) -> None:
    if values.get("notify_token") and values.get("notify_token_file"):
        raise ConfigError("notify_token", "", "give the notify token once: --notify-token or "
                          "--notify-token-file, not both", secret=True)


#: Fields that count things and must be at least 1; every other number must be at least 0.
AT_LEAST_ONE = frozenset({"backlog", "max_channels", "max_body_bytes", "max_header_bytes", "workers",
                          "max_reply_bytes", "max_reply_events", "max_channels_total", "max_clients_total",
                          "max_idempotency_keys", "max_backlog_bytes", "max_batch_events"})
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")


def check_field(f: dataclasses.Field, value: Any) -> None:
    """ConfigError unless ``value`` is allowed for field ``f`` on its own."""
    name = f.name
    if name in ("port", "metrics_port") and not 0 <= value <= 65535:
        raise ConfigError(name, value, "must be a port number from 0 to 65535"
                          + (" (0 picks a free one)" if name == "port" else " (0 = off)"))
    if name == "log_level" and str(value).upper() not in LOG_LEVELS:
        raise ConfigError(name, value, "must be DEBUG, INFO, WARNING or ERROR")
    if name == "log_format" and value not in LOG_FORMATS:
        raise ConfigError(name, value, "must be text or json")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if name in AT_LEAST_ONE and value < 1:
            raise ConfigError(name, value, "must be at least 1")
        if value < 0 and name != "timeout_s":  # its range names --max-timeout (__post_init__)
            raise ConfigError(name, value, "must be 0 or more")


def read_token_file(path: str) -> str:
    """The notify token in ``path``: its first line, stripped. A clear ``ValueError`` when
    the file is missing, unreadable or empty.

    The error never quotes the file's content.
    """
    try:
        with open(path, encoding="utf-8") as file:
            token = file.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("notify_token_file", path, "cannot be read: "
                          f"{exc.strerror if isinstance(exc, OSError) else 'not UTF-8 text'}") from None
    if not token:
        raise ConfigError("notify_token_file", path, "is empty: its first line must be the token")
    return token


def parse_value(f: dataclasses.Field, raw: str) -> Any:
    """The value of text ``raw`` for field ``f`` (kept for callers of 0.1; see config_env.parse_text)."""
    return parse_text(f, raw)
