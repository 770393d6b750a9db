"""The settings of the negation pipeline: how a run runs (:class:`RunOptions`: device,
dtype, image cache) and what a study computes (:class:`NegationStudyConfig`, read from a
recipe YAML by :func:`load_recipe`, every key checked)."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mechtune.data.mentions import check_conditions
from mechtune.errors import ConfigError
from mechtune.eval.freeform import DEFAULT_MAX_STUDIES
from mechtune.eval.study_config import check_seeds
from mechtune.interp.alpha import DEFAULT_TAU, check_alpha_settings
from mechtune.models.dual_encoder import DualEncoder
from mechtune.models.precision import resolve_device, resolve_dtype
from mechtune.models.spec import load_dual_encoder
from mechtune.train.lora import LoraSettings
from mechtune.train.methods import methods_for
from mechtune.train.negation import LoopConfig
from mechtune.train.selection import criterion_metrics


@dataclass(frozen=True)
class RunOptions:
    """How a pipeline runs, not what it computes: ``device`` and ``dtype`` of the model's
    weights (:func:`~mechtune.models.spec.load_dual_encoder`), and ``cache_dir`` for image
    embeddings (None: no cache)."""

    device: str = "cpu"
    dtype: str | None = None
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        # fail before any data is read: a device this machine lacks, a dtype name typo
        resolve_device(self.device)
        resolve_dtype(self.dtype)

    def load(self, spec: str) -> DualEncoder:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no per-load progress bars in run logs
        return load_dual_encoder(spec, device=self.device, dtype=self.dtype)


PACKAGED_FREEFORM = "packaged"  # the free-form claim sets shipped with mechtune


@dataclass(frozen=True)
class NegationStudyConfig:
    """A negation study; each field is checked at construction.

    ``model``: the model spec; ``data``: the image-study source (a folder or manifest
    :func:`~mechtune.data.sources.open_source` reads), or None when the command names it;
    ``methods``: registered negation methods, each trained once per seed of ``seeds``
    (zero-shot, which does not train, once); ``data_seed``: the seed of the claim sets'
    wording, the MCQs and the trace pairs (per study, so every model sees the same items);
    ``trace_per_study`` present and absent facts traced per train-split study, at most
    ``trace_max_pairs`` pairs; ``eval_split``: "val" to choose settings, "test" to report;
    ``balance_polarity``: repeat the minority polarity's claim sets; ``probes``: linear
    probes on image embeddings beside the text metrics; ``loop``: the training settings
    every method shares (its ``seed`` is each of ``seeds`` in turn).

    ``alpha_source`` (``mean``, ``negator``, ``max``), ``alpha_norm`` (``minmax``,
    ``rank``, ``softmax``) and ``alpha_tau`` (softmax's temperature, in CTE units): how
    the traced CTE becomes alpha (:mod:`mechtune.interp.alpha`; the default is NAST's).
    ``random_alpha_permutations``: how many permutations of alpha the ``random-alpha``
    control trains, each once per seed (:mod:`mechtune.pipelines.negation_controls`).
    ``freeform``: the free-form claim sets scored beside the template ones
    (:mod:`mechtune.eval.freeform`): ``"packaged"`` (:data:`PACKAGED_FREEFORM`, the
    hand-written set shipped with mechtune), a path to a file of the same schema, or
    None to leave them out; ``freeform_max_studies``: studies scored per set at most.
    ``holdout_conditions``: conditions (ontology ids or CheXpert columns, stored as ids)
    whose every training text is removed, counted in the results and the table
    (:mod:`mechtune.train.negation_data`; issue 18's held-out finding); the evaluation
    then reports their slice apart (:mod:`mechtune.eval.holdout`); empty: none.
    ``grid``: ``{key: [values]}`` of settings to cross (dotted keys: ``loop.beta``,
    ``loop.lora.rank``); the study then runs every cell
    (:mod:`mechtune.pipelines.negation_grid`); None: one study.
    """

    model: str = "phantom:default"
    data: str | None = None
    methods: tuple[str, ...] = ("zero-shot", "uniform-lora", "nast")
    seeds: tuple[int, ...] = (0,)
    data_seed: int = 0
    trace_per_study: int = 1
    trace_max_pairs: int = 300
    eval_split: str = "test"
    balance_polarity: bool = True
    probes: bool = False
    alpha_source: str = "mean"
    alpha_norm: str = "minmax"
    alpha_tau: float = DEFAULT_TAU
    random_alpha_permutations: int = 3
    freeform: str | None = "packaged"
    freeform_max_studies: int = DEFAULT_MAX_STUDIES
    holdout_conditions: tuple[str, ...] = ()
    grid: dict[str, tuple[Any, ...]] | None = None
    loop: LoopConfig = field(
        default_factory=lambda: LoopConfig(
            steps=150,
            lr=5e-4,
            beta=1.0,
            scaling="lr",
            checkpoint_every=50,
            lora=LoraSettings(rank=8, alpha=16),
        )
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if self.eval_split not in ("val", "test"):
            raise ConfigError(
                f"eval_split must be 'val' (choosing settings) or 'test' (reporting), "
                f"got {self.eval_split!r}"
            )
        known = methods_for("negation")
        unknown = [m for m in self.methods if m not in known]
        if not self.methods or unknown or len(set(self.methods)) != len(self.methods):
            raise ConfigError(
                f"methods must name distinct registered negation methods ({', '.join(known)}), "
                f"got {list(self.methods)}"
            )
        check_seeds(self.seeds)
        if self.data_seed < 0:
            raise ConfigError(f"data_seed must be >= 0, got {self.data_seed}")
        if self.trace_per_study < 1:
            raise ConfigError(f"trace_per_study must be >= 1, got {self.trace_per_study}")
        if self.trace_max_pairs < 1:
            raise ConfigError(f"trace_max_pairs must be >= 1, got {self.trace_max_pairs}")
        if self.loop.seed != 0:
            raise ConfigError(
                f"loop.seed ({self.loop.seed}) is not read: each run's seed is one of "
                f"seeds {list(self.seeds)}; set seeds instead"
            )
        check_alpha_settings(self.alpha_source, self.alpha_norm, self.alpha_tau)
        if self.random_alpha_permutations < 1:
            raise ConfigError(
                f"random_alpha_permutations must be >= 1, got {self.random_alpha_permutations}"
            )
        if self.freeform is not None and (
            not isinstance(self.freeform, str) or not self.freeform.strip()
        ):
            raise ConfigError(
                f"freeform must be {PACKAGED_FREEFORM!r}, a file path, or null (off), "
                f"got {self.freeform!r}"
            )
        if isinstance(self.freeform_max_studies, bool) or self.freeform_max_studies < 1:
            raise ConfigError(
                f"freeform_max_studies must be an integer >= 1, got {self.freeform_max_studies!r}"
            )
        object.__setattr__(self, "holdout_conditions", check_conditions(self.holdout_conditions))
        reads = criterion_metrics(self.loop.keep_best) if self.loop.keep_best else ()
        if self.freeform is None and any(m.startswith("freeform") for m in reads):
            raise ConfigError(
                f"loop.keep_best {self.loop.keep_best!r} reads the free-form validation half, "
                "and freeform is null (off); turn freeform on or choose claim_accuracy"
            )
        if self.grid is not None:
            object.__setattr__(self, "grid", check_grid(self.grid))
            grid_cells(self)  # every cell's settings are valid

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(
            methods=list(self.methods),
            seeds=list(self.seeds),
            holdout_conditions=list(self.holdout_conditions),
            loop=self.loop.to_dict(),
        )
        if self.grid is not None:
            out["grid"] = {k: list(v) for k, v in self.grid.items()}
        return out


# -- grids -------------------------------------------------------------------------------

# A cell may not change these: the data is the command's source, and a grid in a cell
# would nest grids.
NOT_GRIDDED = ("data", "grid")


def grid_keys() -> list[str]:
    """Every key a grid may cross: the study's fields (but :data:`NOT_GRIDDED`),
    ``loop.<field>`` (but ``loop.seed``: use ``seeds``) and ``loop.lora.<field>``."""
    from mechtune.train.lora import LoraSettings

    keys = [f.name for f in fields(NegationStudyConfig) if f.name not in NOT_GRIDDED]
    keys.remove("loop")
    keys += [f"loop.{f.name}" for f in fields(LoopConfig) if f.name not in ("seed", "lora")]
    keys += [f"loop.lora.{f.name}" for f in fields(LoraSettings)]
    return keys


JOIN = "+"


def joined_keys(key: str) -> list[str]:
    """The settings a grid key sets: ``loop.optimizer+loop.momentum+loop.lr`` is three
    settings that vary together (each value a list of three), any other key is one."""
    return key.split(JOIN)


def check_grid(grid: Any) -> dict[str, tuple[Any, ...]]:
    """The grid as ``{key: (values...)}``: each key one of :func:`grid_keys`, each value a
    non-empty list of distinct values (a list value, such as ``methods``, becomes a
    tuple). A key of several settings joined by ``+`` (:func:`joined_keys`) varies them
    together: each of its values is a list with one value per setting, so
    ``{"loop.optimizer+loop.momentum+loop.lr": [[adamw, 0, 5e-4], [sgd, 0.9, 0.05]]}`` is
    two cells, not a cross of three lists. Raises ConfigError naming the key; the values
    themselves are checked by building every cell (:func:`grid_cells`)."""
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"grid must be a mapping of keys to lists of values, got {grid!r}")
    known = grid_keys()
    out: dict[str, tuple[Any, ...]] = {}
    seen: set[str] = set()
    for key, values in grid.items():
        parts = joined_keys(str(key))
        for part in parts:
            if part not in known:
                why = (
                    " (the data is the command's --data or the recipe's data:)"
                    if part == "data"
                    else ""
                )
                raise ConfigError(
                    f"grid key {part!r} is not a recipe setting a cell may change{why}; known: "
                    f"{', '.join(known)}"
                )
            if part in seen:
                raise ConfigError(f"grid key {part!r} is set by two grid keys ({key!r})")
            seen.add(part)
        if not isinstance(values, list | tuple) or not values:
            raise ConfigError(f"grid key {key!r}: give a non-empty list of values, got {values!r}")
        if len(parts) > 1:
            for value in values:
                if not isinstance(value, list | tuple) or len(value) != len(parts):
                    raise ConfigError(
                        f"grid key {key!r} sets {len(parts)} settings together: each value "
                        f"must be a list of {len(parts)} (one per setting), got {value!r}"
                    )
            cell_values = tuple(
                tuple(tuple(v) if isinstance(v, list) else v for v in value) for value in values
            )
        else:
            cell_values = tuple(tuple(v) if isinstance(v, list) else v for v in values)
        if len(set(map(repr, cell_values))) != len(cell_values):
            raise ConfigError(f"grid key {key!r}: values repeat ({list(values)})")
        out[str(key)] = cell_values
    return out


def with_setting(config: NegationStudyConfig, key: str, value: Any) -> NegationStudyConfig:
    """``config`` with one dotted setting changed (``alpha_norm``, ``loop.beta``,
    ``loop.lora.rank``). Raises ConfigError naming the key for a value of the wrong kind
    or one the settings refuse."""
    _, _, rest = key.partition(".")
    try:
        if not rest:
            _check_numbers({key: value}, NegationStudyConfig(), "", f"grid key {key!r}")
            return replace(config, **{key: value})
        sub, _, leaf = rest.partition(".")
        if not leaf:
            _check_numbers({sub: value}, LoopConfig(), "", f"grid key {key!r}")
            return replace(config, loop=replace(config.loop, **{sub: value}))
        if config.loop.lora is None:
            raise ConfigError(
                f"grid key {key!r}: the recipe's loop.lora is null (full fine-tuning), so "
                "there are no LoRA settings to vary"
            )
        from mechtune.train.lora import LoraSettings

        _check_numbers({leaf: value}, LoraSettings(), "", f"grid key {key!r}")
        lora = replace(config.loop.lora, **{leaf: value})
        return replace(config, loop=replace(config.loop, lora=lora))
    except ConfigError as err:
        message = str(err)
        raise ConfigError(
            message if message.startswith("grid key") else f"grid key {key!r}: {message}"
        ) from None
    except TypeError as err:
        raise ConfigError(f"grid key {key!r}: {err}") from None


def with_settings(config: NegationStudyConfig, settings: dict[str, Any]) -> NegationStudyConfig:
    """``config`` with several dotted settings changed at once, so that settings which
    constrain each other (``loop.optimizer`` and ``loop.momentum``: a momentum is refused
    unless the optimizer is sgd) are checked together, whatever their order. Each value
    is first checked alone (:func:`with_setting`, for the error naming its key); then every
    level (the study, ``loop``, ``loop.lora``) is rebuilt once. Raises ConfigError naming
    the keys."""
    for key, value in settings.items():
        # checked one at a time against the recipe's other settings; a refusal that comes
        # from another key of this cell is retried below, with every key in place
        try:
            with_setting(config, key, value)
        except ConfigError:
            if len(settings) == 1:
                raise
    top = {k: v for k, v in settings.items() if "." not in k}
    loop = {k.split(".", 1)[1]: v for k, v in settings.items() if k.count(".") == 1}
    lora = {k.split(".", 2)[2]: v for k, v in settings.items() if k.count(".") == 2}
    names = ", ".join(repr(k) for k in settings)
    try:
        for key, value in top.items():
            _check_numbers({key: value}, NegationStudyConfig(), "", f"grid key {key!r}")
        for key, value in loop.items():
            _check_numbers({key: value}, LoopConfig(), "", f"grid key 'loop.{key}'")
        if lora:
            if config.loop.lora is None:
                raise ConfigError(
                    f"grid key {names}: the recipe's loop.lora is null (full fine-tuning), "
                    "so there are no LoRA settings to vary"
                )
            from mechtune.train.lora import LoraSettings

            for key, value in lora.items():
                _check_numbers({key: value}, LoraSettings(), "", f"grid key 'loop.lora.{key}'")
            loop["lora"] = replace(config.loop.lora, **lora)
        return replace(config, **top, loop=replace(config.loop, **loop) if loop else config.loop)
    except ConfigError as err:
        message = str(err)
        raise ConfigError(
            message if message.startswith("grid key") else f"grid keys {names}: {message}"
        ) from None
    except TypeError as err:
        raise ConfigError(f"grid keys {names}: {err}") from None


def cell_name(settings: dict[str, Any]) -> str:
    """A folder name for a cell: ``alpha_norm=rank,loop.beta=0.5`` (characters other than
    letters, digits and ``._=+-`` become ``_``; list values are joined by ``+``)."""

    def text(value: Any) -> str:
        return "+".join(map(str, value)) if isinstance(value, tuple | list) else str(value)

    name = ",".join(f"{k}={text(v)}" for k, v in settings.items())
    return re.sub(r"[^A-Za-z0-9._=+,-]", "_", name)


def grid_cells(
    config: NegationStudyConfig,
) -> list[tuple[str, dict[str, Any], NegationStudyConfig]]:
    """``(name, {key: value}, cell config)`` of every cell of ``config.grid`` (every
    combination, the first key slowest; a joined key's settings appear one by one in
    ``{key: value}`` and the name), each cell's config without a grid. A config
    without a grid is its own single cell ``("study", {}, config)``. Raises ConfigError
    naming the key of a value a cell refuses."""
    if config.grid is None:
        return [("study", {}, config)]
    base = replace(config, grid=None)
    keys = list(config.grid)
    cells = []
    for values in itertools.product(*(config.grid[k] for k in keys)):
        settings: dict[str, Any] = {}
        for key, value in zip(keys, values, strict=True):
            parts = joined_keys(key)
            settings.update(zip(parts, value, strict=True) if len(parts) > 1 else {key: value})
        cells.append((cell_name(settings), settings, with_settings(base, settings)))
    return cells


def recipe_from_dict(raw: dict[str, Any], where: str) -> NegationStudyConfig:
    """A :class:`NegationStudyConfig` from parsed YAML. Every key must be a field (``loop`` a
    :class:`LoopConfig`, its ``lora`` a :class:`LoraSettings`, or null for full
    fine-tuning). Raises ``ConfigError`` naming ``where`` and every unknown key."""
    raw = dict(raw)
    grid = raw.pop("grid", None)
    loop = dict(raw.pop("loop", None) or {})
    lora = loop.pop("lora", {})
    unknown = sorted(set(raw) - {f.name for f in fields(NegationStudyConfig)} - {"loop"})
    unknown += sorted(f"loop.{k}" for k in set(loop) - {f.name for f in fields(LoopConfig)})
    if isinstance(lora, dict):
        unknown += sorted(
            f"loop.lora.{k}" for k in set(lora) - {f.name for f in fields(LoraSettings)}
        )
    if "seed" in loop:
        unknown.append("loop.seed (use seeds)")
    if unknown:
        raise ConfigError(f"{where}: unknown recipe keys {unknown}")
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    _check_numbers(values, NegationStudyConfig(), "", where)
    _check_numbers(loop, LoopConfig(), "loop.", where)
    if isinstance(lora, dict):
        _check_numbers(lora, LoraSettings(), "loop.lora.", where)
    try:
        settings = LoraSettings(**lora) if lora is not None else None
        return NegationStudyConfig(**values, grid=grid, loop=LoopConfig(**loop, lora=settings))
    except TypeError as exc:  # a value of the wrong kind (e.g. a mapping for a number)
        raise ConfigError(f"{where}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_numbers(values: dict[str, Any], defaults: Any, prefix: str, where: str) -> None:
    """A key whose default is a number must be given a number (``ConfigError`` naming the
    file, the dotted key and the value; YAML reads ``steps: abc`` as a string)."""
    for key, value in values.items():
        default = getattr(defaults, key, None)
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            continue
        wrong = isinstance(value, bool) or not isinstance(value, (int, float))
        if wrong or (
            isinstance(default, int)
            and not isinstance(default, float)
            and not isinstance(value, int)
        ):
            kind = "an integer" if isinstance(default, int) else "a number"
            raise ConfigError(f"{where}: {prefix}{key} must be {kind}, got {value!r}")


def load_recipe(path: str | Path) -> NegationStudyConfig:
    """A negation study from a recipe YAML (see ``recipes/nast-phantom.yaml``); a relative
    ``data:`` path is relative to the working directory, as on the command line. Raises
    ``ConfigError`` naming the file and the key."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of keys, got {type(raw).__name__}")
    return recipe_from_dict(raw, str(path))
