"""Strict JSON in: what a notify may carry, so every byte served parses everywhere.

Python's :mod:`json` is lenient in three ways that matter here, each measured on
CPython 3.11:

- it accepts ``NaN``, ``Infinity`` and ``-Infinity`` and turns ``1e999`` into
  ``inf``; re-encoded, they come out as bare ``NaN``/``Infinity``, which
  ``JSON.parse`` (and any strict parser) rejects;
- it accepts lone UTF-16 surrogates, escaped (``"\\ud800"``) or raw (a bytes body
  is decoded with ``surrogatepass``); such a string cannot be encoded as UTF-8,
  so storing it fails (the SQLite writer raised ``UnicodeEncodeError``);
- it recurses once per nesting level, in C, up to the interpreter's recursion
  limit: ~1000 levels raise ``RecursionError`` (not ``ValueError``), in ``loads``
  and again in ``dumps``.

:func:`loads` refuses all three with :class:`StrictJSONError` (a ``ValueError``
with a message for the client), checking depth without recursion. Most bodies cannot hold
any of the three, and :func:`loads` can tell from the bytes (:func:`needs_check`) without
walking the value (~3 % of the server's CPU in the long-poll cycle).
"""
from __future__ import annotations

import json
import math
import re
from typing import Iterable, NoReturn

#: Deepest nesting of arrays and objects accepted in one JSON document.
MAX_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")
#: Where an infinite float could come from (the largest finite double is ~1.8e308): an
#: exponent of three digits or more, or 200 digits in a row. A number with neither is below
#: 10^(199 + 99) and parses finite. Strings match too (a name like "/3e4f"), which only costs
#: the walk, so the pattern asks for three exponent digits rather than any "digit, e".
_HUGE_NUMBER = re.compile(rb"[0-9][eE][+-]?[0-9]{3}|[0-9]{200}")


class StrictJSONError(ValueError):
    """The document is not strict JSON; the message says what was wrong."""


def _refuse_constant(name: str) -> NoReturn:
    raise StrictJSONError(f"{name} is not a JSON number: send finite numbers only")


#: One decoder and one encoder for the process: ``json.loads`` and ``json.dumps`` with any
#: option build a new ``JSONDecoder``/``JSONEncoder`` per call, and ``JSONEncoder.encode`` a
#: new C encoder per call (~4 % of the server's CPU in the long-poll cycle, py-spy). Both
#: are stateless between calls. No check for circular references: what is encoded here is
#: parsed JSON or the server's own replies, which have none (a cycle would raise
#: ``RecursionError``, not ``ValueError``).
_DECODE = json.JSONDecoder(parse_constant=_refuse_constant).decode
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, check_circular=False)
_MAKE_C_ENCODER = getattr(json.encoder, "c_make_encoder", None)  # None outside CPython
_C_ENCODE = _MAKE_C_ENCODER and _MAKE_C_ENCODER(None, _ENCODER.default, json.encoder.encode_basestring, None,
                                                ":", ",", False, False, False)


def loads(body: bytes | str, max_depth: int = MAX_DEPTH) -> object:
    """Parse ``body`` as strict JSON: finite numbers, no lone surrogates, at most ``max_depth`` deep."""
    raw = body
    try:
        if isinstance(body, str):
            if body.startswith("\ufeff"):  # as json.loads
                raise StrictJSONError("malformed JSON: a byte order mark (U+FEFF) before the document")
        else:  # as json.loads: UTF-8, -16 or -32 by the first bytes; raw surrogates pass (checked below)
            body = body.decode(json.detect_encoding(body), "surrogatepass")
        value = _DECODE(body)
    except RecursionError:
        raise StrictJSONError(f"JSON nested deeper than {max_depth} levels") from None
    except UnicodeDecodeError:
        raise StrictJSONError("the JSON body is not valid UTF-8") from None
    except StrictJSONError:
        raise
    except ValueError as exc:  # JSONDecodeError, and int() past its digit limit
        raise StrictJSONError(f"malformed JSON: {exc}") from None
    if needs_check(raw, max_depth):
        check(value, max_depth)
    return value


def needs_check(raw: bytes | str, max_depth: int = MAX_DEPTH) -> bool:
    """False when the JSON text ``raw`` cannot parse to anything :func:`check` refuses: ASCII
    with no ``\\u`` escape (so no surrogate), no NUL (so UTF-8, not UTF-16 or -32), at most
    ``max_depth`` brackets (so not too deep) and no exponent nor 309-digit run (so every
    float is finite)."""
    if isinstance(raw, str):
        return True
    return (not raw.isascii() or b"\\u" in raw or b"\x00" in raw
            or raw.count(b"[") + raw.count(b"{") > max_depth or _HUGE_NUMBER.search(raw) is not None)


def check(value: object, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`StrictJSONError` unless ``value`` encodes as strict JSON within ``max_depth``.

    Iterative, so any depth is checked without touching the recursion limit.
    """
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise StrictJSONError("numbers must be finite (a literal too large for a double "
                                      "overflows to infinity)")
        elif isinstance(item, (dict, list)):
            if depth >= max_depth:
                raise StrictJSONError(f"JSON nested deeper than {max_depth} levels")
            children: Iterable[object] = item
            if isinstance(item, dict):
                for key in item:
                    _check_text(key)
                children = item.values()
            # ints, bools and None are always fine: only strings, floats and containers go on
            stack.extend((child, depth + 1) for child in children
                         if child is not None and not isinstance(child, int))


def _check_text(text: str) -> None:
    if not text.isascii() and _SURROGATE.search(text):
        raise StrictJSONError("strings must not contain lone UTF-16 surrogates (\\ud800-\\udfff)")


def dumps(value: object) -> str:
    """Compact JSON, non-ASCII kept as is; ``ValueError`` for a non-finite float."""
    if _C_ENCODE is None or isinstance(value, str):
        return _ENCODER.encode(value)
    return "".join(_C_ENCODE(value, 0))
