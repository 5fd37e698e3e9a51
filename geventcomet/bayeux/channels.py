"""Bayeux channel names and wildcards, mapped onto geventcomet's one channel space (no I/O).

A Bayeux channel ``/a/b`` *is* the geventcomet channel ``/a/b``: a Bayeux publish is
stored there, ``/register``, ``/stream`` and ``POST /notify`` see the same events.

Wildcards are *feeds*: ordinary backend channels that a publish to ``/a/b/c`` is also
appended to, one per pattern that matches it::

    /a/b/*   ->  bx.one:/a/b        /a/b/**  ->  bx.any:/a/b
    /*       ->  bx.one:            /a/**    ->  bx.any:/a        /**  ->  bx.any:

so a publish to ``/a/b/c`` also goes to ``bx.one:/a/b``, ``bx.any:/a/b``, ``bx.any:/a``
and ``bx.any:``. A feed's event data is the original event itself (``{"channel":
"/a/b/c","id":N,"data":..}``, the bytes a direct subscriber gets), so a delivery from a
feed is a slice of the stored bytes, never a JSON parse. Because feeds live in the
backend, a wildcard subscriber is correct across workers and restarts exactly as a
direct one is, and it reads its feed by position like any channel.

``/meta/**`` is the protocol itself, never stored; ``/service/**`` goes to the server
only (acknowledged, not stored, not broadcast). Names are geventcomet channel names
(letters, digits, ``_ . : -`` in segments, at most 128 characters) that start with ``/``
and have no empty segment; ``*`` and ``**`` only as the last segment of a subscription.
"""
from __future__ import annotations

import re
from functools import lru_cache

ONE_PREFIX = "bx.one:"  # the feed of ``PARENT/*``
ANY_PREFIX = "bx.any:"  # the feed of ``PARENT/**``
CONTROL_PREFIX = "bx.s:"  # a session's wake-up channel: its events are never delivered
MAX_CHANNEL_CHARS = 128
#: A concrete Bayeux channel: ``/segment(/segment)*``.
_NAME_RE = re.compile(r"(?:/[A-Za-z0-9_.:-]+)+\Z")
_EVENT_HEAD = b'{"channel":"'
_DATA_KEY = b',"data":'


class ChannelError(ValueError):
    """Not a usable Bayeux channel name; the message says why (a ``405`` in Bayeux form)."""


def is_meta(channel: str) -> bool:
    return channel == "/meta" or channel.startswith("/meta/")


def is_service(channel: str) -> bool:
    return channel == "/service" or channel.startswith("/service/")


def check_name(channel: object) -> str:
    """A concrete channel name (no wildcard) a client may publish to or subscribe to."""
    if not isinstance(channel, str) or not channel:
        raise ChannelError("channel must be a non-empty string")
    if len(channel) > MAX_CHANNEL_CHARS:
        raise ChannelError(f"channel name longer than {MAX_CHANNEL_CHARS} characters")
    if not _NAME_RE.match(channel):
        raise ChannelError(f"invalid channel {channel[:40]!r}: /segment/segment of letters, digits, _ . : -")
    return channel


def check_subscription(name: object) -> str:
    """A channel or a pattern (``/a/*``, ``/a/**``, ``/*``, ``/**``) a client may subscribe to."""
    if not isinstance(name, str):
        raise ChannelError("subscription must be a channel name or a list of them")
    parent, wildcard = split_pattern(name)
    if wildcard:
        if parent:
            check_name(parent)
        if len(feed_of(name)) > MAX_CHANNEL_CHARS:
            raise ChannelError(f"pattern longer than {MAX_CHANNEL_CHARS - len(ANY_PREFIX)} characters")
        return name
    return check_name(name)


def split_pattern(name: str) -> tuple[str, str]:
    """``("/a", "**")`` for ``/a/**``, ``("/a", "*")`` for ``/a/*``, ``(name, "")`` for a channel."""
    for wildcard in ("**", "*"):
        if name.endswith("/" + wildcard):
            return name[: -len(wildcard) - 1], wildcard
    return name, ""


def feed_of(subscription: str) -> str:
    """The backend channel a subscription reads: the channel itself, or a wildcard's feed."""
    parent, wildcard = split_pattern(subscription)
    if wildcard == "*":
        return ONE_PREFIX + parent
    if wildcard == "**":
        return ANY_PREFIX + parent
    return subscription


