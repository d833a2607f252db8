"""Lossless JSON for column values: the one encoding every on-disk and wire format uses.

JSON holds strings, numbers, booleans, null, lists and objects.  Every other
value a column commonly holds is written as a one-key object whose key names
its type, so it is restored exactly without knowing the schema::

    datetime  {"$datetime": "2024-05-01T12:00:00+00:00"}   date, time likewise
              {"$datetime": "2024-05-01T14:00:00+02:00[Europe/Paris]"}  (a zoneinfo zone, RFC 9557)
    timedelta {"$timedelta": [days, seconds, microseconds]}
    Decimal   {"$decimal": "12.50"}        UUID  {"$uuid": "..."}
    bytes     {"$bytes": "<base64>"}       Enum  {"$enum": ["module:Class", "NAME"]}
    NaN, ±infinity                         {"$float": "NaN"}, {"$float": "-Infinity"}
    a dict that looks like a tag           {"$dict": {...}}

so what is written is standard JSON, which every parser reads.

A subclass of str, int or float (``markupsafe.Markup``, a ``class UserId(int)``)
is written as its plain value, and read back as that.

Comparisons against the database go through the column type (see ``verify``),
so this layer never needs the schema.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import json
import math
import sys
import uuid
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "decode",
    "decode_row",
    "decode_values",
    "dumps",
    "encode",
    "encode_row",
    "encode_values",
    "loads",
]

_PLAIN = frozenset({str, int, float, bool, type(None)})

# A subclass of a plain type (markupsafe.Markup, a ``class UserId(int)``) is written as its
# plain value: the json module would write it so, and a column of that type reads back the
# base type anyway.  Each base's own method, so that a subclass's override can't change the
# value.  Enums (IntEnum, StrEnum) are tagged before this, and bool can't be subclassed.
_PLAIN_OF_SUBCLASS: tuple[tuple[type, Callable[[Any], Any]], ...] = (
    (str, str.__str__),
    (int, int.__int__),
    (float, float.__float__),
)


def encode(value: Any) -> Any:
    """Return a JSON-ready form of ``value`` that :func:`decode` turns back into it."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    encoder = _ENCODERS.get(kind)
    if encoder is not None:
        return encoder(value)
    if isinstance(value, enum.Enum):
        cls = type(value)
        return {"$enum": [f"{cls.__module__}:{cls.__qualname__}", value.name]}
    for base, encoder in _ENCODERS.items():
        if isinstance(value, base):
            return encoder(value)
    for base, plain in _PLAIN_OF_SUBCLASS:
        if isinstance(value, base):
            return plain(value)
    raise TypeError(
        f"cannot encode a value of type {kind.__qualname__} as JSON; "
        "use a column type whose Python values are JSON, datetime, Decimal, UUID, bytes or Enum"
    )


def encode_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Encode every value of a column-name mapping."""
    return {key: value if type(value) in _PLAIN else encode(value) for key, value in row.items()}


def decode(data: Any) -> Any:
    """Restore a value written by :func:`encode`."""
    if type(data) is dict:
        if len(data) == 1:
            ((key, payload),) = data.items()
            decoder = _DECODERS.get(key)
            if decoder is not None:
                return decoder(payload)
        return {key: decode(value) for key, value in data.items()}
    if type(data) is list:
        return [decode(item) for item in data]
    return data


def encode_values(values: Iterable[Any]) -> list[Any]:
    """Encode a sequence of values (a primary key) into a list."""
    return [value if type(value) in _PLAIN else encode(value) for value in values]


def decode_values(data: Iterable[Any]) -> list[Any]:
    """Decode a list written by :func:`encode_values`."""
    return [value if type(value) in _PLAIN else decode(value) for value in data]


def decode_row(data: Mapping[str, Any]) -> dict[str, Any]:
    """Decode every value of a column-name mapping."""
    return {key: value if type(value) in _PLAIN else decode(value) for key, value in data.items()}


# allow_nan=False: NaN and infinity are no JSON; met, they are tagged (see dumps)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _c_encoder() -> Callable[[Any, int], Any] | None:
    """The json module's C encoder, made once: encoding one change at a time, building
    it for each call (as ``json.dumps`` does) costs as much as the encoding itself."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    # markers=None: no check for cycles, which column values (read from a database) can't have
    arguments = (None, _ENCODER.default, json.encoder.encode_basestring)
    sample = {"a": [1, 2.5, None, True], "b": "é\n"}
    try:  # its arguments are the json module's own business: check them, else do without
        encode = make(*arguments, None, ":", ",", False, False, False)
        same = "".join(encode(sample, 0)) == _ENCODER.encode(sample)
    except (TypeError, ValueError):
        return None
    return encode if same else None


