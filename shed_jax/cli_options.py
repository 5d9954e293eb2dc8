"""Click options generated from the declarations of :class:`shed_jax.config.RefineConfig` (and of
:class:`~shed_jax.config.DemoConfig`), and the config built back from them.

Each field's :class:`~shed_jax.options.OptionSpec` gives the flag, default, help, choices and bounds, so a
command declares its options by field name (``@options("ratio", "size")``) and never restates them; the values are
checked by the configuration they build (one check per option, :func:`shed_jax.options.validate_fields`).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import click

from shed_jax.config import RefineConfig, is_local_path
from shed_jax.errors import UserError
from shed_jax.options import option_spec, parse_auto_int

__all__ = ["BUDGET_FIELDS", "DATA_FIELDS", "VALUE_FIELDS", "build_config", "config_option", "declared_option",
           "options"]


def _abs(path: str | None) -> str | None:
    """An absolute path; None, ``-`` (stdin) and ``hf:...`` names are returned as they are. ``..`` components
    are resolved lexically when the path as given does not exist (the operating system could not follow it
    then: ``--run-dir new/../run`` is ``./run``, no stray ``new/``)."""
    if not is_local_path(path):
        return path
    absolute = Path(path).expanduser().absolute()
    return str(absolute) if absolute.exists() else os.path.normpath(absolute)


class _ProxyName(click.ParamType):
    """A registered proxy name, optionally with ``:SPEC``; the choices are read from the registry when used."""

    name = "proxy"

    def get_metavar(self, param, ctx=None):
        from shed_jax.proxies.registry import names

        return "[" + "|".join(names()) + "][:SPEC]"

    def convert(self, value, param, ctx):
        from shed_jax.proxies.registry import names

        if str(value).split(":", 1)[0] not in names():
            self.fail(f"unknown proxy {str(value).split(':', 1)[0]!r}; choose one of {', '.join(names())}", param, ctx)
        return str(value)


class _AutoOrInt(click.ParamType):
    """``auto`` or an integer ``>= minimum`` (kept as the string ``"auto"`` or an int)."""

    name = "auto|int"

    def __init__(self, minimum: int = 1):
        self.minimum = minimum

    def convert(self, value, param, ctx):
        try:
            return parse_auto_int(value, minimum=self.minimum)
        except UserError as exc:
            self.fail(exc.message, param, ctx)


_FIELDS = {f.name: f for f in dataclasses.fields(RefineConfig)}


def config_option(name: str, **overrides):
    """A click option for field ``name`` of :class:`RefineConfig` (flag, default, help and type from its spec)."""
    return declared_option(RefineConfig, name, **overrides)


def declared_option(cls, name: str, **overrides):
    """A click option for field ``name`` of config dataclass ``cls`` (flag, default, help and type from its spec)."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    spec = option_spec(cls, name)
    decls = [d for d in (spec.short, spec.flag_for(name)) if d]
    kind = spec.kind or {"int": "int", "float": "float"}.get(str(field.type).split(" ")[0], "str")
    kwargs: dict = {"default": field.default, "help": spec.help, "show_default": field.default not in (None, ())}
    if spec.metavar:
        kwargs["metavar"] = spec.metavar
    if name == "proxy":
        kwargs["type"] = _ProxyName()
        kwargs.pop("metavar", None)
    elif spec.choices is not None:
        kwargs["type"] = click.Choice(list(spec.allowed()))
    elif kind == "auto_int":
        kwargs["type"] = _AutoOrInt(int(spec.minimum) if spec.minimum is not None else 1)
    elif kind == "int":
        kwargs["type"] = click.IntRange(min=int(spec.minimum)) if spec.minimum is not None else int
    elif kind == "float":
        kwargs["type"] = float
    elif kind == "path":
        kwargs["type"] = click.Path(path_type=str)
    elif kind == "flag":
        kwargs["is_flag"] = True
        kwargs["show_default"] = False
    elif kind == "pairs":
        kwargs["default"] = None
        kwargs["show_default"] = False
    elif kind == "options":
        kwargs["multiple"] = True
        kwargs["default"] = ()
        kwargs["show_default"] = False
    if spec.default_text:
        kwargs["help"] += f"  [default: {spec.default_text}]"
    kwargs.update(overrides)
    return click.option(*decls, name, **kwargs)


