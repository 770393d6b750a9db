"""The negation study: trace, train every method on the same data and budget, evaluate.

1. Render a phantom world; trace the shipped phantom CLIP on **train-split** patients (the
   test split is never used to choose anything) to get alpha_l.
2. For each method and seed: start from the shipped checkpoint, train on the train-split
   patients' captions and claim sets (train phrasing families), evaluate on the test-split
   patients (in-distribution and held-out families).
3. Report R@1/R@5, claim accuracy, accuracy by polarity, the affirmative-negation gap,
   polarity-MCQ accuracy, update share (top-3/top-5 blocks by CTE) and retention (drift on
   everyday sentences), each with a 95% interval (see :mod:`mechtune.eval.zero_shot`);
   across seeds, mean and range.
4. Compare each method with uniform LoRA item by item: the paired difference on the same
   test items (per item, correctness averaged over seeds; a patient bootstrap of the mean
   difference; McNemar's exact test when both have one seed). ``results.json`` keeps every
   run's per-item correctness with item and patient ids (``runs[m][i]["items"]``), so the
   comparison can be recomputed later and across runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from mechtune.data.io import atomic_write_text, to_jsonable, write_json
from mechtune.errors import ConfigError, DataError
from mechtune.eval.metrics import paired_items
from mechtune.eval.retention import embedding_drift, general_sentences
from mechtune.eval.study_config import MIN_STUDIES, check_seeds
from mechtune.eval.update_share import update_share
from mechtune.eval.zero_shot import embed_images, evaluate_zero_shot
from mechtune.interp.pairs import PairBuild, build_trace_pairs
from mechtune.interp.result import TraceConfig, TraceResult, trace
from mechtune.models.sites import text_site
from mechtune.models.spec import load_dual_encoder
from mechtune.sim.world import World, WorldConfig, make_world
from mechtune.train.lora import LoraSettings, lora_update_norms
from mechtune.train.methods import NegationData, methods_for, negation_examples, run_method
from mechtune.train.negation import LoopConfig

PAPER = {  # NAST (arXiv 2602.12498), Tables 1/3/4, in %
    "CLIP": {"R@1": 23.5, "R@5": 34.7, "claim": 24.6, "gap": 21.6},
    "NegCLIP": {"R@1": 36.2, "R@5": 52.4, "claim": 41.3, "gap": 12.8},
    "NegBench": {"R@1": 43.1, "R@5": 59.2, "claim": 48.7, "gap": 10.2},
    "NAST": {"R@1": 49.5, "R@5": 65.7, "claim": 55.6, "gap": 4.2},
}


@dataclass(frozen=True)
class NegationStudyConfig:
    """One negation study on the phantom world; each field is checked at construction.

    ``methods``: registered negation methods, each trained once per seed of ``seeds``
    (zero-shot, which does not train, once); ``world_studies`` / ``world_seed``: the phantom
    world; ``trace_per_study`` present and absent facts traced per train-split study, at
    most ``trace_max_pairs`` pairs; ``eval_split``: "val" to choose settings, "test" to
    report; ``balance_polarity``: repeat the minority polarity's claim sets; ``loop``: the
    training settings every method shares (its ``seed`` is each of ``seeds`` in turn).
    """

    methods: tuple[str, ...] = ("zero-shot", "uniform-lora", "nast")
    seeds: tuple[int, ...] = (0,)
    world_studies: int = 2000
    world_seed: int = 0
    trace_per_study: int = 1
    trace_max_pairs: int = 300
    eval_split: str = "test"
    balance_polarity: bool = True
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
        for name, least in (("world_studies", MIN_STUDIES), ("trace_per_study", 1)):
            if getattr(self, name) < least:
                raise ConfigError(f"{name} must be >= {least}, got {getattr(self, name)}")
        if self.trace_max_pairs < 1:
            raise ConfigError(f"trace_max_pairs must be >= 1, got {self.trace_max_pairs}")
        if self.loop.seed != 0:
            raise ConfigError(
                f"loop.seed ({self.loop.seed}) is not read: each run's seed is one of "
                f"seeds {list(self.seeds)}; set seeds instead"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "methods": list(self.methods),
            "seeds": list(self.seeds),
            "world_studies": self.world_studies,
            "world_seed": self.world_seed,
            "trace_per_study": self.trace_per_study,
            "trace_max_pairs": self.trace_max_pairs,
            "eval_split": self.eval_split,
            "balance_polarity": self.balance_polarity,
            "loop": self.loop.to_dict(),
        }


def load_recipe(path: str | Path) -> NegationStudyConfig:
    """A phantom negation study from a recipe YAML (see ``recipes/nast-phantom.yaml``).

    Every key must be a field of :class:`NegationStudyConfig` (``loop`` a LoopConfig, its
    ``lora`` LoraSettings); ``model`` may only name the phantom CLIP, which this runner
    trains. Raises ConfigError naming the file and the key.
    """
    import yaml

    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    model = raw.pop("model", "phantom:default")
    if model != "phantom:default":
        raise ConfigError(
            f"{path}: this runner trains the phantom CLIP; {model!r} needs real data "
            "(see the recipe's comments)"
        )
    loop = dict(raw.pop("loop", {}))
    lora = loop.pop("lora", {})
    unknown = sorted(set(raw) - {f.name for f in fields(NegationStudyConfig)} - {"loop"})
    unknown += sorted(f"loop.{k}" for k in set(loop) - {f.name for f in fields(LoopConfig)})
    if "seed" in loop:
        unknown.append("loop.seed (use seeds)")
    if unknown:
        raise ConfigError(f"{path}: unknown recipe keys {unknown}")
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    settings = LoraSettings(**lora) if lora is not None else None
    return NegationStudyConfig(**values, loop=LoopConfig(**loop, lora=settings))


# -- the stages, each a function of the config ----------------------------------------------


def study_world(config: NegationStudyConfig) -> World:
    """The phantom world of ``world_studies`` studies and seed ``world_seed``."""
    return make_world(WorldConfig.seeded(config.world_studies, config.world_seed))


def train_trace_pairs(world: World, encoder: Any, config: NegationStudyConfig) -> PairBuild:
    """Length-matched pairs of the **train-split** studies (``trace_per_study`` facts of
    each polarity per study, seeded by ``world_seed``), cut to ``trace_max_pairs``."""
    rows = [(int(i), world.studies[int(i)]) for i in world.indices("train")]
    build = build_trace_pairs(
        rows, encoder, seed=config.world_seed, per_study=config.trace_per_study
    )
    build.pairs = build.pairs[: config.trace_max_pairs]
    return build


def trace_on_train_split(world: World, config: NegationStudyConfig) -> TraceResult:
    """Causal tracing of the shipped phantom CLIP on :func:`train_trace_pairs`."""
    encoder = load_dual_encoder("phantom:default")
    build = train_trace_pairs(world, encoder, config)
    images = embed_images(encoder, world.images)
    return trace(
        encoder,
        build.pairs,
        images,
        TraceConfig(seed=config.world_seed),
        counts={**build.to_dict(), "split": "train", "used": len(build.pairs)},
    )


def training_data(world: World, config: NegationStudyConfig) -> NegationData:
    """Captions and claim sets of the train-split patients (train phrasing families)."""
    rows = [(int(i), world.studies[int(i)]) for i in world.indices("train")]
    return negation_examples(rows, seed=world.config.seed, balance_polarity=config.balance_polarity)


def run_plan(config: NegationStudyConfig) -> list[tuple[str, int]]:
    """``(method, seed)`` of every run, in order: each method once per seed, except
    zero-shot (nothing to train), which runs once."""
    return [
        (method, seed)
        for method in config.methods
        for seed in (config.seeds if method != "zero-shot" else config.seeds[:1])
    ]


def run_config(config: NegationStudyConfig, seed: int) -> LoopConfig:
    """The training settings of one run: ``loop`` with the run's seed."""
    return replace(config.loop, seed=seed)


