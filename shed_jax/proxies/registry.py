"""The proxy registry: proxies by name, each with its typed configuration and its factory.

A proxy is a way to value a coalition of players (a batched utility, :class:`shed_jax.proxies.base.BatchedUtility`).
The pipeline knows proxies only through this registry::

    spec = registry.get("embedding")
    config = registry.make_config("embedding", {"steps": "20"})     # typed, validated
    utility = spec.factory(inputs, config)                          # inputs: shed_jax.proxies.ProxyInputs

Built-in proxies live in their own modules and are imported on first use (``shed --help`` imports no JAX).
The registry records what a configuration needs of each built-in without importing it: where its configuration
class is (``module:Name``) and its ``spec_field``, so building a run's configuration (``--proxy lm:SPEC``,
``--proxy-option``) imports no proxy module, JAX or flax (:func:`spec_field`; :func:`config_class` imports the
configuration's module only). Each such module defines ``PROXY_NAME``, ``CONFIG_CLASS`` (a frozen dataclass), ``FACTORY``
(``(inputs, config) -> utility``) and optionally ``SUMMARY``, ``SPEC_FIELD`` (the config field that
``--proxy NAME:SPEC`` sets) and ``CHECK`` (``(validation_set, config) -> None``, raising a user error). Adding a built-in proxy is one new module plus one entry in ``_BUILTIN`` (checked against the
module when it is imported); code outside the package calls :func:`register` instead.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from shed_jax.errors import UserError
from shed_jax.options import parse_dataclass_options

__all__ = ["ProxySpec", "config_class", "get", "make_config", "names", "register", "spec_field", "unregister"]


@dataclass(frozen=True)
class _Builtin:
    """A built-in proxy as recorded here: its module (PROXY_NAME, CONFIG_CLASS, FACTORY; imported for the
    factory), where its configuration class is (``"module:Name"``) and its ``SPEC_FIELD``."""

    module: str
    config: str
    spec_field: str | None = None


_BUILTIN: dict[str, _Builtin] = {
    "embedding": _Builtin("shed_jax.proxies.embedding", "shed_jax.proxies.embedding_config:EmbeddingProxyConfig"),
    "lm": _Builtin("shed_jax.proxies.lm", "shed_jax.proxies.lm_config:LMProxyConfig", spec_field="model"),
}
_REGISTERED: dict[str, "ProxySpec"] = {}


@dataclass(frozen=True)
class ProxySpec:
    """A registered proxy.

    Attributes:
      name: what ``--proxy`` takes.
      factory: ``(inputs: ProxyInputs, config) -> utility`` with ``n_players``, ``preferred_batch_size``,
        ``__call__(masks (B, n) bool) -> (B,) float32`` and ``describe() -> dict``.
      config_class: frozen dataclass of the proxy's options (``--proxy-option NAME=VALUE`` sets its fields).
      summary: one line for ``--help``.
      spec_field: the field that ``--proxy NAME:SPEC`` sets (e.g. ``"model"``), or None.
      check: optional ``(validation_set, config) -> None`` raising :class:`UserError` when the validation set
        cannot be used with this configuration; run before any stage starts.
    """

    name: str
    factory: Callable[..., Any]
    config_class: type
    summary: str = ""
    spec_field: str | None = None
    check: Callable[..., None] | None = None


def register(name: str, factory: Callable[..., Any], *, config_class: type, summary: str = "",
             spec_field: str | None = None, check: Callable[..., None] | None = None,
             replace: bool = False) -> ProxySpec:
    """Register a proxy under ``name`` (``--proxy name``). ``config_class`` must be a dataclass whose fields
    all have defaults. Registering a taken name raises ``ValueError`` unless ``replace=True``."""
    if not isinstance(name, str) or not name or ":" in name or "=" in name:
        raise ValueError(f"a proxy name must be a non-empty string without ':' or '=', got {name!r}")
    if not dataclasses.is_dataclass(config_class) or not isinstance(config_class, type):
        raise TypeError(f"config_class must be a dataclass type, got {config_class!r}")
    if not callable(factory):
        raise TypeError("factory must be callable")
    if not replace and (name in _REGISTERED or name in _BUILTIN):
        raise ValueError(f"a proxy named {name!r} is already registered (pass replace=True)")
    spec = ProxySpec(name, factory, config_class, summary, spec_field, check)
    _REGISTERED[name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a proxy registered with :func:`register` (built-ins cannot be removed)."""
    _REGISTERED.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered proxy name, built-ins first."""
    return tuple(dict.fromkeys([*_BUILTIN, *_REGISTERED]))


def _unknown(name: str) -> UserError:
    return UserError(f"unknown proxy {name!r}; choose one of {', '.join(names())}", field="--proxy")


def get(name: str) -> ProxySpec:
    """The :class:`ProxySpec` of ``name`` (imports a built-in's module); :class:`UserError` naming the known proxies
    if there is none."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILTIN:
        record = _BUILTIN[name]
        module = importlib.import_module(record.module)
        spec = ProxySpec(module.PROXY_NAME, module.FACTORY, module.CONFIG_CLASS, getattr(module, "SUMMARY", ""),
                         getattr(module, "SPEC_FIELD", None), getattr(module, "CHECK", None))
        if spec.name != name:
            raise RuntimeError(f"{record.module} declares PROXY_NAME={spec.name!r}, registered as {name!r}")
        if spec.spec_field != record.spec_field or spec.config_class is not _import_config(record.config):
            raise RuntimeError(f"{record.module} declares SPEC_FIELD={spec.spec_field!r} and CONFIG_CLASS="
                               f"{spec.config_class.__module__}:{spec.config_class.__qualname__}; the registry records "
                               f"{record.spec_field!r} and {record.config}")
        _REGISTERED[name] = spec
        return spec
    raise _unknown(name)


def _import_config(location: str) -> type:
    module, _, qualname = location.partition(":")
    return getattr(importlib.import_module(module), qualname)


def spec_field(name: str) -> str | None:
    """The configuration field that ``--proxy NAME:SPEC`` sets, or None; imports nothing (a built-in's is
    recorded here). :class:`UserError` for an unknown proxy."""
    if name in _REGISTERED:
        return _REGISTERED[name].spec_field
    if name in _BUILTIN:
        return _BUILTIN[name].spec_field
    raise _unknown(name)


def config_class(name: str) -> type:
    """The configuration dataclass of proxy ``name``, importing only the module that declares it (for the
    embedding proxy a module without JAX)."""
    if name in _REGISTERED:
        return _REGISTERED[name].config_class
    if name in _BUILTIN:
        return _import_config(_BUILTIN[name].config)
    raise _unknown(name)


def make_config(name: str, options: Mapping[str, Any] | None = None):
    """The proxy's configuration with ``options`` applied (strings converted to the fields' types).

    Raises :class:`UserError` naming the option and the allowed names or values.
    """
    return parse_dataclass_options(config_class(name), dict(options or {}))


def config_dict(config) -> dict:
    """A configuration dataclass as a JSON-ready dict (tuples as lists)."""
    to_dict = getattr(config, "to_dict", None)
    return to_dict() if callable(to_dict) else dataclasses.asdict(config)