def options(*names: str, config_class: type = RefineConfig, **overrides_by_name):
    """Decorator adding :func:`declared_option` of ``config_class`` (default: RefineConfig) for each field, in
    order."""
    def decorate(function):
        for name in reversed(names):
            function = declared_option(config_class, name, **overrides_by_name.get(name, {}))(function)
        return function
    return decorate


DATA_FIELDS = ("format", "field_map", "duplicates", "text", "model", "batch_size", "embed_dtype", "split",
               "revision")
VALUE_FIELDS = ("valid", "valid_format", "valid_split", "proxy", "proxy_options", "proxies_per_cluster",
                "value_player_budget", "value_time_budget", "n_permutations", "removal_step", "shapley_batch_size")
BUDGET_FIELDS = ("ratio", "size", "sampler", "beta")
_PATH_FIELDS = ("data", "output", "valid", "run_dir")


def _parse_pairs(value, *, option: str) -> tuple[tuple[str, str], ...]:
    """``"a=b,c=d"`` -> ``(("a", "b"), ("c", "d"))``."""
    if not value:
        return ()
    if not isinstance(value, str):
        return tuple(value)
    pairs = []
    for item in value.split(","):
        key, sep, mapped = item.partition("=")
        if not sep or not key.strip() or not mapped.strip():
            raise UserError(f"expected NAME=KEY[,NAME=KEY...], got {item!r}", field=option)
        pairs.append((key.strip(), mapped.strip()))
    return tuple(pairs)


def _parse_proxy_options(values) -> dict:
    """``("steps=20", "metric=logprob")`` -> ``{"steps": "20", "metric": "logprob"}`` (typed by the registry)."""
    out = {}
    for item in values or ():
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"expected NAME=VALUE, got {item!r}", field="--proxy-option")
        out[key.strip()] = raw
    return out


def _explicit(ctx: click.Context, name: str) -> bool:
    """True when option ``name`` was given on the command line (not a default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source not in (click.core.ParameterSource.DEFAULT,
                                                 click.core.ParameterSource.DEFAULT_MAP)


def _fields_from(params: dict) -> dict:
    """Config fields from click parameters: paths absolute, pairs and proxy options parsed."""
    fields = {name: value for name, value in params.items() if name in _FIELDS}
    for name in _PATH_FIELDS:
        if name in fields:
            fields[name] = _abs(fields[name])
    if "field_map" in fields:
        fields["field_map"] = _parse_pairs(fields["field_map"], option="--field-map")
    if "proxy_options" in fields:
        fields["proxy_options"] = _parse_proxy_options(fields["proxy_options"])
    return fields


def build_config(ctx: click.Context, params: dict, *, base: RefineConfig | None = None, **fixed) -> RefineConfig:
    """A :class:`RefineConfig` from the command's parameters; over ``base`` only explicitly given options apply
    (``--proxy-option`` values merge into the stored ones; a new ``--ratio`` clears a stored ``--size`` and
    vice versa)."""
    fields = _fields_from(params)
    if base is None:
        return RefineConfig(**{**fields, **fixed})
    changes = {name: value for name, value in fields.items() if _explicit(ctx, name)}
    if "proxy_options" in changes:
        changes["proxy_options"] = {**dict(base.proxy_options), **changes["proxy_options"]}
    if "ratio" in changes:
        changes.setdefault("size", None)
    if "size" in changes:
        changes.setdefault("ratio", None)
    return base.replace(**{**changes, **fixed})
