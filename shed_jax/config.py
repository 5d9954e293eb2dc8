"""Every option of a SHED run, declared once: default, help text, command-line flag and check.

:class:`RefineConfig` is the single source. Each field is declared with :func:`shed_jax.options.option`, whose
metadata the command line (:mod:`shed_jax.cli`) turns into click options, so a flag, its default and its help can
never disagree with the library. Validation runs in ``__post_init__`` through :func:`shed_jax.options.validate_fields`:
a bad value raises :class:`shed_jax.errors.PipelineError` naming the flag (``--ratio: must be in (0, 1], got 1.5``).
:class:`DemoConfig` (``shed demo``) reuses RefineConfig's declarations for the options they share; the checks
that span options are here once: :func:`check_budget` (``--ratio``/``--size``) and :func:`check_removal_step`.

Proxy configurations are typed frozen dataclasses too (one per proxy, see :mod:`shed_jax.proxies`);
``--proxy-option NAME=VALUE`` strings are converted by :func:`parse_dataclass_options` against the chosen
proxy's dataclass. ``--proxy NAME:SPEC`` is resolved from the registry's records (:mod:`shed_jax.proxies.registry`)
without importing the proxy.

This module imports no JAX, so ``shed --help`` stays fast.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from shed_jax.errors import PipelineError
from shed_jax.options import (OptionSpec, check_positive_int, option, option_spec,  # noqa: F401  (public here too)
                              parse_dataclass_options, shared_option, validate_fields)
from shed_jax.proxies import registry as _registry

__all__ = ["AUTO_PROXIES_PER_CLUSTER", "DEFAULT_MODEL", "DEMO_SIZES", "DemoConfig", "auto_proxies_per_cluster",
           "check_budget", "check_removal_step", "DUPLICATE_POLICIES", "INSTRUCTION_FORMATS", "OptionSpec",
           "RefineConfig", "SAMPLERS", "VALID_FORMATS", "check_positive_int", "option", "option_spec",
           "parse_dataclass_options"]

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SAMPLERS = ("qocs", "qwcs", "random")
DUPLICATE_POLICIES = ("drop", "keep", "error")
INSTRUCTION_FORMATS = ("alpaca", "sharegpt", "messages", "prompt_completion", "text")
VALID_FORMATS = ("auto", "multiple_choice") + INSTRUCTION_FORMATS


# --------------------------------------------------------------------------------------------------
# the run configuration
# --------------------------------------------------------------------------------------------------


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
    embed_dtype: str = option("float32", "Compute dtype of the embedding model: float32 (the default: the same "
                                         "selection on every machine), bfloat16, or auto (bfloat16 on a CPU with "
                                         "AMX bfloat16 units, about 2-3x faster there at mean cosine 0.9999 with "
                                         "float32, but k-means and the selection move with it; float32 "
                                         "elsewhere). Part of the embedding cache key and of the embed stage's fingerprint "
                                         "(auto as resolved): --resume with another dtype embeds again and redoes "
                                         "the stages after it.",
                              choices=("auto", "float32", "bfloat16"))
    n_clusters: int | None = option(None, "Number of clusters K.", flag="--clusters", minimum=1,
                                    default_text="clip(N // 20, 2, 64)")
    kmeans_max_iter: int = option(100, "k-means iterations.", flag="--max-iter", minimum=1)
    proxy: str = option("embedding", "Utility that values a coalition of proxies (embedding: a scorer fitted in "
                                     "sentence-embedding space, CPU-friendly; lm: LoRA fine-tunes of a causal LM). "
                                     "NAME:SPEC is short for --proxy NAME --proxy-option <its main option>=SPEC.",
                        choices=_registry.names, metavar="NAME[:SPEC]")
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
        if isinstance(proxy, str) and ":" in proxy:  # --proxy NAME:SPEC (the registry's record: no proxy imported)
            proxy, spec = proxy.split(":", 1)
            spec_field = _registry.spec_field(proxy)
            if not spec_field:
                raise PipelineError(f"proxy {proxy!r} takes no NAME:SPEC short form; use --proxy-option",
                                    field="--proxy")
            options.setdefault(spec_field, spec)
            object.__setattr__(self, "proxy", proxy)
        object.__setattr__(self, "proxy_options", tuple(sorted((str(k), v) for k, v in options.items())))
        if not self.data:
            raise PipelineError("no data file given", field="DATA")
        validate_fields(self, skip=("data",))  # also reads "auto"/"8" for --proxies-per-cluster
        check_budget(self.ratio, self.size)

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


# --------------------------------------------------------------------------------------------------
# checks that span options (each in one place: every command and the library call these)
# --------------------------------------------------------------------------------------------------


def check_budget(ratio: float | None, size: int | None, *, required: bool = False) -> None:
    """The budget is ``--ratio`` or ``--size``, never both (and, when ``required``, one of them): else a
    :class:`PipelineError` naming both options. Each value's own check (range, type) is its declaration's."""
    if ratio is not None and size is not None:
        raise PipelineError("give either --ratio or --size for the budget, not both", field="--ratio/--size")
    if required and ratio is None and size is None:
        raise PipelineError("give a budget: --ratio R (fraction of the examples) or --size N", field="--ratio/--size")


def check_removal_step(removal_step: int, n_players: int, *, detail: str = "") -> None:
    """A removal step larger than the Shapley players is a :class:`PipelineError` naming ``--removal-step``
    (``detail`` says how the players were counted and what to change)."""
    if int(removal_step) > int(n_players):
        raise PipelineError(f"{removal_step} is larger than the number of players ({int(n_players):,}{detail})",
                            field="--removal-step")


# --------------------------------------------------------------------------------------------------
# shed demo
# --------------------------------------------------------------------------------------------------

DEMO_SIZES = {"small": {"n_examples": 600, "n_topics": 16, "n_clusters": 16, "n_validation": 120},
              "default": {"n_examples": 3000, "n_topics": 32, "n_clusters": 48, "n_validation": 300}}
"""The generated data sets of ``shed demo --size``."""


@dataclass(frozen=True)
class DemoConfig:
    """The options of ``shed demo`` (:func:`shed_jax.demo.demo`). Those it shares with a refine run are
    RefineConfig's declarations (flag, help, check), with the demo's defaults; checked when built, before the
    demo writes anything."""

    run_dir: str | None = shared_option(RefineConfig, "run_dir", default_text="$SHED_HOME/runs/demo-<size>-<time>")
    size: str = option("small", "small: 600 records, 16 clusters (~2 CPU-minutes); default: 3000 records, 48 "
                                "clusters.", choices=tuple(DEMO_SIZES))
    ratio: float = shared_option(RefineConfig, "ratio", default=0.2)
    n_permutations: int | None = shared_option(RefineConfig, "n_permutations", default=None,
                                               default_text="as in `shed refine`")
    proxies_per_cluster: int | str = shared_option(RefineConfig, "proxies_per_cluster")
    model: str = shared_option(RefineConfig, "model")
    seed: int = shared_option(RefineConfig, "seed")

    def __post_init__(self):
        validate_fields(self)

    def refine_config(self, *, data: str, valid: str, output: str, run_dir: str) -> RefineConfig:
        """The refine run of the demo on its generated data (QOCS, the size's K)."""
        return RefineConfig(data=data, valid=valid, output=output, run_dir=run_dir,
                            n_clusters=DEMO_SIZES[self.size]["n_clusters"], ratio=self.ratio, sampler="qocs",
                            seed=self.seed, model=self.model, proxies_per_cluster=self.proxies_per_cluster,
                            **({"n_permutations": self.n_permutations} if self.n_permutations is not None else {}))
