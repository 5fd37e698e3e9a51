"""Errors a client can cause, each carrying its HTTP status.

The web layer (:mod:`geventcomet.app`) renders any :class:`CometError` as
``{"error": message}`` with its status; anything else is a bug, logged with its
traceback and answered with a generic 500.
"""
from __future__ import annotations


class CometError(Exception):
    """Base class: a request the server refuses, with the status that says why."""

    status = 400
    reason = "Bad Request"

    def __init__(self, message: str, *, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class BadRequest(CometError):
    pass


class Unauthorized(CometError):
    status, reason = 401, "Unauthorized"


class Forbidden(CometError):
    status, reason = 403, "Forbidden"


class AuthRefused(CometError):
    """401 or 403 for a missing, bad or insufficient credential; rendered as
    ``{"error": message, "auth": kind}``. ``kind`` is one of ``missing``, ``invalid``,
    ``expired`` (401, with ``WWW-Authenticate``), ``channel``, ``client``, ``publish``
    (403) and ``admin`` (either)."""

    def __init__(self, kind: str, message: str, *, status: int = 403) -> None:
        headers: tuple[tuple[str, str], ...] = ()
        if status == 401:
            # RFC 6750 3.1: no error code when no credential was sent at all.
            challenge = ('Bearer realm="geventcomet"' if kind in ("missing", "admin") else
                         f'Bearer realm="geventcomet", error="invalid_token", error_description="{kind}"')
            headers = (("WWW-Authenticate", challenge),)
        super().__init__(message, headers=headers)
        self.status = status
        self.reason = "Unauthorized" if status == 401 else "Forbidden"
        self.kind = kind


class NotFound(CometError):
    status, reason = 404, "Not Found"


class MethodNotAllowed(CometError):
    status, reason = 405, "Method Not Allowed"


class LengthRequired(CometError):
    status, reason = 411, "Length Required"


class PayloadTooLarge(CometError):
    status, reason = 413, "Payload Too Large"


class UnsupportedMediaType(CometError):
    status, reason = 415, "Unsupported Media Type"


class Unavailable(CometError):
    """503: over capacity, shutting down, or the backend did not acknowledge a write."""

    status, reason = 503, "Service Unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers=(("Retry-After", str(retry_after_s)),))


class BackendError(Exception):
    """A backend could not do what was asked (unreachable, not acknowledged)."""


class ClientGone(Exception):
    """The client hung up while its request was held; nothing is written back."""


class LimitReached(BackendError):
    """A bound on what clients make the backend hold is reached: answered 503 with its own
    message (which names the bound and its flag), nothing stored. Not a failure: room
    comes back as registrations, keys or channels expire."""


class ChannelLimitReached(LimitReached):
    """A publish would create a channel beyond ``max_channels_total``: answered 503, nothing stored."""


class ClientLimitReached(LimitReached):
    """A registration of a new client beyond ``max_clients_total`` (a refresh always works)."""

    def __init__(self, limit: int, client_ttl_s: float) -> None:
        super().__init__(
            f"too many registered clients: this server holds at most {limit} (--max-clients-total); "
            f"an idle registration expires after {client_ttl_s:g} s (--client-ttl), retry later")


class IdempotencyKeyLimitReached(LimitReached):
    """A notify with a new Idempotency-Key while ``max_idempotency_keys`` are remembered
    (a retry of a remembered key still answers its id): nothing stored."""

    def __init__(self, limit: int, idempotency_ttl_s: float) -> None:
        super().__init__(
            f"too many Idempotency-Keys remembered: this server keeps at most {limit} "
            f"(--max-idempotency-keys), each for {idempotency_ttl_s:g} s (--idempotency-ttl); "
            "retry later, or notify without the header")
