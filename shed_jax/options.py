"""Declaring options once: a dataclass field carries its help, flag, choices and bounds, and one checker uses them.

Every configuration of the package (:class:`shed_jax.config.RefineConfig`, the demo's, each proxy's) declares its
fields with :func:`option`. The command line turns those declarations into click options
(:mod:`shed_jax.cli_options`), ``shed proxies`` lists them, and :func:`validate_fields` checks an instance against
them, so a flag, its default, its help and its check cannot disagree. A bad value raises
:class:`shed_jax.errors.PipelineError` naming the flag (``--ratio: must be in (0, 1], got 1.5``).

``--proxy-option NAME=VALUE`` strings are converted to a config dataclass's field types by
:func:`parse_dataclass_options`; ``auto|N`` values by :func:`parse_auto_int` (the one parser of that form).

This module imports nothing from the package but :mod:`shed_jax.errors` (which imports nothing from it either), so
any module can build on it without an import cycle, and nothing here loads JAX.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from shed_jax.errors import PipelineError, UserError

__all__ = ["OptionSpec", "check_option", "check_positive_int", "option", "option_spec", "parse_auto_int",
           "parse_dataclass_options", "proxy_option_label", "shared_option", "validate_fields"]


@dataclass(frozen=True)
class OptionSpec:
    """How one configuration field appears on the command line and how it is checked.

    Attributes:
      help: one or two sentences for ``--help``.
      flag: the long flag (``"--clusters"``); ``None`` derives ``--field-name``; ``""`` means no flag.
      short: a short flag (``"-o"``) or None.
      metavar: what the value looks like in ``--help``.
      choices: the allowed values (a callable returning them is resolved when checked or shown); for
        ``kind="names"`` the allowed items.
      minimum / maximum: numeric bounds (inclusive unless ``exclusive_minimum``).
      kind: ``"int" | "float" | "str" | "path" | "pairs" | "options" | "flag" | "auto_int" | "names"`` (derived
        from the type when None; ``"flag"`` is a boolean ``--name`` switch, ``"auto_int"`` is ``auto`` or an
        integer >= minimum, ``"names"`` a non-empty tuple of distinct ``choices``).
      default_text: what ``--help`` shows as the default when the default is ``None`` (resolved per run).
    """

    help: str
    flag: str | None = None
    short: str | None = None
    metavar: str | None = None
    choices: tuple | Callable[[], tuple] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    kind: str | None = None
    default_text: str | None = None

    def flag_for(self, name: str) -> str:
        return self.flag if self.flag is not None else "--" + name.replace("_", "-")

    def allowed(self) -> tuple | None:
        return self.choices() if callable(self.choices) else self.choices


def option(default: Any, help: str, **spec) -> Any:
    """A dataclass field carrying an :class:`OptionSpec` (``spec`` are its fields besides ``help``).

    The metadata also holds ``"help"`` (as plain dataclass fields documented with ``metadata={"help": ...}``)."""
    return dataclasses.field(default=default, metadata={"shed": OptionSpec(help=help, **spec), "help": help})


def option_spec(cls, name: str) -> OptionSpec:
    """The :class:`OptionSpec` of field ``name`` of dataclass ``cls`` (a plain one for undeclared fields)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("shed") or OptionSpec(help=f.metadata.get("help", ""))
    raise KeyError(name)


def shared_option(cls, name: str, *, default: Any = dataclasses.MISSING, **changes) -> Any:
    """A field declared like field ``name`` of ``cls`` (same flag, help, checks), with ``changes`` to its spec and
    optionally another default: how a second configuration (the demo's) reuses a declaration instead of
    restating it."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    spec = dataclasses.replace(option_spec(cls, name), **changes)
    value = field.default if default is dataclasses.MISSING else default
    return dataclasses.field(default=value, metadata={"shed": spec, "help": spec.help})


def proxy_option_label(name: str) -> str:
    """How an error names field ``name`` of a proxy configuration: ``--proxy-option NAME``."""
    return f"--proxy-option {name}"


# --------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------


def check_positive_int(value: Any, name: str, *, minimum: int = 1, allow_none: bool = False,
                       error: type[Exception] = ValueError) -> int | None:
    """``int(value)`` when ``value`` is an integer (not a bool) ``>= minimum``; else raises ``error``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise error(f"{name} must be {_integer_words(minimum)}, got {value!r}")
    return int(value)


def _integer_words(minimum: int) -> str:
    return "a positive integer" if minimum == 1 else f"an integer >= {minimum}"


def parse_auto_int(value: Any, *, minimum: int = 1, field: str | None = None) -> str | int:
    """``"auto"`` (any case, spaces around) or an integer ``>= minimum`` (an int, or one written as text: the
    command line, JSON); else :class:`PipelineError` naming ``field``.

    >>> parse_auto_int(" AUTO "), parse_auto_int("8"), parse_auto_int(4)
    ('auto', 8, 4)
    """
    number = None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        try:
            number = int(text)
        except ValueError:
            number = None
    if number is None:
        raise PipelineError(f"must be auto or {_integer_words(minimum)}, got {value!r}", field=field)
    if number < minimum:
        raise PipelineError(f"must be auto or >= {minimum}, got {value!r}", field=field)
    return number


def _field_kind(spec: OptionSpec, annotation: Any) -> str:
    if spec.kind:
        return "bool" if spec.kind == "flag" else spec.kind
    base = _strip_optional(annotation)
    if base is bool:
        return "bool"
    if base is int:
        return "int"
    if base is float:
        return "float"
    return "str"