def is_wildcard_feed(feed: str) -> bool:
    return feed.startswith((ONE_PREFIX, ANY_PREFIX))


@lru_cache(maxsize=4096)
def feeds_of_publish(channel: str) -> tuple[str, ...]:
    """The wildcard feeds a publish to ``channel`` may be appended to (deepest first)."""
    segments = channel.split("/")[1:]
    parents = ["/".join(["", *segments[:depth]]) for depth in range(len(segments) - 1, -1, -1)]
    return (ONE_PREFIX + parents[0], *(ANY_PREFIX + parent for parent in parents))


def matches(pattern: str, channel: str) -> bool:
    """``channel`` is matched by the subscription ``pattern`` (a channel matches itself)."""
    parent, wildcard = split_pattern(pattern)
    if not wildcard:
        return pattern == channel
    if not channel.startswith(parent + "/"):
        return False
    return wildcard == "**" or "/" not in channel[len(parent) + 1:]


def control_channel(client_id: str) -> str:
    return CONTROL_PREFIX + client_id


def event_channel(event: bytes) -> str:
    """The channel of an encoded event (``{"channel":"NAME",...``); names need no escapes."""
    return event[len(_EVENT_HEAD): event.index(b'"', len(_EVENT_HEAD))].decode()


def inner_event(event: bytes) -> bytes | None:
    """The original event a feed's event carries, or None if it does not carry one
    (something other than this module published to the feed)."""
    start = event.find(_DATA_KEY, len(_EVENT_HEAD))
    if start < 0:
        return None
    inner = event[start + len(_DATA_KEY): -1]
    return inner if inner.startswith(_EVENT_HEAD + b"/") else None


_CONTROL_HEAD = _EVENT_HEAD + CONTROL_PREFIX.encode()


def _channels_only(subscriptions: tuple[str, ...]) -> bool:
    """No pattern among them (a channel name has no ``*``): checked without a cache lookup,
    which would miss on every connect with thousands of sessions each on its own channels."""
    return "*" not in "".join(subscriptions)


def feeds_of(subscriptions: tuple[str, ...]) -> tuple[str, ...]:
    """The feeds a session with these (distinct) subscriptions reads, each once, in order."""
    if _channels_only(subscriptions):
        return subscriptions  # each its own feed
    return _pattern_feeds(subscriptions)


@lru_cache(maxsize=4096)  # the same few sets of patterns come back on every connect
def _pattern_feeds(subscriptions: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(feed_of(name) for name in subscriptions))


@lru_cache(maxsize=4096)
def _overlap(subscriptions: tuple[str, ...]) -> tuple[frozenset[str], tuple[str, ...], dict[str, str]]:
    exact = frozenset(name for name in subscriptions if not split_pattern(name)[1])
    patterns = tuple(name for name in subscriptions if split_pattern(name)[1])
    return exact, patterns, {feed_of(pattern): pattern for pattern in patterns}


def select_deliveries(events: list[bytes], subscriptions: tuple[str, ...]) -> list[bytes]:
    """The events a session is owed, each once, from what its feeds returned.

    A concrete channel's event goes as it is. A feed's event goes as the original
    event, unless the session also holds the channel itself or an earlier pattern (in
    ``subscriptions`` order) that matches it: then that subscription delivers it.
    Control events, and feed events that do not match their pattern, are dropped.
    """
    if _channels_only(subscriptions):  # every event but a wake-up is owed
        return [event for event in events if not event.startswith(_CONTROL_HEAD)]
    exact, patterns, by_feed = _overlap(subscriptions)
    chosen: list[bytes] = []
    for event in events:
        channel = event_channel(event)
        if channel in exact:
            chosen.append(event)
            continue
        pattern = by_feed.get(channel)
        if pattern is None:
            continue  # a control event, or a channel no longer subscribed
        inner = inner_event(event)
        if inner is None:
            continue
        origin = event_channel(inner)
        if origin in exact or not matches(pattern, origin):
            continue
        if next(p for p in patterns if matches(p, origin)) == pattern:
            chosen.append(inner)
    return chosen