_C_ENCODE = _c_encoder()


def dumps(data: Any) -> str:
    """Serialize already encoded data compactly, one line, keys in insertion order.

    A float JSON has no number for (NaN, infinity) is written as a ``$float`` tag:
    looked for only once the encoder has refused one, so other data pays nothing.
    """
    try:
        if _C_ENCODE is not None and type(data) in (dict, list):
            return "".join(_C_ENCODE(data, 0))
        return _ENCODER.encode(data)
    except ValueError:
        return _ENCODER.encode(_tag_floats(data))


def _tag_floats(data: Any) -> Any:
    """``data`` with each NaN or infinite float as its ``$float`` tag."""
    if type(data) is dict:
        return {key: _tag_floats(value) for key, value in data.items()}
    if type(data) is list:
        return [_tag_floats(item) for item in data]
    if isinstance(data, float) and not math.isfinite(data):
        return {"$float": "NaN" if math.isnan(data) else ("Infinity" if data > 0 else "-Infinity")}
    return data


_DECODER = json.JSONDecoder()


def loads(text: str | bytes) -> Any:
    """Parse JSON text written by :func:`dumps` (no decoding of tagged values).

    Straight to the decoder: ``json.loads`` costs twice as much for a change set
    of one row, in checks of the input (an encoding to detect, whitespace to
    skip) that text :func:`dumps` wrote never needs; a relay parses one per row.
    """
    if isinstance(text, bytes):
        text = text.decode()  # UTF-8, as dumps' users write it
    try:
        value, end = _DECODER.raw_decode(text)
    except json.JSONDecodeError:
        return json.loads(text)  # leading whitespace, or an error json.loads reports in full
    if end != len(text) and not text[end:].isspace():
        return json.loads(text)  # raises: extra data after the value
    return value


def _encode_dict(value: dict[Any, Any]) -> Any:
    encoded = {key: encode(item) for key, item in value.items()}
    if len(encoded) == 1 and next(iter(encoded)) in _DECODERS:
        return {"$dict": encoded}
    return encoded


def _encode_datetime(value: dt.datetime) -> Any:
    text = value.isoformat()
    if isinstance(value.tzinfo, zoneinfo.ZoneInfo) and value.tzinfo.key:
        # the zone, not only the offset: local times in a DST gap or fold compare by zone
        text = f"{text}[{value.tzinfo.key}]"
    return {"$datetime": text}


def _decode_datetime(text: str) -> dt.datetime:
    if not text.endswith("]"):
        return dt.datetime.fromisoformat(text)
    text, _, key = text[:-1].partition("[")
    fixed = dt.datetime.fromisoformat(text)
    try:
        zone = zoneinfo.ZoneInfo(key)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return fixed  # a zone this machine does not know: the same instant, at its offset
    local = fixed.replace(tzinfo=zone)
    if local.utcoffset() != fixed.utcoffset():
        local = local.replace(fold=1)  # the second of two wall times with the same digits
    return local


def _decode_enum(payload: list[str]) -> Any:
    path, name = payload
    module_name, _, qualname = path.partition(":")
    # never import from data: only classes of modules the application already loaded
    target: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    if isinstance(target, type) and issubclass(target, enum.Enum):
        return target[name]
    return name


_ENCODERS: dict[type, Callable[[Any], Any]] = {
    dt.datetime: _encode_datetime,
    dt.date: lambda v: {"$date": v.isoformat()},
    dt.time: lambda v: {"$time": v.isoformat()},
    dt.timedelta: lambda v: {"$timedelta": [v.days, v.seconds, v.microseconds]},
    decimal.Decimal: lambda v: {"$decimal": str(v)},
    uuid.UUID: lambda v: {"$uuid": str(v)},
    bytes: lambda v: {"$bytes": base64.b64encode(v).decode("ascii")},
    bytearray: lambda v: {"$bytes": base64.b64encode(v).decode("ascii")},
    memoryview: lambda v: {"$bytes": base64.b64encode(v).decode("ascii")},
    dict: _encode_dict,
    list: lambda v: [encode(item) for item in v],
    tuple: lambda v: [encode(item) for item in v],
}

_DECODERS: dict[str, Callable[[Any], Any]] = {
    "$datetime": _decode_datetime,
    "$date": dt.date.fromisoformat,
    "$time": dt.time.fromisoformat,
    "$timedelta": lambda p: dt.timedelta(days=p[0], seconds=p[1], microseconds=p[2]),
    "$decimal": decimal.Decimal,
    "$uuid": uuid.UUID,
    "$bytes": base64.b64decode,
    "$enum": _decode_enum,
    "$dict": lambda p: {key: decode(value) for key, value in p.items()},
    "$float": float,
}
