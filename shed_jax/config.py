"""Every option of a SHED run, declared once: default, help text, command-line flag and check.

:class:`RefineConfig` is the single source. Each field is declared with :func:`option`, whose metadata the
command line (:mod:`shed_jax.cli`) turns into click options, so a flag, its default and its help can never
disagree with the library. Validation runs in ``__post_init__``: a bad value raises
:class:`shed_jax.errors.PipelineError` naming the flag (``--ratio: must be in (0, 1], got 1.5``).

Proxy configurations are typed frozen dataclasses too (one per proxy, see :mod:`shed_jax.proxies`);
``--proxy-option NAME=VALUE`` strings are converted by :func:`parse_dataclass_options` against the chosen
proxy's dataclass.

This module imports no JAX, so ``shed --help`` stays fast.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from shed_jax.errors import PipelineError, UserError

__all__ = ["AUTO_PROXIES_PER_CLUSTER", "DEFAULT_MODEL", "auto_proxies_per_cluster", "DUPLICATE_POLICIES", "INSTRUCTION_FORMATS", "OptionSpec", "RefineConfig", "SAMPLERS",
           "VALID_FORMATS", "check_positive_int", "option", "option_spec", "parse_dataclass_options"]

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SAMPLERS = ("qocs", "qwcs", "random")
DUPLICATE_POLICIES = ("drop", "keep", "error")
INSTRUCTION_FORMATS = ("alpaca", "sharegpt", "messages", "prompt_completion", "text")
VALID_FORMATS = ("auto", "multiple_choice") + INSTRUCTION_FORMATS


# --------------------------------------------------------------------------------------------------
# declaring options
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptionSpec:
    """How one configuration field appears on the command line and how it is checked.

    Attributes:
      help: one or two sentences for ``--help``.
      flag: the long flag (``"--clusters"``); ``None`` derives ``--field-name``; ``""`` means no flag.
      short: a short flag (``"-o"``) or None.
      metavar: what the value looks like in ``--help``.
      choices: the allowed values (a callable returning them is resolved when checked or shown).
      minimum / maximum: numeric bounds (inclusive unless ``exclusive_minimum``).
      kind: ``"int" | "float" | "str" | "path" | "pairs" | "options" | "flag"`` (derived from the type when
        None; ``"flag"`` is a boolean ``--name`` switch).
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
    """A dataclass field carrying an :class:`OptionSpec` (``spec`` are its fields besides ``help``)."""
    return dataclasses.field(default=default, metadata={"shed": OptionSpec(help=help, **spec)})


def option_spec(cls, name: str) -> OptionSpec:
    """The :class:`OptionSpec` of field ``name`` of dataclass ``cls`` (a plain one for undeclared fields)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("shed") or OptionSpec(help=f.metadata.get("help", ""))
    raise KeyError(name)


def check_positive_int(value: Any, name: str, *, minimum: int = 1, allow_none: bool = False,
                       error: type[Exception] = ValueError) -> int | None:
    """``int(value)`` when ``value`` is an integer (not a bool) ``>= minimum``; else raises ``error``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise error(f"{name} must be {what}, got {value!r}")
    return int(value)


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


def _check_value(name: str, spec: OptionSpec, kind: str, value: Any, *, owner: str = "") -> None:
    """Raise :class:`PipelineError` naming ``spec``'s flag if ``value`` breaks its type, choices or bounds."""
    label = spec.flag_for(name) or name
    if kind == "auto_int":  # "auto" or an integer >= minimum
        if value == "auto":
            return
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise PipelineError(f"must be auto or an integer, got {value!r}", field=label)
        kind = "int"
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


def validate_fields(instance, *, skip: tuple[str, ...] = ()) -> None:
    """Check every declared field of a config dataclass against its :class:`OptionSpec` (None allowed where
    the annotation allows it)."""
    for f in dataclasses.fields(instance):
        spec = f.metadata.get("shed")
        if spec is None or f.name in skip:
            continue
        value = getattr(instance, f.name)
        if value is None and _allows_none(f.type):
            continue
        _check_value(f.name, spec, _field_kind(spec, f.type), value)


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


