"""Experiment tracking while training: TensorBoard or Weights & Biases through accelerate's
tracker API (``Accelerator(log_with=...)``, ``init_trackers``, ``log``; the ``tracking``
extra installs both packages).

A :class:`Tracker` is one process's connection to the chosen backend (``report_to``):

- under ``accelerate launch`` / torchrun it uses the launch's ``Accelerator``, which was
  created with ``log_with`` (:func:`~mechtune.train.distributed.start_launch`); accelerate
  logs on the main process only;
- in a plain process it creates an ``Accelerator(log_with=..., project_dir=...)`` for
  tracking alone: nothing is ``prepare``-d with it, so it moves no model and changes no
  device, random stream or result (tests/train/test_tracking.py checks a run's adapter and
  ``train.json`` are byte-identical with and without it).

Each training run is one tracker *session* (:meth:`Tracker.session`): TensorBoard writes
its event files to ``logging_dir/<run>``; W&B starts a run named ``<run>`` in the project
``mechtune`` with its files under ``logging_dir/wandb`` (``WANDB_MODE=offline`` keeps them
there). The run's settings are stored as hyperparameters, flattened to dotted keys.

The tags the :class:`~mechtune.train.trainer.Trainer` logs per optimiser step (see
:func:`block_tag` for the block names):

- ``train/<term>``: each loss term (``train/loss``, ``train/clip``, ``train/claim``, ...);
- ``lr``: the learning rate of uniform runs (every block's factor 1) and of gradient
  scaling, ``lr/block_<b>``: block b's parameter-group learning rate under per-block
  learning rates (``scaling="lr"``), ``grad_scale/block_<b>``: block b's gradient factor
  under ``scaling="gradient"`` (NAST, arXiv 2602.12498 §4: alpha_b ** beta);
- ``grad_norm/block_<b>``: the L2 norm of block b's trainable parameters' gradients, after
  the DDP average (and any gradient scaling), before the optimiser step;
- ``eval/<metric>``: the periodic validation metrics (``eval_every``).

``mechtune sae train`` logs ``sae/<term>`` (``loss``, ``mse``, ``l0``, ``sparsity``) per
log interval, one session per layer (:func:`layer_sessions`).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mechtune.errors import ConfigError, MissingExtraError

REPORT_TO = ("none", "tensorboard", "wandb")
# The package each backend needs (both in the `tracking` extra).
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
WANDB_PROJECT = "mechtune"
TRACKING_DIR = "tracking"  # default folder under a command's --out


def check_report_to(report_to: str) -> None:
    """Refuse an unknown backend (ConfigError naming ``--report-to`` and the choices) or
    one whose package is not installed (MissingExtraError naming ``mechtune[tracking]``):
    accelerate would drop it silently and the run would log nothing."""
    if report_to not in REPORT_TO:
        raise ConfigError(f"--report-to must be one of {', '.join(REPORT_TO)}, got {report_to!r}")
    package = PACKAGES.get(report_to)
    if package is None:
        return
    try:
        importlib.import_module(package)
    except ImportError:
        raise MissingExtraError(
            f"--report-to {report_to} needs the {package} package: pip install 'mechtune[tracking]'"
        ) from None


def block_tag(kind: str, block: int) -> str:
    """``"<kind>/block_<b>"``: the tag of a per-block value; ``b`` is the block's index
    in the site's block list (:class:`~mechtune.train.lora.LoraSite`, e.g. the text
    tower's ``text_model.encoder.layers.<b>`` or a VLM's ``language_model.layers.<b>``)."""
    return f"{kind}/block_{block}"


def hyperparameters(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``config`` flattened to ``{"a.b": value}``; values other than bool, int, float and
    str become strings (TensorBoard's hparams take only those)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(hyperparameters(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


class Tracker:
    """Logs training values to ``report_to`` (one of :data:`REPORT_TO`; ``"none"``: a
    tracker that logs nothing and creates nothing) under ``logging_dir``.

    ``accelerator``: a launch's ``accelerate.Accelerator``, which must have been created
    with ``log_with=report_to`` and ``project_dir=logging_dir``
    (:func:`~mechtune.train.distributed.start_launch`); None in a plain process, where one
    is created for tracking at the first session. Raises ConfigError for an unknown
    backend, a backend without ``logging_dir`` or a launch accelerator created without
    it, MissingExtraError when the backend's package is missing (both at construction,
    before any work).
    """

    def __init__(
        self,
        report_to: str = "none",
        logging_dir: str | Path | None = None,
        *,
        accelerator: Any | None = None,
    ) -> None:
        check_report_to(report_to)
        self.report_to = report_to
        self.logging_dir = None if logging_dir is None else Path(logging_dir)
        if self.enabled and self.logging_dir is None:
            raise ConfigError(f"--report-to {report_to} needs a logging folder (--tracking-dir)")
        if self.enabled and accelerator is not None:
            backends = {str(t) for t in getattr(accelerator, "log_with", [])}
            if report_to not in backends:
                raise ConfigError(
                    f"--report-to {report_to}: the launch's accelerator logs with "
                    f"{sorted(backends) or 'nothing'}; create it with log_with={report_to!r}"
                )
        self._accelerator = accelerator
        self.run: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether anything is logged (``report_to`` is not ``"none"``)."""
        return self.report_to != "none"

    @property
    def active(self) -> bool:
        """Whether a session is open: :meth:`log` reaches the backend."""
        return self.run is not None

    def _tracking_accelerator(self) -> Any:
        if self._accelerator is None:
            from accelerate import Accelerator

            self._accelerator = Accelerator(log_with=self.report_to, project_dir=self.logging_dir)
        return self._accelerator

    @contextlib.contextmanager
    def session(self, run: str, config: Mapping[str, Any]) -> Iterator[Tracker]:
        """One tracked run named ``run`` (a relative path such as ``"nast/seed0"``) with
        ``config`` as its hyperparameters (:func:`hyperparameters`); its trackers finish
        when the block ends, also on error. Nothing happens when not :attr:`enabled`.
        Raises ConfigError when a session is already open."""
        if not self.enabled:
            yield self
            return
        if self.run is not None:
            raise ConfigError(f"tracking run {self.run!r} is still open; cannot start {run!r}")
        accelerator = self._tracking_accelerator()
        assert self.logging_dir is not None  # checked at construction
        if self.report_to == "tensorboard":
            project, kwargs = run, {}
        else:
            folder = self.logging_dir
            if accelerator.is_main_process:
                folder.mkdir(parents=True, exist_ok=True)
            project = WANDB_PROJECT
            kwargs = {"wandb": {"name": run, "dir": str(folder)}}
        accelerator.init_trackers(project, config=hyperparameters(config), init_kwargs=kwargs)
        self.run = run
        try:
            yield self
        finally:
            for tracker in accelerator.trackers:
                tracker.finish()
            accelerator.trackers = []
            self.run = None

    def log(self, values: Mapping[str, float], step: int) -> None:
        """Log ``{tag: value}`` at ``step`` (the main process only; nothing outside a
        session)."""
        if self.run is not None and values:
            self._tracking_accelerator().log(dict(values), step=step)


