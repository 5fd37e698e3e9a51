"""Where a subscriber keeps its cursor between runs: a file, or any object with load/save.

A file is written whole to a temporary name beside it and renamed over it, so a process
killed while saving leaves the old cursor or the new one, never half of either.
"""
from __future__ import annotations

import os
import tempfile
from typing import Protocol, runtime_checkable


@runtime_checkable
class CursorStore(Protocol):
    """What ``cursor_store=`` takes besides a path."""

    def load(self) -> str | None:
        """The saved cursor, or None when there is none yet."""

    def save(self, cursor: str) -> None:
        """Keep ``cursor`` (called after the events before it were handed out and taken)."""


class FileCursorStore:
    """A cursor kept in one small text file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._saved: str | None = None

    def load(self) -> str | None:
        try:
            with open(self.path, encoding="utf-8") as file:
                text = file.read().strip()
        except FileNotFoundError:
            return None
        self._saved = text or None
        return self._saved

    def save(self, cursor: str) -> None:
        if cursor == self._saved:
            return
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, temporary = tempfile.mkstemp(prefix=".cursor-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(cursor)
            os.replace(temporary, self.path)
        except BaseException:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
            raise
        self._saved = cursor


def cursor_store(store: "str | os.PathLike[str] | CursorStore | None") -> CursorStore | None:
    """``store`` as a :class:`CursorStore`: a path becomes a :class:`FileCursorStore`."""
    if store is None or isinstance(store, CursorStore):
        return store
    return FileCursorStore(store)
