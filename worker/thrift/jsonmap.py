"""JSON <-> Thrift values for the HTTP gateway, driven by thriftpy2's ``thrift_spec``.

Mapping (both directions):

=============  =====================================================================
Thrift         JSON
=============  =====================================================================
bool           true / false
byte..i64      integer (range-checked)
double         number; ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` as strings
string         string
binary         base64 string
enum           the value's name (``"BLUE"``); the integer is accepted on input
list, set      array
map            object when keys are strings, integers, enums or bools (keys as strings);
               otherwise an array of ``[key, value]`` pairs (also accepted on input)
struct         object by field name; null or absent = unset (the IDL default applies)
=============  =====================================================================

Input is strict: an unknown field, a wrong type, an out-of-range integer or a missing
required field raises ``MappingError`` naming the field path (``item.inners[2].id``).
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from thriftpy2.thrift import TType

_INT_RANGE = {
    TType.BYTE: (-(2**7), 2**7 - 1),
    TType.I16: (-(2**15), 2**15 - 1),
    TType.I32: (-(2**31), 2**31 - 1),
    TType.I64: (-(2**63), 2**63 - 1),
}
_TYPE_NAMES = {
    TType.BOOL: "bool",
    TType.BYTE: "byte",
    TType.I16: "i16",
    TType.I32: "i32",
    TType.I64: "i64",
    TType.DOUBLE: "double",
    TType.STRING: "string",
    TType.BINARY: "binary",
    TType.STRUCT: "struct",
    TType.LIST: "list",
    TType.SET: "set",
    TType.MAP: "map",
}
_SCALAR_KEYS = (TType.STRING, TType.BYTE, TType.I16, TType.I32, TType.I64, TType.BOOL)


class MappingError(ValueError):
    """A JSON value does not fit the Thrift type at ``path``."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or '(body)'}: {message}")
        self.path = path
        self.message = message


class Field:
    __slots__ = ("fid", "name", "ttype", "spec", "required")

    def __init__(self, fid: int, spec: tuple) -> None:
        self.fid = fid
        if len(spec) == 3:
            self.ttype, self.name, self.required = spec
            self.spec = None
        else:
            self.ttype, self.name, self.spec, self.required = spec


_FIELDS: dict[type, dict[str, Field]] = {}


def fields_of(cls: type) -> dict[str, Field]:
    """The struct's fields by name, in field-id order (cached per class)."""
    got = _FIELDS.get(cls)
    if got is None:
        got = {}
        for fid in sorted(cls.thrift_spec):  # type: ignore[attr-defined]
            f = Field(fid, cls.thrift_spec[fid])  # type: ignore[attr-defined]
            got[f.name] = f
        _FIELDS[cls] = got
    return got


# a JSON value's kind, for "found a string" style wording (bool before int: True is an int)
_JSON_KINDS: tuple[tuple[type, str], ...] = (
    (type(None), "null"),
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    (list, "an array"),
    (dict, "an object"),
)


def _jtype(value: Any) -> str:
    return next((name for kind, name in _JSON_KINDS if isinstance(value, kind)), type(value).__name__)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _split(spec: Any) -> tuple[int, Any]:
    """A container element spec: a bare ttype, or (ttype, subspec)."""
    if isinstance(spec, tuple):
        return spec[0], spec[1]
    return spec, None


def _is_enum(spec: Any) -> bool:
    return isinstance(spec, type) and hasattr(spec, "_VALUES_TO_NAMES")


# -- JSON -> Thrift ----------------------------------------------------------------------------


def to_struct(cls: type, obj: Any, path: str = "") -> Any:
    """Build a thriftpy2 struct (or the ``*_args`` struct of a method) from a JSON object."""
    if not isinstance(obj, dict):
        raise MappingError(path, f"expected an object ({cls.__name__}), found {_jtype(obj)}")
    fields = fields_of(cls)
    kwargs: dict[str, Any] = {}
    for key, value in obj.items():
        f = fields.get(key)
        if f is None:
            known = ", ".join(fields) or "none"
            raise MappingError(_join(path, key), f"unknown field of {cls.__name__} (fields: {known})")
        if value is None:
            continue
        kwargs[key] = to_value(f.ttype, f.spec, value, _join(path, key))
    for name, f in fields.items():
        if f.required and name not in kwargs:
            raise MappingError(_join(path, name), f"required field of {cls.__name__} is missing")
    return cls(**kwargs)


