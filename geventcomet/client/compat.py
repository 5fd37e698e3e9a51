"""Importing httpx in a gevent-monkey-patched program.

Measured (httpcore 1.0, trio 0.2x, gevent 24): httpcore imports ``trio`` when it is
installed and catches only ``ImportError``; gevent's ``patch_all`` removes ``select.epoll``,
so trio's import then fails with ``AttributeError`` and httpx cannot be imported at all.
Where ``select.epoll`` is missing on Linux (patched), trio cannot work in this process
anyway: it is marked absent (``sys.modules["trio"] = None``) before httpx is imported.
Nothing is done otherwise. Import this module before ``httpx``.
"""
from __future__ import annotations

import select
import sys


def guard_trio_import() -> None:
    if sys.platform.startswith("linux") and not hasattr(select, "epoll") and "trio" not in sys.modules:
        sys.modules["trio"] = None  # type: ignore[assignment]


guard_trio_import()
