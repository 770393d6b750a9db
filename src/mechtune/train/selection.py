"""Early stopping by evaluation: keep the adapter of the best evaluated step.

With ``LoopConfig.keep_best`` the trainer evaluates the untrained model first (step 0)
and then every ``eval_every`` steps (:meth:`~mechtune.train.trainer.Trainer.fit`), keeps
a copy of the trainable weights of the step that is best by the named criterion
(:data:`KEEP_BEST`) and, when the run ends, puts them back in the model before the result
is saved; ``train.json`` records which step was kept (``"kept"``). The copy travels with
each checkpoint (``best.safetensors``), so a resumed run keeps the same step.

The metrics are those of the negation trainer's ``evaluate``
(:func:`mechtune.train.validation.negation_validation`): ``claim_accuracy`` on the
template validation claim sets, ``freeform_affirmative`` / ``freeform_negated`` on the
free-form validation half (issue 18: the free-form sets show the "prefer No" shortcut
that the template sets hide). Ties go to the earliest step (fewer updates).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mechtune.errors import ConfigError, DataError

Record = Mapping[str, float]

GOAL_TOLERANCE = 0.01  # issue 18's goal: affirmative accuracy falls by at most 1 pp


def _mean(r: Record) -> float:
    return (r["freeform_affirmative"] + r["freeform_negated"]) / 2


# criterion -> (metrics it reads, score of a record, whether a record is eligible given
# the untrained model's record)
_CRITERIA: dict[
    str, tuple[tuple[str, ...], Callable[[Record], float], Callable[[Record, Record], bool]]
] = {
    "claim_accuracy": (("claim_accuracy",), lambda r: r["claim_accuracy"], lambda r, b: True),
    "freeform_mean": (("freeform_affirmative", "freeform_negated"), _mean, lambda r, b: True),
    "freeform_affirmative": (
        ("freeform_affirmative", "freeform_negated"),
        lambda r: r["freeform_affirmative"],
        lambda r, b: r["freeform_negated"] >= b["freeform_negated"],
    ),
    "freeform_goal": (
        ("freeform_affirmative", "freeform_negated"),
        lambda r: r["freeform_negated"],
        lambda r, b: r["freeform_affirmative"] >= b["freeform_affirmative"] - GOAL_TOLERANCE,
    ),
}
KEEP_BEST: dict[str, str] = {
    "claim_accuracy": "the template validation claim accuracy",
    "freeform_mean": "the mean of free-form affirmative and negated accuracy",
    "freeform_affirmative": (
        "free-form affirmative accuracy, among steps whose free-form negated accuracy is at "
        "least the untrained model's"
    ),
    "freeform_goal": (
        "free-form negated accuracy, among steps whose free-form affirmative accuracy is at "
        "most 1 pp below the untrained model's (issue 18's goal)"
    ),
}


def criterion_metrics(criterion: str) -> tuple[str, ...]:
    """The evaluation metrics ``criterion`` reads. Raises ConfigError for an unknown one."""
    if criterion not in _CRITERIA:
        raise ConfigError(f"keep_best must be one of {sorted(KEEP_BEST)}, got {criterion!r}")
    return _CRITERIA[criterion][0]


def best_evaluation(evals: Sequence[Record], criterion: str) -> Record:
    """The record of ``evals`` (``{"step", metric: value}``, in step order) that is best by
    ``criterion`` (:data:`KEEP_BEST`): the highest score among the eligible records, the
    earliest on a tie; a NaN score never wins. The guarded criteria compare with the
    step-0 record (the untrained model), which must be there. Raises ConfigError for an
    unknown criterion, DataError when a record lacks a metric the criterion reads or
    there is no step-0 record for a guarded one."""
    needs, score, eligible = _CRITERIA.get(criterion, (None, None, None))
    if needs is None or score is None or eligible is None:
        raise ConfigError(f"keep_best must be one of {sorted(KEEP_BEST)}, got {criterion!r}")
    if not evals:
        raise DataError(f"keep_best {criterion!r}: no evaluation to choose from")
    for r in evals:
        missing = [m for m in needs if m not in r]
        if missing:
            raise DataError(
                f"keep_best {criterion!r} reads {missing}, which the evaluation at step "
                f"{r.get('step')} lacks (it gave {sorted(k for k in r if k != 'step')}); "
                "the free-form metrics need the free-form claim sets (freeform) on"
            )
    base = next((r for r in evals if r["step"] == 0), None)
    if base is None:
        raise DataError(f"keep_best {criterion!r}: no evaluation of the untrained model (step 0)")
    best: Record | None = None
    for r in evals:
        value = score(r)
        if math.isnan(value) or not eligible(r, base):
            continue
        if best is None or value > score(best):
            best = r
    return best if best is not None else base


BEST_FILE = "best.safetensors"


class BestKeeper:
    """The trainable weights of the best evaluated step so far (module docstring).

    ``params``: the trainer's ``{name: parameter}``; ``criterion``: a key of
    :data:`KEEP_BEST`."""

    def __init__(self, criterion: str, params: Mapping[str, torch.Tensor]) -> None:
        criterion_metrics(criterion)
        self.criterion, self.params = criterion, params
        self.step: int | None = None
        self.weights: dict[str, torch.Tensor] | None = None

    def consider(self, evals: Sequence[Record], step: int) -> bool:
        """After the evaluation at ``step`` (the last of ``evals``): copy the weights when
        that step is now the best. Returns whether it is."""
        best = int(best_evaluation(evals, self.criterion)["step"])
        if best != step:
            return False
        self.step = step
        self.weights = {n: p.detach().clone() for n, p in self.params.items()}
        return True

    def restore(self) -> None:
        """Put the kept weights back into ``params`` (nothing kept: nothing to do)."""
        if self.weights is None:
            return
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self.weights[name])

    def save(self, folder: Path) -> dict[str, Any]:
        """Write the kept weights to ``folder/best.safetensors``; returns the state to
        record with the checkpoint (``{"best_step": step}``, or nothing)."""
        from safetensors.torch import save_file

        from mechtune.data.io import atomic_path

        if self.weights is None:
            return {}
        with atomic_path(folder / BEST_FILE) as tmp:
            save_file({n: w.contiguous() for n, w in self.weights.items()}, str(tmp))
        return {"best_step": self.step}

    def load(self, folder: Path, state: Mapping[str, Any]) -> None:
        """Read back what :meth:`save` wrote with checkpoint ``folder`` (its ``state``).
        Raises DataError naming the file when it is missing or lacks a parameter."""
        from safetensors.torch import load_file

        if "best_step" not in state:
            return
        path = folder / BEST_FILE
        if not path.is_file():
            raise DataError(
                f"{path}: missing; the checkpoint records best step {state['best_step']}"
            )
        weights = load_file(str(path))
        missing = sorted(set(self.params) - set(weights))
        if missing:
            raise DataError(f"{path}: missing parameters {missing[:3]}")
        device = {n: p.device for n, p in self.params.items()}
        self.weights = {n: weights[n].to(device[n]) for n in self.params}
        self.step = int(state["best_step"])

    def record(self, evals: Sequence[Record]) -> dict[str, Any]:
        """``train.json``'s ``"kept"``: the criterion, the kept step and its metrics."""
        chosen = next((dict(r) for r in evals if r["step"] == self.step), {})
        return {
            "criterion": self.criterion,
            "rule": KEEP_BEST[self.criterion],
            "step": self.step,
            "metrics": {k: v for k, v in chosen.items() if k != "step"},
        }


__all__ = [
    "BEST_FILE",
    "GOAL_TOLERANCE",
    "KEEP_BEST",
    "BestKeeper",
    "best_evaluation",
    "criterion_metrics",
]
