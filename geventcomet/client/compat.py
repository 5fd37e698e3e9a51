"""httpx in the asyncio flavour: importing it in a gevent-monkey-patched program, one TLS context.

Measured (httpcore 1.0, trio 0.2x, gevent 24): httpcore imports ``trio`` when it is
installed and catches only ``ImportError``; gevent's ``patch_all`` removes ``select.epoll``,
so trio's import then fails with ``AttributeError`` and httpx cannot be imported at all.
Where ``select.epoll`` is missing on Linux (patched), trio cannot work in this process
anyway: it is marked absent (``sys.modules["trio"] = None``) before httpx is imported.
Nothing is done otherwise. The asyncio flavour takes ``httpx`` from here (``from .compat import
httpx``), so the guard always runs first.
"""
from __future__ import annotations

import select
import ssl
import sys


def guard_trio_import() -> None:
    if sys.platform.startswith("linux") and not hasattr(select, "epoll") and "trio" not in sys.modules:
        sys.modules["trio"] = None  # type: ignore[assignment]


guard_trio_import()

import httpx  # noqa: E402  (after the guard)

_SSL_CONTEXT: list[ssl.SSLContext] = []


def ssl_context() -> ssl.SSLContext:
    """One TLS context for every client this process makes (measured: ``httpx.Client()``
    builds a new one each time, loading the CA bundle: about 10 ms idle, 100 ms on a loaded
    2-core machine, so 200 asyncio subscribers took 20 s just to be made)."""
    if not _SSL_CONTEXT:
        _SSL_CONTEXT.append(httpx.create_ssl_context())
    return _SSL_CONTEXT[0]