# --------------------------------------------------------------------------------------------------
# the run configuration
# --------------------------------------------------------------------------------------------------


def _proxy_names() -> tuple[str, ...]:
    from shed_jax.proxies.registry import names

    return names()


@dataclass(frozen=True)
class RefineConfig:
    """Every option of a SHED run. Written to ``RUN_DIR/config.json`` and read back for ``--resume``.

    Paths are stored as given (the CLI makes them absolute). Options left ``None`` are resolved per run
    (``n_clusters`` by :func:`default_n_clusters`, ``removal_step`` by :func:`default_removal_step`,
    ``run_dir`` by :func:`shed_jax.run.rundir.default_run_dir`); the resolved values are recorded next to the
    config. Each field's help text is the one ``shed ... --help`` shows.
    """

    data: str = option(None, "Instruction data: a JSON or JSON Lines file (.gz too), .parquet, .csv/.tsv, a "
                             "datasets save_to_disk directory, hf:OWNER/NAME[/CONFIG] (Hugging Face hub), or - "
                             "(JSON Lines on stdin).", flag="", metavar="DATA")
    output: str | None = option(None, "Where to write the selected records, in the format of the extension (.jsonl, "
                                      ".jsonl.gz, .parquet, .csv, .tsv), else in DATA's (hf:, save_to_disk and stdin: "
                                      "JSON Lines).", short="-o", metavar="OUT", kind="path")
    valid: str | None = option(
        None, "Validation set: multiple-choice ({question, choices, answer}) or instruction records; any source "
              "DATA can be but stdin.", metavar="VALID", kind="path")
    split: str = option("train", "Split of DATA when it is hf:... or a save_to_disk DatasetDict directory.",
                        metavar="SPLIT")
    revision: str | None = option(None, "Revision (branch, tag or commit) of an hf:... DATA.", metavar="REV",
                                  default_text="the main branch")
    valid_split: str = option("validation", "Split of VALID when it is hf:... or a save_to_disk DatasetDict "
                                            "directory.", metavar="SPLIT")
    run_dir: str | None = option(None, "Run directory.", metavar="DIR", kind="path",
                                 default_text="$SHED_HOME/runs/<data>-<time>")
    format: str = option("auto", "Record format of DATA (auto: detected from the keys).",
                         choices=("auto",) + INSTRUCTION_FORMATS)
    field_map: tuple[tuple[str, str], ...] = option(
        (), "Map canonical field names to the keys in DATA, e.g. instruction=question,output=answer.",
        metavar="NAME=KEY,...", kind="pairs")
    duplicates: str = option("drop", "Exact duplicate records: drop (never clustered or selected), keep, or error.",
                             choices=DUPLICATE_POLICIES)
    valid_format: str = option("auto", "Format of VALID: auto, multiple_choice, or an instruction format.",
                               choices=VALID_FORMATS)
    text: str = option("all", "What to embed for clustering: prompt + response, one side, or a comma list of "
                              "record keys.", metavar="all|prompt|response|KEY,...")
    model: str = option(DEFAULT_MODEL, "Sentence-transformers model (hub name or local path; the default "
                                       "ships offline).")
    batch_size: int = option(64, "Embedding batch size.", minimum=1)
    n_clusters: int | None = option(None, "Number of clusters K.", flag="--clusters", minimum=1,
                                    default_text="clip(N // 20, 2, 64)")
    kmeans_max_iter: int = option(100, "k-means iterations.", flag="--max-iter", minimum=1)
    proxy: str = option("embedding", "Utility that values a coalition of proxies (embedding: a scorer fitted in "
                                     "sentence-embedding space, CPU-friendly; lm: LoRA fine-tunes of a causal LM). "
                                     "NAME:SPEC is short for --proxy NAME --proxy-option <its main option>=SPEC.",
                        choices=_proxy_names, metavar="NAME[:SPEC]")
    proxy_options: tuple[tuple[str, Any], ...] = option(
        (), "Set a field of the proxy's configuration (repeatable), e.g. steps=20, metric=logprob; "
            "`shed proxies` lists every proxy's options with their defaults.",
        flag="--proxy-option", metavar="NAME=VALUE", kind="options")
    proxies_per_cluster: int | str = option(
        "auto", "Members M of each cluster valued as Shapley players (those nearest its centroid); a cluster's value "
                "is their mean. 1 is SHED's single proxy; more cost more but see clusters that mix good and bad "
                "examples. auto: the largest M in 1, 2, 4, 8, 16 with K x M <= --max-players and M <= N / K, "
                "lowered further while a proxy that estimates its cost (lm) would exceed --value-time-budget.",
        kind="auto_int", minimum=1, metavar="auto|M")
    value_player_budget: int = option(
        1000, "Most Shapley players (K x M) that --proxies-per-cluster auto may choose.", flag="--max-players",
        minimum=1)
    value_time_budget: float = option(
        3600.0, "Seconds that --proxies-per-cluster auto allows the value stage, for proxies that estimate their "
                "cost (lm).", minimum=0.0, exclusive_minimum=True, metavar="SECONDS")
    n_permutations: int = option(50, "Monte Carlo permutations (each costs about K / removal-step utility "
                                     "evaluations).", flag="--permutations", minimum=1)
    removal_step: int | None = option(None, "Proxies removed per step along a permutation.", minimum=1,
                                      default_text="max(1, P // 32) for P = K x proxies-per-cluster players")
    shapley_batch_size: int | None = option(None, "Coalitions per utility call.", minimum=1,
                                            default_text="the utility's preferred size per device x devices")
    sampler: str = option("qocs", "qocs: best clusters whole; qwcs: clusters drawn with weight exp(beta * "
                                  "z-scored value); random: uniform baseline.", choices=SAMPLERS)
    beta: float = option(1.0, "QWCS inverse temperature on z-scored cluster values (0 = uniform over clusters).",
                         minimum=0.0)
    ratio: float | None = option(None, "Budget as a fraction of the candidate examples, in (0, 1].", minimum=0.0,
                                 exclusive_minimum=True, maximum=1.0)
    size: int | None = option(None, "Budget as a number of examples.", minimum=1)
    keep_order: bool = option(False, "Write the selected records in their input order (default: the sampler's "
                                      "order, best clusters first for qocs).", kind="flag")
    seed: int = option(0, "Seeds k-means, the proxy utility, the Shapley permutations and the sampler.")

    def __post_init__(self):
        # Normalise mappings given as dicts (e.g. from JSON) into hashable, sorted tuples.
        field_map = self.field_map.items() if isinstance(self.field_map, Mapping) else self.field_map
        object.__setattr__(self, "field_map", tuple((str(k), str(v)) for k, v in field_map))
        options = dict(self.proxy_options.items() if isinstance(self.proxy_options, Mapping) else self.proxy_options)
        proxy = self.proxy
        if isinstance(proxy, str) and ":" in proxy:  # --proxy NAME:SPEC
            proxy, spec = proxy.split(":", 1)
            from shed_jax.proxies.registry import get

            spec_field = get(proxy).spec_field
            if not spec_field:
                raise PipelineError(f"proxy {proxy!r} takes no NAME:SPEC short form; use --proxy-option",
                                    field="--proxy")
            options.setdefault(spec_field, spec)
            object.__setattr__(self, "proxy", proxy)
        object.__setattr__(self, "proxy_options", tuple(sorted((str(k), v) for k, v in options.items())))
        per_cluster = self.proxies_per_cluster
        if isinstance(per_cluster, str):  # "auto", or an integer written as text (CLI, JSON)
            text = per_cluster.strip().lower()
            if text != "auto":
                try:
                    text = int(text)
                except ValueError:
                    raise PipelineError(f"must be auto or a positive integer, got {per_cluster!r}",
                                        field="--proxies-per-cluster") from None
            object.__setattr__(self, "proxies_per_cluster", text)
        if not self.data:
            raise PipelineError("no data file given", field="DATA")
        validate_fields(self, skip=("data",))
        if self.ratio is not None and self.size is not None:
            raise PipelineError("give either a ratio or a size for the budget, not both", field="--ratio/--size")

    # -- serialisation ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-compatible dict (``field_map``/``proxy_options`` as objects)."""
        out = dataclasses.asdict(self)
        out["field_map"] = dict(self.field_map)
        out["proxy_options"] = dict(self.proxy_options)
        return out

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> "RefineConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`PipelineError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - names)
        if unknown:
            raise PipelineError(f"unknown configuration keys: {', '.join(unknown)}")
        return cls(**dict(mapping))

    def replace(self, **changes) -> "RefineConfig":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def resolved_n_clusters(self, n_candidates: int) -> int:
        return int(self.n_clusters) if self.n_clusters is not None else default_n_clusters(n_candidates)

    def resolved_proxies_per_cluster(self, n_clusters: int, n_candidates: int) -> int:
        """``proxies_per_cluster``, or for ``"auto"`` :func:`auto_proxies_per_cluster` under the player budget."""
        if self.proxies_per_cluster != "auto":
            return int(self.proxies_per_cluster)
        return auto_proxies_per_cluster(n_clusters, n_candidates, max_players=self.value_player_budget)

    def resolved_removal_step(self, n_clusters: int, proxies_per_cluster: int | None = None) -> int:
        """``removal_step``, or the default for ``n_clusters * proxies_per_cluster`` players (``proxies_per_cluster``
        defaults to the configured integer; with ``"auto"`` pass the resolved one)."""
        if self.removal_step is not None:
            return int(self.removal_step)
        if proxies_per_cluster is None:
            if self.proxies_per_cluster == "auto":
                raise ValueError("proxies_per_cluster is 'auto': pass the resolved proxies_per_cluster")
            proxies_per_cluster = int(self.proxies_per_cluster)
        return default_removal_step(n_clusters * int(proxies_per_cluster))

    @property
    def abs_paths(self) -> "RefineConfig":
        """A copy with every path field made absolute (as the command line stores them)."""
        changes = {name: os.path.abspath(os.path.expanduser(getattr(self, name)))
                   for name in ("data", "output", "valid", "run_dir") if is_local_path(getattr(self, name))}
        return self.replace(**changes)


