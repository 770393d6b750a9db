"""Model cards (``README.md``, Hugging Face's model-card format) beside trained results.

Every result :func:`~mechtune.train.checkpoint.save_trained` writes gets a card in the run
folder (``out/README.md``) and, for LoRA, in the peft adapter folder (``out/adapter/
README.md``, replacing peft's own stub, so the folder is ready for peft's ``push_to_hub``).
The card follows the released adapter's (``saillab/medgemma-4b-targeted-lora-mimic-mt-12k``):
YAML front matter (``base_model``, ``library_name: peft`` for LoRA, tags), a training table,
the final training loss terms, the evaluation metrics with their 95% intervals once an
eval has run on the adapter (:func:`update_card_metrics`), a usage snippet and the line
"research use, not for clinical use".

The card is rendered from the Jinja2 template ``resources/model_card.md.j2``; what it
needs beyond ``train.json``'s method, config, step and history (the base model, the task,
the parameter counts, NAST's per-block scales) is kept in ``train.json`` under ``"card"``
(:class:`CardFacts`), so a later eval can re-render it with metrics.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml

from mechtune.data.io import atomic_write_text
from mechtune.errors import ConfigError, DataError

CARD = "README.md"
TASKS = {
    "negation": ("negation", "negation", "a dual encoder (mechtune.models.dual_encoder)"),
    "paraphrase": (
        "paraphrase-consistency",
        "paraphrase",
        "a yes/no VLM (mechtune.models.yes_no)",
    ),
}
RESEARCH_USE = "research use, not for clinical use"


@dataclass(frozen=True)
class CardFacts:
    """What the card needs that ``train.json``'s config does not hold.

    ``base_model``: the model spec's hub id or local path (None: unknown); ``task``:
    ``"negation"`` or ``"paraphrase"``; ``trainable`` / ``total``: parameter counts (the
    trainable ones: LoRA's A and B, or the fine-tuned blocks' weights; the total: every
    parameter of the trained model, adapters included, as peft's
    ``print_trainable_parameters``); ``peft``: whether the result is a peft adapter;
    ``model_class``: the transformers class of the adapted module; ``scales``: the
    per-block factors (NAST's alpha_l ** beta, arXiv 2602.12498 §4) when the run scales
    blocks unequally, else None; ``scaling``: how they are applied (``"gradient"`` or
    ``"lr"``). Raises ConfigError naming the field for an unknown task or counts that do
    not fit."""

    base_model: str | None
    task: str
    trainable: int
    total: int
    peft: bool
    model_class: str
    scales: tuple[float, ...] | None = None
    scaling: str = "gradient"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {sorted(TASKS)}, got {self.task!r}")
        if not 0 < self.trainable <= self.total:
            raise ConfigError(f"trainable ({self.trainable}) must be in (0, total ({self.total})]")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CardFacts:
        scales = data.get("scales")
        return cls(**{**data, "scales": None if scales is None else tuple(scales)})


def base_model_of(spec: str) -> str:
    """The hub id or local path of a mechtune model spec ``"scheme:name"`` (its name);
    a string without a scheme is returned as is."""
    return spec.split(":", 1)[1] if ":" in spec else spec


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"


def _effective_batch(config: dict[str, Any]) -> str:
    if "grad_accum" in config:
        batch, accum = config["batch_size"], config["grad_accum"]
        return f"{batch * accum} questions ({batch} x grad-accum {accum})"
    return f"{config['caption_batch']} captions + {config['claim_batch']} claim sets"


def _loss(method: str, config: dict[str, Any]) -> str:
    if "consistency_weight" in config:
        answer = (
            "cross-entropy on the first answer token"
            if config["answer_loss"] == "vocab"
            else "binary cross-entropy on the yes/no margin"
        )
        return f"{answer} + {_number(config['consistency_weight'])} x symmetric KL"
    return f"{method} (lambda {_number(config['lam'])}, beta {_number(config['beta'])})"


def training_rows(info: dict[str, Any], facts: CardFacts) -> list[tuple[str, str]]:
    """The training table's (setting, value) rows from ``train.json``'s ``info``."""
    config = info["config"]
    lora = config.get("lora")
    rows = [("Base model", facts.base_model or "unknown"), ("Method", info["method"])]
    if lora is None:
        rows.append(("Fine-tuning", "full fine-tuning of the text blocks"))
    else:
        rows += [
            ("Rank (r)", str(lora["rank"])),
            ("Alpha", _number(lora["alpha"])),
            ("Dropout", _number(lora["dropout"])),
        ]
    layers = None if lora is None else lora.get("layers")
    modules = None if lora is None else lora.get("target_modules")
    rows += [
        ("Optimizer", _optimizer(config)),
        ("Learning rate", _number(config["lr"])),
        ("Weight decay", _number(config["weight_decay"])),
        ("Effective batch", _effective_batch(config)),
        ("Steps", str(info["step"])),
        ("Target layers", "all" if layers is None else ", ".join(map(str, layers))),
        ("Target modules", "all of the site's" if modules is None else ", ".join(modules)),
        ("Loss", _loss(info["method"], config)),
        ("Trainable parameters", str(facts.trainable)),
        ("Trainable share", f"{100 * facts.trainable / facts.total:.4g}% of {facts.total}"),
        ("Seed", str(config["seed"])),
    ]
    return rows


def _optimizer(config: dict[str, Any]) -> str:
    """``AdamW`` or ``SGD, momentum 0.9`` (a run from before the setting: AdamW)."""
    if config.get("optimizer", "adamw") == "sgd":
        return f"SGD, momentum {_number(config.get('momentum', 0.0))}"
    return "AdamW"


def _interval(value: Any) -> tuple[Any, str] | None:
    """A metric with its interval: ``{"value"|"estimate"|"mean", "low", "high"}`` (as
    :class:`~mechtune.eval.metrics.Estimate` writes it), ``{..., "lo", "hi"}`` or
    ``{..., "ci": [lo, hi]}``; None when ``value`` is not one."""
    if not isinstance(value, dict):
        return None
    point = next((value[k] for k in ("value", "estimate", "mean", "rate") if k in value), None)
    if not isinstance(point, int | float) or isinstance(point, bool):
        return None
    if "low" in value and "high" in value:
        return point, f"[{_number(value['low'])}, {_number(value['high'])}]"
    if "lo" in value and "hi" in value:
        return point, f"[{_number(value['lo'])}, {_number(value['hi'])}]"
    ci = value.get("ci")
    if isinstance(ci, list | tuple) and len(ci) == 2:
        return point, f"[{_number(ci[0])}, {_number(ci[1])}]"
    return None


def metric_rows(report: Any, prefix: str = "") -> list[tuple[str, str, str]]:
    """Every metric of an eval report, flattened to ``(dotted name, value, interval)``:
    a dict with a point value and ``low``/``high`` (or ``lo``/``hi``, or ``ci``) is one
    metric with its interval. Bare numbers (counts, seeds, the adapter check) and lists
    (per-item results, examples) are not metrics and are left out. Values print with 6
    significant digits."""
    rows: list[tuple[str, str, str]] = []
    found = _interval(report)
    if found is not None:
        return [(prefix, _number(found[0]), found[1])]
    if isinstance(report, dict):
        for key in sorted(report, key=str):
            rows += metric_rows(report[key], f"{prefix}.{key}" if prefix else str(key))
    return rows


def _environment() -> jinja2.Environment:
    loader = jinja2.FunctionLoader(
        lambda name: (
            resources.files("mechtune.train")
            .joinpath("resources", name)
            .read_text(encoding="utf-8")
        )
    )
    return jinja2.Environment(
        loader=loader,
        autoescape=False,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


def render_model_card(
    info: dict[str, Any],
    facts: CardFacts,
    metrics: dict[str, Any] | None = None,
    metrics_source: str = "eval.json",
) -> str:
    """The card (markdown with YAML front matter) of a run whose ``train.json`` holds
    ``info`` (method, config, step, history). ``metrics``: an eval report (the eval
    command's ``eval.json``), flattened by :func:`metric_rows`; None: not evaluated yet."""
    tag, command, loader = TASKS[facts.task]
    front: dict[str, Any] = {}
    if facts.base_model:
        front["base_model"] = facts.base_model
    if facts.peft:
        front["library_name"] = "peft"
    front["tags"] = ["mechtune", info["method"], tag, "medical-imaging"]
    if facts.peft:
        front["tags"].append("lora")
    history = info.get("history") or []
    final = history[-1] if history else {}
    split = None
    rows = None
    if metrics is not None:
        split = metrics.get("split") if isinstance(metrics.get("split"), str) else None
        rows = metric_rows(metrics)
    kind = "LoRA adapter" if facts.peft else "fine-tuned text blocks"
    scales = None
    if facts.scales is not None:
        scales = [(i, _number(s)) for i, s in enumerate(facts.scales)]
    return (
        _environment()
        .get_template("model_card.md.j2")
        .render(
            front_matter=yaml.safe_dump(front, sort_keys=False),
            title=f"mechtune {info['method']} {kind}"
            + (f" for {facts.base_model}" if facts.base_model else ""),
            summary=(
                f"A {kind} trained with mechtune's `{info['method']}` method to reduce "
                f"{tag} failures of {facts.base_model or 'its base model'}, on the blocks "
                "listed below (chosen by causal tracing or by the recipe)."
            ),
            training=training_rows(info, facts),
            scales=scales,
            scaling_note=(
                "Block l's gradients are multiplied by its scale."
                if facts.scaling == "gradient"
                else "Block l's learning rate is lr times its scale."
            ),
            final_step=info["step"],
            final_terms=[(k, _number(v)) for k, v in final.items() if k != "step"],
            metrics=rows,
            metrics_source=metrics_source,
            metrics_split=split,
            command=command,
            loader=loader,
            peft=facts.peft,
            auto_class=facts.model_class,
            base_model=facts.base_model or "BASE_MODEL",
            task_words=tag.replace("-", " "),
        )
    )


def card_paths(run: Path) -> list[Path]:
    """Where a run's card goes: ``run/README.md`` and, for LoRA, ``run/adapter/README.md``."""
    paths = [run / CARD]
    if (run / "adapter" / "adapter_config.json").is_file():
        paths.append(run / "adapter" / CARD)
    return paths


def write_model_card(
    run: Path,
    info: dict[str, Any],
    facts: CardFacts,
    metrics: dict[str, Any] | None = None,
    metrics_source: str = "eval.json",
) -> list[Path]:
    """Render the card (:func:`render_model_card`) and write it atomically to every path
    of :func:`card_paths`. Returns those paths."""
    text = render_model_card(info, facts, metrics, metrics_source)
    paths = card_paths(run)
    for path in paths:
        atomic_write_text(path, text)
    return paths


def card_from_eval(adapter: str | Path, eval_json: Path) -> list[Path]:
    """After an eval of ``adapter``: re-render its run's card with the report that eval
    wrote to ``eval_json`` (read back, so the card shows exactly what the file holds).
    See :func:`update_card_metrics`."""
    report = json.loads(eval_json.read_text(encoding="utf-8"))
    return update_card_metrics(adapter, report, eval_json)


def update_card_metrics(adapter: str | Path, report: dict[str, Any], source: Path) -> list[Path]:
    """Re-render the card of the run that ``adapter`` names (a run folder or its
    ``adapter/``) with the eval ``report`` written to ``source``. Returns the cards
    written; none when the run's ``train.json`` has no card facts (written before cards
    existed) or no ``train.json`` (a peft adapter folder from elsewhere). Raises
    DataError naming the file when ``train.json`` is unreadable."""
    folder = Path(adapter)
    run = folder.parent if folder.name == "adapter" else folder
    train = run / "train.json"
    if not train.is_file():
        return []
    try:
        info = json.loads(train.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{train}: cannot read the run's train.json ({exc})") from None
    if "card" not in info:
        return []
    facts = CardFacts.from_dict(info["card"])
    return write_model_card(run, info, facts, report, str(source))


def card_facts_dict(facts: CardFacts) -> dict[str, Any]:
    """``facts`` as JSON values for ``train.json``'s ``"card"``."""
    data = asdict(facts)
    data["scales"] = None if facts.scales is None else list(facts.scales)
    return data