LayerProgress = Callable[[int, int, dict[str, float]], None]


@contextlib.contextmanager
def layer_sessions(
    tracker: Tracker, prefix: str, config: Mapping[str, Any], then: LayerProgress | None = None
) -> Iterator[LayerProgress]:
    """For SAE training, layer after layer: yields the ``progress(layer, step, terms)``
    callback of :func:`~mechtune.interp.sae_stream.stream_and_train`, which opens one
    session ``<prefix>layer_<L>`` per layer (with ``config`` and ``layer``) and logs each
    log interval's mean terms as ``sae/<term>`` at ``step + 1`` (steps done). One session
    per layer, since each layer's steps start again at 1. ``then`` is called after
    logging (another progress callback)."""
    stack = contextlib.ExitStack()
    current: list[int] = []

    def progress(layer: int, step: int, terms: dict[str, float]) -> None:
        if current != [layer]:
            stack.close()
            stack.enter_context(
                tracker.session(f"{prefix}layer_{layer}", {**config, "layer": layer})
            )
            current[:] = [layer]
        tracker.log({f"sae/{name}": float(value) for name, value in terms.items()}, step + 1)
        if then is not None:
            then(layer, step, terms)

    with stack:
        yield progress


__all__ = [
    "PACKAGES",
    "REPORT_TO",
    "TRACKING_DIR",
    "WANDB_PROJECT",
    "LayerProgress",
    "Tracker",
    "block_tag",
    "check_report_to",
    "hyperparameters",
    "layer_sessions",
]
