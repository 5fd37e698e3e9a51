"""Start-up checks of ``geventcomet serve`` that need more than the values: the backend named
exists, ``--workers`` has a shared one, and the address can be listened on.

Each failure is a :class:`~geventcomet.config_load.LoadError`: one line naming the flag (and
its variable, or the one it came from), the value and what would work, so that the command
prints it and exits 2 instead of a traceback from deep inside the server.

The listen check binds a throwaway socket to the address with the options of the real bind
(``SO_REUSEADDR`` as gevent's listener, so a port in TIME_WAIT after a restart is not taken for
a port in use; with ``--workers``, ``SO_REUSEPORT`` as the supervisor) and closes it at once, so
it refuses exactly what the server's own bind would. The server binds again moments later; a
port taken in between is still reported by the server itself, in its log.
"""
from __future__ import annotations

import errno
import socket

from .backends import backend_class
from .config_env import ConfigError
from .config_load import Loaded, LoadError, spell
from .security import mask_credentials


def check_backend(loaded: Loaded) -> None:
    """LoadError if ``--backend`` names no backend (or one whose package is missing), or if
    ``--workers`` above 1 asks for one that processes cannot share."""
    config = loaded.config
    try:
        shared = backend_class(config.backend).shared
    except ValueError as exc:
        masked = mask_credentials(config.backend)
        raise LoadError(spell(ConfigError("backend", masked, str(exc)), loaded.sources["backend"], masked)) from None
    if config.workers > 1 and not shared:
        scheme = config.backend.split(":", 1)[0].lower()
        allowed = (f"cannot use the {scheme} backend, which is not shared between processes (a notify "
                   "reaching one worker would never wake clients waiting on another): it needs a shared "
                   "backend such as --backend redis://HOST:PORT/DB (or run one process)")
        raise LoadError(spell(ConfigError("workers", config.workers, allowed), loaded.sources["workers"],
                              config.workers))


class ListenError(LoadError):
    """The address cannot be listened on (in use, not this machine's, not allowed)."""

    heading = "cannot start"


def check_listen(loaded: Loaded) -> None:
    """LoadError if ``--host``/``--port`` (and ``--metrics-port``) cannot be listened on."""
    config = loaded.config
    host_error = try_bind(config.host, config.port, reuse_port=config.workers > 1)
    if host_error is not None:
        name, allowed = host_error
        value = config.host if name == "host" else config.port
        raise ListenError(spell(ConfigError(name, value, allowed), loaded.sources[name], value))
    if config.metrics_port:
        metrics_error = try_bind("127.0.0.1", config.metrics_port)
        if metrics_error is not None:
            raise ListenError(spell(ConfigError("metrics_port", config.metrics_port, metrics_error[1]),
                                  loaded.sources["metrics_port"], config.metrics_port))


def try_bind(host: str, port: int, reuse_port: bool = False) -> tuple[str, str] | None:
    """None if ``(host, port)`` can be bound; else the field at fault and what is wrong.

    ``reuse_port``: bind as the supervisor does (``SO_REUSEPORT``), which shares the port with
    other such sockets of this user, e.g. the workers of a supervisor being replaced.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "not a valid name"
        return "host", (f"not an IP address or a name this machine can resolve ({reason}); "
                        "127.0.0.1 listens for this machine only, 0.0.0.0 on all its addresses")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        return bind_error(exc, host, port)
    finally:
        sock.close()
    return None


def bind_error(exc: OSError, host: str, port: int) -> tuple[str, str]:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return "port", (f"{where}: Address already in use (another program listens there): stop it, "
                        "choose another port, or 0 for a free one")
    if exc.errno == errno.EADDRNOTAVAIL:
        return "host", ("not an address of this machine (Cannot assign requested address): 127.0.0.1 "
                        "listens for this machine only, 0.0.0.0 on all its addresses")
    if exc.errno == errno.EACCES:
        return "port", "ports below 1024 need root (or CAP_NET_BIND_SERVICE): choose 1024 or above"
    return "host", f"cannot listen on {where}: {exc.strerror}"
