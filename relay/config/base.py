"""Building blocks shared by every config section.

- `Section`: the base of every config Struct (unknown keys are errors, keyword-only); its
  `repr` shows a DSN (a field named `dsn` or `..._dsn`) without the DSN's keys.
- `ByteSize`: an int that also accepts `"20MiB"`, `"1.5GB"`, `"512k"`.
- `Duration`: seconds as a float that also accepts `"30s"`, `"5m"`, `"24h"`, `"7d"`.
- `Secret`: a string that never shows itself in `repr`, logs or error output.
- `Problem`, `collect_problems`: validation that reports *every* problem with its
  path (`projects[0].quotas[1].window: ...`), not only the first one.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin, get_type_hints

import msgspec

from relay.protocol.dsn import Dsn, InvalidDsn


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Base class of every config section.

    `repr` and `str` are msgspec's but for a DSN (a string field named `dsn` or ending in
    `_dsn`), shown as `https://***@host/42`: its public and secret keys stay out of logs
    and tracebacks. The value itself, and equality, are as configured.
    """

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.__rich_repr__())
        return f"{type(self).__name__}({fields})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [(name, _shown(name, getattr(self, name))) for name in self.__struct_fields__]


def _shown(name: str, value: Any) -> Any:
    """A field's value as `repr` shows it: a DSN without its keys."""
    if not (isinstance(value, str) and (name == "dsn" or name.endswith("_dsn"))):
        return value
    try:
        return Dsn.parse(value).masked()
    except InvalidDsn:
        return "***"  # not a DSN: nothing of it can be told apart from its keys


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


class ByteSize(int):
    """A byte count; accepts ints and strings such as `20MiB`, `1.5GB`, `512k`."""

    @classmethod
    def parse(cls, value: object) -> ByteSize:
        if isinstance(value, bool):
            raise ValueError("expected a size such as 1048576 or '20MiB'")
        if isinstance(value, int):
            if value < 0:
                raise ValueError("a size cannot be negative")
            return cls(value)
        if isinstance(value, str):
            m = _SIZE_RE.match(value)
            if m:
                number, unit, binary, _ = m.groups()
                base = 1024 if (binary or unit == "") else 1000
                return cls(int(float(number) * base ** _SIZE_POWERS[unit.lower()]))
        raise ValueError(f"expected a size such as 1048576 or '20MiB', got {value!r}")


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {
    None: 1.0,
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}


class Duration(float):
    """Seconds; accepts numbers and strings such as `500ms`, `30s`, `5m`, `24h`, `7d`."""

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, bool):
            raise ValueError("expected a duration such as 30 or '5m'")
        if isinstance(value, int | float):
            if value < 0:
                raise ValueError("a duration cannot be negative")
            return cls(value)
        if isinstance(value, str):
            m = _DURATION_RE.match(value)
            if m:
                return cls(float(m.group(1)) * _DURATION_UNITS[m.group(2)])
        raise ValueError(f"expected a duration such as 30, '30s', '5m' or '24h', got {value!r}")


class Secret:
    """A configured secret (token, password, DSN key). `repr`/`str` never reveal it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


def dec_hook(tp: type, obj: Any) -> Any:
    """msgspec hook for the custom scalar types above."""
    if tp is ByteSize:
        return ByteSize.parse(obj)
    if tp is Duration:
        return Duration.parse(obj)
    if tp is Secret:
        if not isinstance(obj, str):
            raise ValueError("expected a string")
        return Secret(obj)
    raise NotImplementedError(f"unsupported type {tp!r}")


def enc_hook(obj: Any) -> Any:
    if isinstance(obj, Secret):
        return "**********"
    if isinstance(obj, ByteSize):
        return int(obj)
    if isinstance(obj, Duration):
        return float(obj)
    raise NotImplementedError(f"cannot encode {type(obj)!r}")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file, and where."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def join_path(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _clean_msgspec_error(err: Exception) -> str:
    text = str(err)
    # msgspec appends " - at `$.x.y`"; we carry our own path.
    return re.sub(r" - at `\$[^`]*`$", "", text)


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _struct_of_optional(tp: Any) -> Any:
    """`X | None` where X is a Struct -> X; otherwise None."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and _is_struct(args[0]):
            return args[0]
    return None


def collect_problems(data: Any, tp: Any, path: str = "") -> list[Problem]:
    """Validate `data` against type `tp`, returning every problem found.

    Recurses through Structs, lists and dicts so that one typo does not hide the
    next one; leaves are checked by msgspec itself (so messages stay consistent).
    """
    if _is_struct(tp):
        if not isinstance(data, dict):
            return [Problem(path, f"expected a mapping, got {_type_name(data)}")]
        problems: list[Problem] = []
        hints = get_type_hints(tp, include_extras=True)
        info = msgspec.structs.fields(tp)
        names = {f.encode_name: f for f in info}
        for key in data:
            if key not in names:
                close = _closest(str(key), list(names))
                hint = f" (did you mean '{close}'?)" if close else ""
                problems.append(Problem(join_path(path, str(key)), f"unknown key{hint}"))
        for name, field in names.items():
            if name in data:
                problems.extend(
                    collect_problems(data[name], hints[field.name], join_path(path, name))
                )
            elif field.required:
                problems.append(Problem(join_path(path, name), "required key is missing"))
        if not problems:
            try:
                msgspec.convert(data, tp, dec_hook=dec_hook, strict=False)
            except msgspec.ValidationError as err:
                problems.append(Problem(path, _clean_msgspec_error(err)))
        return problems
    inner = _struct_of_optional(tp)
    if inner is not None:
        return [] if data is None else collect_problems(data, inner, path)
    origin = get_origin(tp)
    if origin is list and isinstance(data, list):
        (item_tp,) = get_args(tp) or (Any,)
        out: list[Problem] = []
        for i, item in enumerate(data):
            out.extend(collect_problems(item, item_tp, join_path(path, i)))
        return out
    if origin is dict and isinstance(data, dict):
        key_tp, val_tp = get_args(tp) or (Any, Any)
        out = []
        for k, v in data.items():
            out.extend(collect_problems(k, key_tp, join_path(path, str(k))))
            out.extend(collect_problems(v, val_tp, join_path(path, str(k))))
        return out
    if origin is typing.Annotated:
        pass
    try:
        # Not strict: `${VAR}` always expands to a string, so "3000" must do for an int.
        msgspec.convert(data, tp, dec_hook=dec_hook, strict=False)
    except msgspec.ValidationError as err:
        return [Problem(path, _clean_msgspec_error(err))]
    return []


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        dict: "mapping",
        list: "list",
        str: "string",
        int: "integer",
        float: "number",
        bool: "boolean",
    }.get(type(value), type(value).__name__)


def _closest(word: str, choices: list[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.75)
    return found[0] if found else None