def to_value(ttype: int, spec: Any, value: Any, path: str) -> Any:
    if ttype == TType.STRING:
        if isinstance(value, str):
            return value
        raise MappingError(path, f"expected a string, found {_jtype(value)}")
    if ttype in _INT_RANGE:
        if ttype == TType.I32 and _is_enum(spec):
            return _enum(spec, value, path)
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise MappingError(path, f"expected an integer ({_TYPE_NAMES[ttype]}), found {_jtype(value)}")
        lo, hi = _INT_RANGE[ttype]
        if not lo <= value <= hi:
            raise MappingError(path, f"{value} is out of range for {_TYPE_NAMES[ttype]}")
        return value
    if ttype == TType.BOOL:
        if isinstance(value, bool):
            return value
        raise MappingError(path, f"expected true or false, found {_jtype(value)}")
    if ttype == TType.DOUBLE:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if value in ("NaN", "Infinity", "-Infinity"):
            return float(value.replace("Infinity", "inf"))
        raise MappingError(path, f"expected a number, found {_jtype(value)}")
    if ttype == TType.BINARY:
        if not isinstance(value, str):
            raise MappingError(path, f"expected a base64 string (binary), found {_jtype(value)}")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise MappingError(path, "invalid base64 for a binary field") from None
    if ttype == TType.STRUCT:
        return to_struct(spec, value, path)
    if ttype in (TType.LIST, TType.SET):
        if not isinstance(value, list):
            raise MappingError(path, f"expected an array ({_TYPE_NAMES[ttype]}), found {_jtype(value)}")
        et, es = _split(spec)
        return [to_value(et, es, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if ttype == TType.MAP:
        (kt, ks), (vt, vs) = _split(spec[0]), _split(spec[1])
        out: dict[Any, Any] = {}
        if isinstance(value, dict):
            if kt not in _SCALAR_KEYS:
                raise MappingError(
                    path, "this map's keys are not scalars: give an array of [key, value] pairs"
                )
            for k, v in value.items():
                kp = f'{path}["{k}"]'
                key = _key_from_string(kt, ks, k, kp)
                out[key] = to_value(vt, vs, v, kp)
            return out
        if isinstance(value, list):
            for i, pair in enumerate(value):
                ip = f"{path}[{i}]"
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise MappingError(ip, f"expected a [key, value] pair, found {_jtype(pair)}")
                key = to_value(kt, ks, pair[0], ip + "[0]")
                try:
                    out[key] = to_value(vt, vs, pair[1], ip + "[1]")
                except TypeError:
                    raise MappingError(ip + "[0]", "this key type cannot be a map key here") from None
            return out
        raise MappingError(path, f"expected an object or an array of pairs (map), found {_jtype(value)}")
    raise MappingError(path, f"unsupported thrift type {ttype}")


def _enum(enum: Any, value: Any, path: str) -> int:
    if isinstance(value, str):
        try:
            return enum._NAMES_TO_VALUES[value]
        except KeyError:
            names = ", ".join(enum._NAMES_TO_VALUES)
            raise MappingError(path, f"{value!r} is not a {enum.__name__} (one of {names})") from None
    if isinstance(value, int) and not isinstance(value, bool):
        if value in enum._VALUES_TO_NAMES:
            return value
        raise MappingError(path, f"{value} is not a {enum.__name__} value")
    raise MappingError(path, f"expected a {enum.__name__} name, found {_jtype(value)}")


def _key_from_string(kt: int, ks: Any, key: str, path: str) -> Any:
    if kt == TType.STRING:
        return key
    if kt == TType.BOOL:
        if key in ("true", "false"):
            return key == "true"
        raise MappingError(path, 'expected a "true" or "false" key')
    if kt == TType.I32 and _is_enum(ks):
        if key.lstrip("-").isdigit():
            return _enum(ks, int(key), path)
        return _enum(ks, key, path)
    try:
        number = int(key)
    except ValueError:
        raise MappingError(path, f"expected an integer key ({_TYPE_NAMES[kt]})") from None
    return to_value(kt, None, number, path)


# -- Thrift -> JSON ----------------------------------------------------------------------------


def from_struct(obj: Any) -> dict[str, Any]:
    """A thriftpy2 struct (or exception) as a JSON object; unset fields are left out."""
    out: dict[str, Any] = {}
    for name, f in fields_of(type(obj)).items():
        value = getattr(obj, name, None)
        if value is not None:
            out[name] = from_value(f.ttype, f.spec, value)
    return out


def from_value(ttype: int, spec: Any, value: Any) -> Any:
    if value is None:
        return None
    if ttype == TType.STRUCT:
        return from_struct(value)
    if ttype == TType.I32 and _is_enum(spec):
        return spec._VALUES_TO_NAMES.get(value, value)
    if ttype == TType.BINARY or (ttype == TType.STRING and isinstance(value, (bytes, bytearray))):
        return base64.b64encode(bytes(value)).decode()
    if ttype == TType.DOUBLE:
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if ttype in (TType.LIST, TType.SET):
        et, es = _split(spec)
        return [from_value(et, es, v) for v in value]
    if ttype == TType.MAP:
        (kt, ks), (vt, vs) = _split(spec[0]), _split(spec[1])
        if kt in _SCALAR_KEYS:
            return {_key_to_string(kt, ks, k): from_value(vt, vs, v) for k, v in value.items()}
        return [[from_value(kt, ks, k), from_value(vt, vs, v)] for k, v in value.items()]
    return value


def _key_to_string(kt: int, ks: Any, key: Any) -> str:
    if kt == TType.BOOL:
        return "true" if key else "false"
    if kt == TType.I32 and _is_enum(ks):
        return str(ks._VALUES_TO_NAMES.get(key, key))
    if isinstance(key, (bytes, bytearray)):
        return bytes(key).decode("utf-8", "replace")
    return str(key)
