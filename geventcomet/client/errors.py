"""The exceptions of :mod:`geventcomet.client`.

:class:`Refused` and its subclasses are errors that retrying cannot fix (the server
answered 400, 401, 403, 404, 413, 415, ...): they are raised at once. :class:`Unavailable`
is raised when the bounded retry time ran out on 503s, connection errors or timeouts.
"""
from __future__ import annotations


class CometClientError(Exception):
    """Base class of every error this client raises."""


class Refused(CometClientError):
    """The server refused the request for a reason that retrying will not change.

    ``status`` is the HTTP status, ``message`` the server's ``error`` text, ``auth`` its
    ``auth`` kind (``"missing"``, ``"expired"``, ``"publish"``, ...) when it sent one.
    """

    def __init__(self, status: int, message: str, auth: str | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.auth = status, message, auth


class BadRequest(Refused):
    """400 (or 415): the request itself is wrong (a channel name, data that is not strict JSON)."""


class AuthError(Refused):
    """401 or 403: a missing, invalid or expired token, or one that does not cover the channel."""


class NotFound(Refused):
    """404: for example a notify to a client that is not registered (or expired)."""


class PayloadTooLarge(Refused):
    """413: the body is over the server's ``--max-body-bytes``, or a batch over ``--max-batch-events``."""


class Unavailable(CometClientError):
    """The server could not be reached or kept answering 503 for the whole retry time."""


def refused(status: int, message: str, auth: str | None = None) -> Refused:
    """The :class:`Refused` subclass for ``status``."""
    kind: type[Refused] = {400: BadRequest, 415: BadRequest, 401: AuthError, 403: AuthError,
                           404: NotFound, 413: PayloadTooLarge}.get(status, Refused)
    return kind(status, message, auth)