def is_local_path(value: str | None) -> bool:
    """True for a file-system path; False for None, ``-`` (stdin) and ``hf:OWNER/NAME`` (Hugging Face hub)."""
    return bool(value) and value != "-" and not str(value).startswith("hf:")


def default_n_clusters(n_candidates: int) -> int:
    """Number of clusters used when none is given: ``clip(n_candidates // 20, 2, 64)`` (at most N).

    About 20 examples per cluster for small sets, capped at 64 so that the Shapley stage stays cheap on a
    CPU; pass ``n_clusters`` explicitly for large data sets (the SHED paper uses hundreds to thousands).
    """
    return int(max(1, min(n_candidates, max(2, min(64, n_candidates // 20)))))


AUTO_PROXIES_PER_CLUSTER = (1, 2, 4, 8, 16)
"""The values ``--proxies-per-cluster auto`` chooses from."""


def auto_proxies_per_cluster(n_clusters: int, n_candidates: int, *, max_players: int,
                             fits: Callable[[int], bool] | None = None) -> int:
    """The M that ``--proxies-per-cluster auto`` values: the largest M in :data:`AUTO_PROXIES_PER_CLUSTER`
    with ``K * M <= max_players`` (the player budget), ``K * M <= n_candidates`` (M at most the mean cluster
    size: beyond it most clusters are valued whole already) and, when given, ``fits(M)`` (e.g. the proxy's
    estimated value-stage time within the time budget); 1 when none qualifies.

    >>> auto_proxies_per_cluster(150, 3000, max_players=1000), auto_proxies_per_cluster(1000, 15000, max_players=4000)
    (4, 4)
    """
    for per_cluster in sorted(AUTO_PROXIES_PER_CLUSTER, reverse=True):
        players = int(n_clusters) * per_cluster
        if per_cluster == 1 or (players <= max_players and players <= n_candidates
                                and (fits is None or fits(per_cluster))):
            return per_cluster
    return 1


def default_removal_step(n_clusters: int) -> int:
    """Players added per utility evaluation along a permutation when none is given: ``max(1, K // 32)``.

    One permutation then costs about ``K / removal_step <= 32..63`` utility evaluations.
    """
    return max(1, int(n_clusters) // 32)