def _check_value(label: str, spec: OptionSpec, kind: str, value: Any) -> Any:
    """``value`` (``auto|N`` text normalised) if it keeps ``spec``'s type, choices and bounds; else
    :class:`PipelineError` naming ``label``."""
    if kind == "auto_int":
        value = parse_auto_int(value, minimum=int(spec.minimum) if spec.minimum is not None else 1, field=label)
        return value
    if kind == "names":
        allowed = spec.allowed() or ()
        items = tuple(value) if isinstance(value, (tuple, list)) else None
        if not items or len(set(items)) != len(items) or any(item not in allowed for item in items):
            raise PipelineError(f"must be distinct names, allowed {', '.join(map(str, allowed))}, got {value!r}",
                                field=label)
        return items
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise PipelineError(f"must be an integer, got {value!r}", field=label)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            raise PipelineError(f"must be a finite number, got {value!r}", field=label)
    if kind == "bool" and not isinstance(value, bool):
        raise PipelineError(f"must be true or false, got {value!r}", field=label)
    if kind in ("str", "path") and not isinstance(value, str):
        raise PipelineError(f"must be a string, got {value!r}", field=label)
    allowed = spec.allowed()
    if allowed is not None and value not in allowed:
        raise PipelineError(f"must be one of {', '.join(map(str, allowed))}; got {value!r}", field=label)
    if kind in ("int", "float") and (spec.minimum is not None or spec.maximum is not None):
        low = spec.minimum is not None and (value < spec.minimum or (spec.exclusive_minimum and value == spec.minimum))
        high = spec.maximum is not None and value > spec.maximum
        if low or high:
            if spec.minimum is not None and spec.maximum is not None:
                bound = (f"in {'(' if spec.exclusive_minimum else '['}{spec.minimum:g}, {spec.maximum:g}]")
            elif spec.minimum is not None:
                bound = f"> {spec.minimum:g}" if spec.exclusive_minimum else f">= {spec.minimum:g}"
            else:
                bound = f"<= {spec.maximum:g}"
            raise PipelineError(f"must be {bound}, got {value!r}", field=label)
    return value


def _strip_optional(annotation: Any) -> Any:
    if isinstance(annotation, str):  # postponed annotations: resolve the few spellings used here
        text = annotation.replace(" ", "")
        for suffix in ("|None",):
            if text.endswith(suffix):
                text = text[: -len(suffix)]
        return {"int": int, "float": float, "str": str, "bool": bool}.get(text, annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _allows_none(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.replace(" ", "").endswith("|None") or annotation.startswith("Optional[")
    return type(None) in typing.get_args(annotation)


def _label(spec: OptionSpec, name: str, label: Callable[[str], str] | None) -> str:
    return label(name) if label is not None else (spec.flag_for(name) or name)


def validate_fields(instance, *, skip: tuple[str, ...] = (), label: Callable[[str], str] | None = None) -> None:
    """Check every declared field of a config dataclass against its :class:`OptionSpec` (None allowed where the
    annotation allows it) and normalise the values the check reads (``auto|N`` text, a list of names): the one
    check of every option. Errors name ``label(field)`` (default: the field's flag)."""
    for f in dataclasses.fields(instance):
        spec = f.metadata.get("shed")
        if spec is None or f.name in skip:
            continue
        value = getattr(instance, f.name)
        if value is None and _allows_none(f.type):
            continue
        checked = _check_value(_label(spec, f.name, label), spec, _field_kind(spec, f.type), value)
        if checked is not value:
            object.__setattr__(instance, f.name, checked)


def check_option(cls, name: str, value: Any, *, label: Callable[[str], str] | None = None) -> Any:
    """Check one value of field ``name`` of config dataclass ``cls`` as :func:`validate_fields` would (before an
    instance can be built); returns it normalised."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    spec = option_spec(cls, name)
    if value is None and _allows_none(field.type):
        return None
    return _check_value(_label(spec, name, label), spec, _field_kind(spec, field.type), value)


# --------------------------------------------------------------------------------------------------
# typed NAME=VALUE options (proxy configurations)
# --------------------------------------------------------------------------------------------------


def _convert(raw: Any, annotation: Any, name: str, where: str) -> Any:
    """Convert a command-line string to the field's type (values that are not strings pass unchanged)."""
    if not isinstance(raw, str):
        return raw
    if _allows_none(annotation) and raw.strip().lower() in ("none", "null", ""):
        return None
    base = _strip_optional(annotation)
    text = raw.strip()
    try:
        if base is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        origin = typing.get_origin(base)
        if base is tuple or origin is tuple or (isinstance(base, str) and base.startswith("tuple")):
            if text.startswith("["):
                return tuple(json.loads(text))
            return tuple(part.strip() for part in text.split(",") if part.strip())
    except (ValueError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {raw!r} as {getattr(base, '__name__', base)} ({exc})", field=where) from None
    return raw


def parse_dataclass_options(cls, options: Mapping[str, Any], *, what: str = "--proxy-option"):
    """An instance of config dataclass ``cls`` from ``{name: value}`` overrides (strings are converted).

    Raises :class:`UserError` naming the option: an unknown name (listing the known ones), a value of the
    wrong type, or one that the dataclass's own checks reject (its message, with the allowed values).
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r} for {cls.__name__}; known: {', '.join(sorted(fields))}",
                        field=what)
    hints = typing.get_type_hints(cls)
    values = {}
    for name, raw in options.items():
        values[name] = _convert(raw, hints.get(name, fields[name].type), name, f"{what} {name}")
    try:
        return cls(**values)
    except UserError:
        raise
    except (TypeError, ValueError) as exc:
        message = " ".join(str(exc).split())
        raise UserError(message, field=what) from None
