"""The paraphrase study's settings: :class:`ParaphraseStudyConfig`, read from a recipe
YAML by :func:`load_paraphrase_recipe` with every key checked
(``recipes/consistency-phantom.yaml``). The study is
:func:`mechtune.pipelines.paraphrase.run_paraphrase_study`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mechtune.errors import ConfigError
from mechtune.eval.study_config import check_seeds
from mechtune.models.vlm_spec import parse_vlm_spec
from mechtune.train.consistency import ConsistencyConfig

RANGES = ("all", "sae", "early", "late")
_TRAINED_SAE_FIELDS = ("sae_width", "sae_k", "sae_steps", "sae_reports")


@dataclass(frozen=True)
class ParaphraseStudyConfig:
    """One paraphrase study; each field is checked at construction.

    ``model``: the yes/no VLM spec (:func:`mechtune.models.vlm_spec.load_yes_no_vlm`);
    ``seed``: the SAE corpus, the analysis sample and the SAE training;
    ``max_questions``: at most this many train and this many evaluation questions, the
    first in file order (None: all); ``eval_split``: "val" to choose settings, "test" to
    report; ``seeds``: one consistency LoRA run per seed and range;
    ``sae_layers``: the blocks that get SAEs and enter the flip analysis (None: all);
    ``saes``: a folder of per-layer SAEs to analyse (``layer_<L>`` or Gemma Scope 2's
    ``layer_<L>_<variant>``) instead of training them, with ``sae_variant`` picking one
    variant; ``sae_width`` / ``sae_k`` / ``sae_steps``: the TopK SAEs trained here (when
    ``saes`` is None), with ``sae_reports`` train-split reports as extra text;
    ``analysis_sets``: train questions the flip analysis reads; ``half_width``: the chosen
    range is the AUC peak ± this; ``auc_shuffles``: the shuffled-label control of the
    flip-prediction AUC, this many shuffles of the flip labels (0: off;
    :mod:`mechtune.interp.flip_auc`); ``ranges``: which layer ranges get consistency LoRA;
    ``random_ranges``: that many random contiguous ranges of the SAE range's width also
    get it, as rows ``random-0``, ``random-1``, ..., drawn by ``seed`` without repeats
    and apart from the SAE range (fewer, with a note, where the model has too few blocks;
    :func:`mechtune.pipelines.paraphrase_controls.random_layer_ranges`); it needs
    ``sae`` among ``ranges``, the range it is a control for;
    ``lora``: the training settings every range shares, which ``mechtune paraphrase
    train`` also reads (its ``lora.layers`` and ``seed`` are set per run). Raises
    ``ConfigError`` naming the field.
    """

    model: str = "phantom:vqa"
    seed: int = 0
    max_questions: int | None = None
    eval_split: str = "test"
    seeds: tuple[int, ...] = (0,)
    sae_layers: tuple[int, ...] | None = None
    saes: str | None = None
    sae_variant: str | None = None
    sae_width: int = 768
    sae_k: int = 16
    sae_steps: int = 400
    sae_reports: int = 1000
    analysis_sets: int = 600
    half_width: int = 1
    auc_shuffles: int = 0
    ranges: tuple[str, ...] = RANGES
    random_ranges: int = 0
    lora: ConsistencyConfig = field(default_factory=ConsistencyConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or ":" not in self.model:
            raise ConfigError(f"model must be a VLM spec SCHEME:NAME, got {self.model!r}")
        if self.eval_split not in ("val", "test"):
            raise ConfigError(
                f"eval_split must be 'val' (choosing settings) or 'test' (reporting), "
                f"got {self.eval_split!r}"
            )
        object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(self, "ranges", tuple(self.ranges))
        unknown = sorted(set(self.ranges) - set(RANGES))
        if unknown or not self.ranges or len(set(self.ranges)) != len(self.ranges):
            raise ConfigError(
                f"ranges must name distinct layer ranges of {list(RANGES)}, got {list(self.ranges)}"
            )
        check_seeds(self.seeds)
        if self.sae_layers is not None:
            layers = tuple(int(i) for i in self.sae_layers)
            if not layers or len(set(layers)) != len(layers) or min(layers) < 0:
                raise ConfigError(
                    f"sae_layers must be distinct block indices >= 0, got {list(layers)}"
                )
            object.__setattr__(self, "sae_layers", tuple(sorted(layers)))
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", ConsistencyConfig.from_dict(self.lora))
        for name in ("auc_shuffles", "random_ranges"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an int >= 0 (0: off), got {value!r}")
        if self.random_ranges and "sae" not in self.ranges:
            raise ConfigError(
                f"random_ranges ({self.random_ranges}) are a control for the SAE range: "
                f"add sae to ranges {list(self.ranges)}"
            )
        least = {"sae_width": 1, "sae_steps": 1, "analysis_sets": 2, "half_width": 0}
        least |= {"sae_reports": 0}
        if self.max_questions is not None:
            least["max_questions"] = 2
        for name, low in least.items():
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if not 1 <= self.sae_k <= self.sae_width:
            raise ConfigError(f"sae_k ({self.sae_k}) must be in [1, sae_width ({self.sae_width})]")
        if self.saes is not None:
            default = ParaphraseStudyConfig.__dataclass_fields__
            unread = [n for n in _TRAINED_SAE_FIELDS if getattr(self, n) != default[n].default]
            if unread:
                raise ConfigError(
                    f"{', '.join(unread)} set the SAEs the study trains; with saes "
                    f"({self.saes}) it trains none"
                )
        elif self.sae_variant is not None:
            raise ConfigError("sae_variant picks among the folders of saes; saes is not set")
        if self.lora.lora.layers is not None or self.lora.seed != 0:
            raise ConfigError(
                "lora.lora.layers and lora.seed are set per run (the layers by ranges, the seed "
                f"by seeds); got lora.lora.layers={self.lora.lora.layers}, "
                f"lora.seed={self.lora.seed}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(seeds=list(self.seeds), ranges=list(self.ranges), lora=self.lora.to_dict())
        d["sae_layers"] = None if self.sae_layers is None else list(self.sae_layers)
        return d


@dataclass(frozen=True)
class ParaphraseRecipe:
    """A recipe file: the study's ``config`` and, when the recipe names them, the
    ``data`` folder and the ``questions`` file (relative to the working directory)."""

    config: ParaphraseStudyConfig
    data: Path | None = None
    questions: Path | None = None


def load_paraphrase_recipe(path: str | Path) -> ParaphraseRecipe:
    """A paraphrase study from a recipe YAML (``recipes/consistency-phantom.yaml``).

    Every key must be a field of :class:`ParaphraseStudyConfig` (``model`` a VLM spec,
    ``lora`` a :class:`~mechtune.train.consistency.ConsistencyConfig`, its ``lora`` the
    LoRA settings) or ``data`` / ``questions`` (paths). The model spec's scheme is checked
    (no weights load). Raises ConfigError naming the file and the key."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of keys, got {type(raw).__name__}")
    paths: dict[str, Path | None] = {}
    for key in ("data", "questions"):
        value = raw.pop(key, None)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{path}: {key} must be a path, got {value!r}")
        paths[key] = None if value is None else Path(value)
    unknown = sorted(set(raw) - {f.name for f in fields(ParaphraseStudyConfig)})
    lora = raw.get("lora") or {}
    unknown += sorted(f"lora.{k}" for k in set(lora) - {f.name for f in fields(ConsistencyConfig)})
    unknown += [f"lora.{k} (set per run)" for k in ("seed",) if k in lora]
    if "layers" in (lora.get("lora") or {}):
        unknown.append("lora.lora.layers (set per run)")
    if unknown:
        raise ConfigError(f"{path}: unknown recipe keys {unknown}")
    for key in ("seeds", "ranges", "sae_layers"):
        if isinstance(raw.get(key), list):
            raw[key] = tuple(raw[key])
    try:
        config = ParaphraseStudyConfig(**raw)
        parse_vlm_spec(config.model)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return ParaphraseRecipe(config, paths["data"], paths["questions"])


__all__ = [
    "RANGES",
    "ParaphraseRecipe",
    "ParaphraseStudyConfig",
    "load_paraphrase_recipe",
]
