"""SAE folders as commands name them: a folder of per-layer SAEs, or one SAE to clamp.

A folder of SAEs holds one subfolder per layer, named ``layer_<L>`` (what ``mechtune sae
train`` writes, SAELens layout) or ``layer_<L>_<variant>`` as Gemma Scope 2 names them
(``layer_17_width_16k_l0_medium``), in any layout :func:`mechtune.interp.sae.load_sae`
reads. The layer is the folder's and must agree with the SAE's own metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechtune.errors import ConfigError, DataError
from mechtune.interp.sae import SAE, layer_folder, load_sae


class SAEFolderError(DataError):
    """An SAE folder that cannot be used as named (the message names the folder)."""


def load_layer_saes(
    folder: Path, layers: list[int] | None, variant: str | None = None
) -> dict[int, Any]:
    """``{layer: SAE}`` from the SAE folders in ``folder``, in any layout load_sae reads.

    A folder is named ``layer_<L>`` or, as Gemma Scope 2 names them, ``layer_<L>_<variant>``
    (``layer_17_width_16k_l0_medium``); ``variant`` keeps only folders of that variant.
    The layer is the folder name's; an SAE whose own metadata places it elsewhere, or reads
    a site that is not a block output, is refused naming both, and so are two folders for
    one layer. Only the folders of ``layers`` (all when None) are loaded.
    """
    if not folder.is_dir():
        raise SAEFolderError(f"{folder}: no such folder")
    chosen: dict[int, Path] = {}
    variants: set[str] = set()
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        parsed = layer_folder(child.name)
        if parsed is None:
            if child.name.startswith("layer_"):
                raise SAEFolderError(
                    f"{folder}: folder {child.name!r} is not named layer_<L> or "
                    "layer_<L>_<variant> (one layer per SAE)"
                )
            continue
        layer, name = parsed
        variants.add(name)
        if (variant is not None and name != variant) or (
            layers is not None and layer not in layers
        ):
            continue
        if layer in chosen:
            raise SAEFolderError(
                f"{folder}: two SAEs for layer {layer}: {chosen[layer].name!r} and "
                f"{child.name!r}; pick one with --sae-variant (found: {sorted(variants)})"
            )
        chosen[layer] = child
    saes: dict[int, Any] = {}
    for layer, child in chosen.items():
        sae = _load(child, str(folder))
        sae_layer(child, sae)  # the folder's layer, agreeing with the SAE's own
        saes[layer] = sae.eval()
    if not saes:
        wanted = "" if variant is None else f" of variant {variant!r}"
        raise SAEFolderError(
            f"{folder}: no layer_<L>/ SAE folders{wanted} for layers "
            f"{'all' if layers is None else layers} (variants found: {sorted(variants)})"
        )
    return dict(sorted(saes.items()))


@dataclass(frozen=True)
class Clamp:
    """One SAE feature clamped at inference (PSF-Med's intervention): the SAE of block
    ``layer``, feature index ``feature``, clamped to ``value`` (activation units)."""

    folder: Path
    layer: int
    feature: int
    value: float
    sae: Any

    def describe(self) -> dict[str, Any]:
        return {
            "sae": str(self.folder),
            "layer": self.layer,
            "feature": self.feature,
            "value": self.value,
        }


def _load(path: Path, what: str) -> SAE:
    """:func:`load_sae`, with a missing folder or SAE as an SAEFolderError naming ``what``."""
    try:
        return load_sae(path)
    except FileNotFoundError as exc:
        raise SAEFolderError(f"{what}: {exc}") from None


def sae_layer(folder: Path, sae: SAE) -> int:
    """The block whose output an SAE folder reads: its name's layer (``layer_<L>[_<variant>]``)
    and its metadata's must agree, and one of them must be known. Raises SAEFolderError for
    a disagreement, for neither, and for an SAE whose metadata places it at a site that is
    not a block output (an attention input, say: clamping or analysing it at the block's
    output would read another space)."""
    parsed = layer_folder(folder.name)
    own, hook = sae.config.layer, sae.config.hook
    if own is None and hook is not None:
        block = f"block {parsed[0]}" if parsed is not None else "a block"
        raise SAEFolderError(
            f"{folder}: the SAE reads {hook!r}, which is not the output of {block}; "
            "mechtune reads and edits block outputs"
        )
    if parsed is not None and own is not None and parsed[0] != own:
        raise SAEFolderError(
            f"{folder}: the folder name says layer {parsed[0]} but the SAE's own metadata "
            f"says layer {own} (hook {hook!r})"
        )
    if parsed is not None:
        return parsed[0]
    if own is None:
        raise SAEFolderError(
            f"{folder}: cannot tell which layer this SAE reads: name the folder layer_<L> "
            "or use an SAE whose metadata names its layer"
        )
    return int(own)


def parse_clamp(text: str) -> Clamp:
    """``SAE_DIR:FEATURE:VALUE`` (e.g. ``saes/layer_17:3818:0``) -> a loaded :class:`Clamp`.

    Raises ConfigError for a malformed value (checked before any SAE loads) or a feature
    outside the SAE's width, SAEFolderError for a folder that holds no SAE or whose layer
    is unknown or disagrees with the SAE's (:func:`sae_layer`), and SAEFormatError for an
    SAE file that cannot be read exactly."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[0]:
        raise ConfigError(f"--clamp {text!r}: expected SAE_DIR:FEATURE:VALUE")
    try:
        feature, value = int(parts[1]), float(parts[2])
    except ValueError:
        raise ConfigError(
            f"--clamp {text!r}: FEATURE must be an integer and VALUE a number"
        ) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"--clamp {text!r}: VALUE must be finite")
    folder = Path(parts[0])
    sae = _load(folder, f"--clamp {text!r}").eval()
    if not 0 <= feature < sae.config.d_sae:
        raise ConfigError(
            f"--clamp {text!r}: feature {feature} is outside the SAE's {sae.config.d_sae} features"
        )
    return Clamp(folder, sae_layer(folder, sae), feature, value, sae)


__all__ = ["Clamp", "SAEFolderError", "load_layer_saes", "parse_clamp", "sae_layer"]
