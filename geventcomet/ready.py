"""Readiness over an inherited pipe: a server says once, explicitly, where it listens.

The protocol, the same for every parent (the supervisor and its workers, the test and
bench helpers, the old experiments):

1. The parent makes a pipe (:class:`ReadyPipe`), passes its write end to the child
   (``pass_fds``) and names it in the environment variable :data:`ENV`.
2. The child takes the name out of its environment at start (:func:`take_fd`, so that
   its own children never inherit a stale number) and, once its socket listens, writes
   ONE line of JSON and closes the pipe (:func:`announce`)::

       {"host": "127.0.0.1", "port": 8080, "pid": 1234}

   A supervisor adds ``"workers": [pid, ...]`` and writes its line once every worker listens.
3. The parent reads that line (:meth:`ReadyPipe.wait`). End of file before a whole line
   means the child will never be ready: the write end closes with the child's process
   (or when it gives up), so a child that fails before listening is known at once
   instead of being waited for until a timeout.

Standard library only (the old experiments' thread servers use it in processes that
must keep real threads). The parent's wait uses ``select.select``, which gevent's
monkey-patching makes cooperative.

Measured fact (gevent 26.9): the monkey-patched ``os.close`` of a pipe does not close it
at once but in the event loop's next check phase, which comes after the loop's next
poll returns. A parent that closed its copy of the write end that way and then waited
in ``select`` would not see the child's end of file until some other event or its
whole timeout. Nothing ever watches a write end here, so it is closed at once with
``os.closerange`` (:func:`close_now`), which gevent leaves alone.
"""
from __future__ import annotations

import json
import os
import select
import time
from dataclasses import dataclass
from typing import MutableMapping

#: Environment variable naming the inherited write end of the readiness pipe.
ENV = "GEVENTCOMET_READY_FD"
#: An announcement is one short line; a longer one is not an announcement.
MAX_LINE_BYTES = 4096


@dataclass(frozen=True)
class Announcement:
    """What a server announced: where it listens, its pid, and (a supervisor) its workers' pids."""

    host: str
    port: int
    pid: int
    workers: tuple[int, ...] = ()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @classmethod
    def parse(cls, line: bytes) -> "Announcement":
        """Read one announcement line; ValueError if it is not one."""
        try:
            fields = json.loads(line)
            announcement = cls(host=fields["host"], port=fields["port"], pid=fields["pid"],
                               workers=tuple(fields.get("workers", ())))
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"not a readiness announcement: {line[:200]!r} ({exc})") from None
        numbers = (announcement.port, announcement.pid, *announcement.workers)
        if not isinstance(announcement.host, str) or not all(type(n) is int for n in numbers):
            raise ValueError(f"not a readiness announcement: {line[:200]!r}")
        return announcement


def take_fd(environ: MutableMapping[str, str] = os.environ) -> int | None:
    """The readiness fd this process inherited (None: nobody asked), removed from ``environ``."""
    raw = environ.pop(ENV, None)
    if raw is None:
        return None
    if not raw.isdigit():
        raise ValueError(f"{ENV} must name an open file descriptor, not {raw!r}")
    return int(raw)


def announce(fd: int | None, host: str, port: int, *, workers: tuple[int, ...] = ()) -> None:
    """Tell the parent that this process listens on ``host:port``, then close ``fd``.

    ``fd`` None: no parent asked, nothing to do. A parent that is gone is not an error.
    """
    if fd is None:
        return
    fields: dict[str, object] = {"host": host, "port": port, "pid": os.getpid()}
    if workers:
        fields["workers"] = list(workers)
    try:
        os.write(fd, json.dumps(fields).encode() + b"\n")  # one write, far below PIPE_BUF: atomic
    except OSError:  # EPIPE: the parent stopped waiting
        pass
    finally:
        withdraw(fd)


def withdraw(fd: int | None) -> None:
    """Close ``fd`` without announcing: the parent reads end of file, "this will not listen"."""
    if fd is not None:
        close_now(fd)


def close_now(fd: int) -> None:
    """Close ``fd`` now, even under gevent (see the module docstring); never raises."""
    os.closerange(fd, fd + 1)


class ReadyPipe:
    """The parent's side. Spawn the child with :meth:`child_env` and :attr:`pass_fds`,
    call :meth:`spawned` right after (even when spawning failed), then :meth:`wait`."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()  # both non-inheritable but for pass_fds
        self._child_end_open = True

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self.write_fd,)

    def child_env(self) -> dict[str, str]:
        return {ENV: str(self.write_fd)}

    def spawned(self) -> None:
        """Close the parent's copy of the write end: the child's copy is then the only one,
        so its exit is an end of file here."""
        if self._child_end_open:
            self._child_end_open = False
            close_now(self.write_fd)

    def wait(self, timeout_s: float) -> Announcement | None:
        """The child's announcement; None if it closed the pipe first (it failed before
        listening). TimeoutError if it said nothing for ``timeout_s``. Closes the pipe."""
        self.spawned()
        deadline = time.monotonic() + timeout_s
        data = b""
        try:
            while b"\n" not in data:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no readiness announcement in {timeout_s:.0f} s")
                readable, _, _ = select.select([self.read_fd], [], [], remaining)
                if not readable:
                    continue
                chunk = os.read(self.read_fd, MAX_LINE_BYTES)
                if not chunk:
                    return None
                data += chunk
                if len(data) > MAX_LINE_BYTES:
                    raise ValueError(f"not a readiness announcement: {data[:200]!r}")
        finally:
            self.close()
        return Announcement.parse(data.split(b"\n", 1)[0])

    def close(self) -> None:
        self.spawned()
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1