def evaluate_run(encoder: Any, world: World, config: NegationStudyConfig) -> dict[str, Any]:
    """The zero-shot report (retrieval, claims, polarity MCQ) on ``eval_split``."""
    return to_jsonable(evaluate_zero_shot(encoder, world, split=config.eval_split, probes=False))


def run_negation_study(
    config: NegationStudyConfig, out: str | Path, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run every (method, seed); write ``results.json``, ``table.md`` and the trace."""
    out = Path(out)
    say = log or (lambda _msg: None)
    world = study_world(config)
    say(f"tracing on {len(world.indices('train'))} train-split studies ...")
    traced = trace_on_train_split(world, config)
    traced.save(out / "trace")
    cte_by_block = traced.cte_layer[1:].tolist()
    data = training_data(world, config)
    sentences = general_sentences()
    runs: dict[str, list[dict[str, Any]]] = {}
    for method, seed in run_plan(config):
        encoder = load_dual_encoder("phantom:default")
        images = embed_images(encoder, world.images)
        before = encoder.encode_texts(sentences)
        initial = _block_weights(encoder.model)
        say(f"{method}, seed {seed}: training ...")
        start = time.perf_counter()
        run_method(
            method,
            encoder,
            images,
            data,
            traced.alpha,
            run_config(config, seed),
            out / "runs" / method / f"seed{seed}",
        )
        seconds = time.perf_counter() - start
        report = evaluate_run(encoder, world, config)
        report["retention"] = to_jsonable(embedding_drift(before, encoder.encode_texts(sentences)))
        report["train_seconds"] = round(seconds, 1)
        report["seed"] = seed
        if method != "zero-shot":
            norms = _block_update_norms(encoder.model, initial)
            report["update_norms"] = norms
            report["update_share"] = {
                f"top{k}": update_share(norms, cte_by_block, k) for k in (3, 5)
            }
        runs.setdefault(method, []).append(report)
    results = {
        "config": config.to_dict(),
        "trace": {
            "alpha": traced.alpha.tolist(),
            "cte_layer": traced.cte_layer.tolist(),
            "counts": traced.counts,
        },
        "runs": runs,
    }
    results["paired"] = to_jsonable(paired_comparisons(results))
    write_json(out / "results.json", results)
    atomic_write_text(out / "table.md", results_table(results) + "\n")
    return results


def _block_weights(model: Any) -> dict[str, tuple[int, Any]]:
    """Every parameter inside a text block, with its block index (trainable or not)."""
    site = text_site(model)
    out = {}
    for name, p in model.named_parameters():
        layer = site.layer_index(name)
        if layer is not None and "lora_" not in name:
            out[name] = (layer, p.detach().clone())
    return out


def _block_update_norms(model: Any, initial: dict[str, tuple[int, Any]]) -> dict[int, float]:
    """Per block, the summed update norm: ||(alpha/r) B A|| for LoRA adapters, or
    ||W - W_0|| for weights trained directly (full fine-tuning)."""
    norms = lora_update_norms(model)
    for name, p in model.named_parameters():
        if name in initial:  # peft renames the weights it wraps; those do not change
            layer, w0 = initial[name]
            delta = float((p.detach() - w0).norm())
            if delta > 0:
                norms[layer] = norms.get(layer, 0.0) + delta
    return norms


def _agg(cells: list[float | None]) -> str:
    values = [v for v in cells if v is not None and np.isfinite(v)]
    if not values or len(values) < len(cells):
        return "n/a"
    mean = 100 * float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ({100 * min(values):.1f}–{100 * max(values):.1f})"


def results_table(results: dict[str, Any]) -> str:
    """Markdown in the shape of NAST's Tables 1/3/4, held-out phrasing families, then
    :func:`paired_table` (when the runs carry per-item results and uniform LoRA ran)."""
    head = (
        "| method | seeds | R@1 | R@5 | claim acc | affirmative acc | negated acc | "
        "gap (pp) | existence-only gap | contralateral | MCQ neg / aff | top-3 share | top-5 share | retention |"
    )
    lines = [head, "|" + "---|" * 14]
    for method, reports in results["runs"].items():

        def get(path: str, reps: list[dict[str, Any]] = reports) -> list[float | None]:
            out: list[float | None] = []
            for r in reps:
                node: Any = r
                for key in path.split("/"):
                    node = node.get(key) if isinstance(node, dict) else None
                out.append(node["value"] if isinstance(node, dict) else node)
            return out  # None (missing, or NaN written as null) makes the cell n/a

        held = "claims/heldout"
        lines.append(
            "| "
            + " | ".join(
                [
                    method,
                    str(len(reports)),
                    _agg(get("retrieval/R@1")),
                    _agg(get("retrieval/R@5")),
                    _agg(get(f"{held}/claim_accuracy")),
                    _agg(get(f"{held}/accuracy_by_polarity/affirmative")),
                    _agg(get(f"{held}/accuracy_by_polarity/negated")),
                    _agg(get(f"{held}/affirmative_negation_gap")),
                    _agg(get(f"{held}/existence_only_gap")),
                    _agg(get(f"{held}/accuracy_by_polarity/contralateral")),
                    f"{_agg(get('polarity_mcq/negated'))} / {_agg(get('polarity_mcq/affirmative'))}",
                    _agg(get("update_share/top3")),
                    _agg(get("update_share/top5")),
                    _agg(get("retention")),
                ]
            )
            + " |"
        )
    paired = paired_table(results)
    return "\n".join(lines) + (f"\n\n{paired}" if paired else "")


REFERENCE_METHOD = "uniform-lora"
# (column, item table, value column, selection): per-item proportions of the test items
PAIRED_METRICS: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    ("claim acc", "claims", "correct", {"heldout": True}),
    ("affirmative acc", "claims", "correct", {"heldout": True, "slice": "affirmative"}),
    ("negated acc", "claims", "correct", {"heldout": True, "slice": "negated"}),
    ("contralateral", "claims", "correct", {"heldout": True, "slice": "contralateral"}),
    ("claim acc, in-dist", "claims", "correct", {"heldout": False}),
    ("MCQ neg", "polarity_mcq", "negated", {}),
    ("MCQ aff", "polarity_mcq", "affirmative", {}),
    ("R@1", "retrieval", "R@1", {}),
    ("R@5", "retrieval", "R@5", {}),
)


def paired_comparisons(
    results: dict[str, Any], reference: str = REFERENCE_METHOD
) -> dict[str, dict[str, Any]]:
    """``{method: {column: PairedDifference or None}}``: each method minus ``reference``
    on the same test items (:data:`PAIRED_METRICS`), from the runs' saved items. Empty when
    ``reference`` did not run or a run lacks items; None where no item is selected."""
    runs = results["runs"]
    if reference not in runs or any("items" not in r for rs in runs.values() for r in rs):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for method, reports in runs.items():
        if method == reference:
            continue
        cells: dict[str, Any] = {}
        for column, table, value, select in PAIRED_METRICS:
            try:
                cells[column] = paired_items(
                    [r["items"][table] for r in reports],
                    [r["items"][table] for r in runs[reference]],
                    value,
                    select=select,
                )
            except DataError as err:
                if "no item matches" not in str(err):
                    raise
                cells[column] = None
        out[method] = cells
    return out


def paired_table(results: dict[str, Any], reference: str = REFERENCE_METHOD) -> str:
    """Markdown: "Δ vs uniform LoRA [95% interval]" per method and metric, in percentage
    points (held-out phrasing families unless the column says in-dist); empty when there
    is nothing to compare."""
    paired = paired_comparisons(results, reference)
    if not paired:
        return ""
    label = reference.replace("-lora", " LoRA")
    head = "| method | seeds | " + " | ".join(c for c, *_ in PAIRED_METRICS) + " |"
    lines = [
        f"Δ vs {label} [95% interval], percentage points, on the same test items: per item, "
        "correctness averaged over each method's seeds; the interval bootstraps the mean "
        "difference over patients; McNemar's exact p where both methods ran one seed.",
        "",
        head,
        "|" + "---|" * (2 + len(PAIRED_METRICS)),
    ]
    for method, cells in paired.items():
        seeds = len(results["runs"][method])
        row = [method, str(seeds)]
        row += ["n/a" if cells[c] is None else cells[c].pp() for c, *_ in PAIRED_METRICS]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
