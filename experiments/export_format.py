"""PNG or JPEG for the phantom MIMIC-layout export, chosen by measurement.

    .venv/bin/python experiments/export_format.py --n 4000 --qualities 95 90 75 \
        --timing-n 2000 --out experiments/results/export_format.json

Exports one phantom world (``WorldConfig.seeded(n, seed)``, the world ``mechtune demo``
builds) with ``export_mimic`` as PNG and as JPEG at each quality, reads every world image
back from its file (``read_image_file``, what a reader returns), and evaluates the shipped
phantom CLIP zero-shot on the test split of each copy (``evaluate_zero_shot``, the figures
the demo prints, without the linear probes). The lossless copy must reproduce the world's
pixels exactly. The test patients of this world are test patients of the shipped CLIP's
10,000-study training world (same seed, patient-hash splits), so none was trained on.

Per figure and quality: the lossless figure with its 95% interval (clustered by patient),
the JPEG figure, and the paired change JPEG - lossless on the same items: for a proportion
``paired_difference`` (patient-cluster bootstrap, McNemar's exact p); for a gap (the
affirmative - negated accuracy difference) the difference of the per-item changes
between the two slices, ``bootstrap_mean_difference`` clustered by patient. Text
embeddings are computed once and shared, so only the images differ between copies.

Rule, fixed before the first run: JPEG at a quality is *harmless* when no figure moves by
more than the half-width of the lossless figure's 95% interval. The export's default
format is JPEG (MIMIC-CXR-JPG's own format) at quality 95 (its own quality) when quality 95
is harmless, else PNG. ``--timing-n`` also times an export of that many studies in each
format on this machine and measures the folder's size.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mechtune.data.builders.contextual import ContextualConfig, study_records
from mechtune.data.io import to_jsonable, write_json
from mechtune.data.sources.base import read_image_file
from mechtune.eval.metrics import (
    Estimate,
    bootstrap_mean_difference,
    claim_hits,
    paired_difference,
    pairwise_hits,
)
from mechtune.eval.negation import (
    claim_scores,
    embed_images,
    evaluate_negation,
    polarity_mcq_items,
    retrieval_hit_table,
)
from mechtune.sim.clip import load_default
from mechtune.sim.export import MimicExport, export_mimic
from mechtune.sim.mimic_layout import image_relpath
from mechtune.sim.world import World, WorldConfig, make_world

FAMILIES = (("in_distribution", False), ("heldout", True))
ATTRIBUTES = ("existence", "laterality", "severity")


class SharedTexts:
    """The model with a text-embedding cache, so every copy scores the same text vectors."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache: dict[str, torch.Tensor] = {}

    def encode_images(self, images: Any) -> torch.Tensor:
        return self.model.encode_images(images)

    def encode_texts(self, texts: Any) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            with torch.no_grad():
                table = self.model.encode_texts(missing)
            self.cache.update(zip(missing, table, strict=True))
        return torch.stack([self.cache[t] for t in texts])


def read_back(export: MimicExport, image_format: str, n: int) -> np.ndarray:
    """The world images of an export, decoded from their files: ``uint8 [n, S, S]``."""
    images = []
    for item in export.studies[:n]:
        image = item.world_image
        assert image is not None and item.row == len(images)
        rel = image_relpath(item.subject_id, item.study_id, image.dicom_id, image_format)
        images.append(read_image_file(export.root / rel))
    return np.stack(images)


def item_table(model: Any, world: World, split: str) -> dict[str, Any]:
    """Per-item correctness on ``split``, in a fixed item order: retrieval, claim sets
    (top-1, with family, slice and flipped attributes), pairs, polarity MCQs."""
    idx = world.indices(split)
    data = world.eval_set(model, split)
    image_emb = data.images
    row = {world.studies[i].study_id: j for j, i in enumerate(idx)}
    contextual = ContextualConfig(
        seed=world.config.seed, split_fractions=world.config.split_fractions
    )
    claim_sets = [
        cs
        for i in idx
        for cs in study_records(world.studies[i], contextual, split_of=lambda _s: split)[0]
    ]
    scores = claim_scores(model, claim_sets, row, image_emb)
    pairs = pairwise_hits(scores)
    mcq = polarity_mcq_items(model, data, seed=world.config.seed)
    return {
        "retrieval": retrieval_hit_table(model, data),
        "retrieval_patient": np.array([world.studies[i].patient_id for i in idx], dtype=object),
        "top1": claim_hits(scores).astype(np.float64),
        "claim_patient": np.array([cs.patient_id for cs in claim_sets], dtype=object),
        "heldout": np.array([cs.heldout_family for cs in claim_sets]),
        "slice": np.array(
            [
                "contralateral"
                if cs.contralateral
                else ("affirmative" if cs.polarity == "affirmative" else "negated")
                for cs in claim_sets
            ],
            dtype=object,
        ),
        "existence_only": np.array([cs.flipped == ("existence",) for cs in claim_sets]),
        "pairs": {
            (fam, attr): np.array(
                [
                    float(hit)
                    for cs, hits in zip(claim_sets, pairs, strict=True)
                    if cs.heldout_family == keep
                    for hit, a in zip(hits, cs.flipped, strict=True)
                    if a == attr
                ]
            )
            for fam, keep in FAMILIES
            for attr in ATTRIBUTES
        },
        "pair_patient": {
            (fam, attr): np.array(
                [
                    cs.patient_id
                    for cs in claim_sets
                    if cs.heldout_family == keep
                    for a in cs.flipped
                    if a == attr
                ],
                dtype=object,
            )
            for fam, keep in FAMILIES
            for attr in ATTRIBUTES
        },
        "mcq": {form: np.array(mcq[form], dtype=np.float64) for form in ("negated", "affirmative")},
        "mcq_patient": np.array(mcq["patient"], dtype=object),
    }


def figures(report: dict[str, Any], items: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each figure of the demo's zero-shot table: its Estimate, and how to get its items.

    ``("prop", values, patients)`` for a proportion; ``("gap", mask_a, mask_b)`` for a
    difference of two slices of the claim sets."""
    out: dict[str, dict[str, Any]] = {}
    for k in ("R@1", "R@5"):
        out[f"image->report {k}"] = {
            "estimate": report["retrieval"][k],
            "items": ("prop", items["retrieval"][k].astype(np.float64), items["retrieval_patient"]),
        }
    for fam, keep in FAMILIES:
        claims = report["claims"][fam]
        fam_mask = items["heldout"] == keep
        out[f"{fam}: claim accuracy"] = {
            "estimate": claims["claim_accuracy"],
            "items": ("prop", fam_mask),
        }
        for kind in ("affirmative", "negated", "contralateral"):
            out[f"{fam}: correct claim {kind}"] = {
                "estimate": claims["accuracy_by_polarity"][kind],
                "items": ("prop", fam_mask & (items["slice"] == kind)),
            }
        aff, neg = (
            fam_mask & (items["slice"] == "affirmative"),
            fam_mask & (items["slice"] == "negated"),
        )
        out[f"{fam}: affirmative - negated gap"] = {
            "estimate": claims["affirmative_negation_gap"],
            "items": ("gap", aff, neg),
        }
        only = items["existence_only"]
        out[f"{fam}: same gap, existence-only sets"] = {
            "estimate": claims["existence_only_gap"],
            "items": ("gap", aff & only, neg & only),
        }
        for attr in ATTRIBUTES:
            out[f"{fam}: pairwise, {attr} flipped"] = {
                "estimate": claims["pairwise_by_attribute"][attr],
                "items": (
                    "prop",
                    items["pairs"][(fam, attr)],
                    items["pair_patient"][(fam, attr)],
                ),
            }
    for form in ("negated", "affirmative"):
        out[f"polarity MCQ, {form} wording"] = {
            "estimate": report["polarity_mcq"][form],
            "items": ("prop", items["mcq"][form], items["mcq_patient"]),
        }
    return out


def _values(spec: tuple, items: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(per-item values, patients) of a proportion figure."""
    if len(spec) == 3:
        return spec[1], spec[2]
    mask = spec[1]
    return items["top1"][mask], items["claim_patient"][mask]


def compare(
    base_report: dict[str, Any],
    base_items: dict[str, Any],
    report: dict[str, Any],
    items: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Per figure: lossless and JPEG values, the change, its paired interval, the verdict."""
    base_figs = figures(base_report, base_items)
    new_figs = figures(report, items)
    out = {}
    for name, fig in base_figs.items():
        est: Estimate = fig["estimate"]
        new: Estimate = new_figs[name]["estimate"]
        spec = fig["items"]
        if spec[0] == "prop":
            a, patients = _values(new_figs[name]["items"], items)
            b, patients_b = _values(spec, base_items)
            assert list(patients) == list(patients_b)
            assert abs(float(b.mean()) - est.value) < 1e-9, name  # the same items
            paired = paired_difference(a, b, patients).to_dict()
        else:
            d = items["top1"] - base_items["top1"]
            _, m_a, m_b = spec
            diff = bootstrap_mean_difference(
                d[m_a],
                d[m_b],
                clusters_a=list(base_items["claim_patient"][m_a]),
                clusters_b=list(base_items["claim_patient"][m_b]),
            )
            paired = {"value": diff.value, "low": diff.low, "high": diff.high}
        change = new.value - est.value
        half = (est.high - est.low) / 2
        out[name] = {
            "lossless": est,
            "jpeg": new,
            "change": change,
            "paired": paired,
            "half_width": half,
            "harmless": bool(abs(change) <= half + 1e-12),
        }
    return out


def pixel_stats(lossless: np.ndarray, jpeg: np.ndarray) -> dict[str, float]:
    err = jpeg.astype(np.float64) - lossless.astype(np.float64)
    mse = float((err**2).mean())
    return {
        "mean_abs_error": float(np.abs(err).mean()),
        "max_abs_error": float(np.abs(err).max()),
        "psnr_db": 10 * np.log10(255.0**2 / mse) if mse > 0 else float("inf"),
    }


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def timing(n: int, seed: int, quality: int, scratch: Path) -> dict[str, Any]:
    """Seconds to export an ``n``-study world in each format, and the folder sizes."""
    world = make_world(WorldConfig.seeded(n, seed))
    out: dict[str, Any] = {"n": n}
    for fmt in ("png", "jpeg"):
        folder = scratch / f"timing_{fmt}"
        start = time.perf_counter()
        result = export_mimic(world, folder, image_format=fmt, jpeg_quality=quality, seed=seed)
        out[fmt] = {
            "seconds": round(time.perf_counter() - start, 2),
            "bytes": folder_bytes(folder),
            "files": sum(1 for p in folder.rglob("*") if p.is_file()),
            "images": result.counts["images"],
        }
        shutil.rmtree(folder)
    return out


def _pp(x: float) -> str:
    return f"{100 * x:+.1f}"


def markdown(results: dict[str, Any], qualities: list[int]) -> str:
    head = "| figure (test split) | lossless [95% CI] | half-width |"
    rule = "|---|---|---|"
    for q in qualities:
        head += f" JPEG {q}: change, paired 95% CI |"
        rule += "---|"
    lines = [head, rule]
    first = results["quality"][str(qualities[0])]["figures"]
    for name in first:
        est = first[name]["lossless"]
        cells = [name, est.pct(), f"{100 * first[name]['half_width']:.1f}"]
        for q in qualities:
            f = results["quality"][str(q)]["figures"][name]
            p = f["paired"]
            cell = f"{_pp(f['change'])} [{_pp(p['low'])}, {_pp(p['high'])}]"
            if p.get("mcnemar_p") is not None:
                cell += f", p={p['mcnemar_p']:.2g}"
            if not f["harmless"]:
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "| quality | harmless (all figures within half-width) | mean abs pixel error | PSNR (dB) | mean image cosine to lossless | bytes per world image |"
    )
    lines.append("|---|---|---|---|---|---|")
    lines.append(f"| lossless PNG | - | 0 | inf | 1 | {results['png_bytes_per_image']:.0f} |")
    for q in qualities:
        r = results["quality"][str(q)]
        lines.append(
            f"| {q} | {'yes' if r['harmless'] else 'no'} | {r['pixels']['mean_abs_error']:.2f} | "
            f"{r['pixels']['psnr_db']:.1f} | {r['embedding_cosine']:.4f} | {r['bytes_per_image']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--qualities", type=int, nargs="+", default=[95, 90, 75])
    parser.add_argument("--timing-n", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/export_format.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    world = make_world(WorldConfig.seeded(args.n, args.seed))
    model = SharedTexts(load_default())
    results: dict[str, Any] = {"n": args.n, "seed": args.seed, "quality": {}}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        png = export_mimic(world, scratch / "png", image_format="png", seed=args.seed)
        lossless = read_back(png, "png", args.n)
        assert np.array_equal(lossless, world.images), "PNG must reproduce the world's pixels"
        results["png_bytes_per_image"] = float(
            np.mean(
                [(scratch / "png" / r).stat().st_size for r in _world_files(png, "png", args.n)]
            )
        )
        shutil.rmtree(scratch / "png")
        base_world = World(world.config, world.studies, lossless, world.acquisitions)
        base_report = evaluate_negation(
            model, base_world.eval_set(model, "test"), seed=world.config.seed
        )
        base_items = item_table(model, base_world, "test")
        test_idx = world.indices("test")
        base_emb = embed_images(model, lossless[test_idx])
        results["test_studies"] = int(test_idx.size)
        for q in args.qualities:
            folder = scratch / f"jpeg{q}"
            export = export_mimic(
                world, folder, image_format="jpeg", jpeg_quality=q, seed=args.seed
            )
            images = read_back(export, "jpeg", args.n)
            sizes = [(folder / r).stat().st_size for r in _world_files(export, "jpeg", args.n)]
            shutil.rmtree(folder)
            copy = World(world.config, world.studies, images, world.acquisitions)
            report = evaluate_negation(model, copy.eval_set(model, "test"), seed=world.config.seed)
            figs = compare(base_report, base_items, report, item_table(model, copy, "test"))
            cosine = (embed_images(model, images[test_idx]) * base_emb).sum(-1)
            results["quality"][str(q)] = {
                "figures": figs,
                "harmless": all(f["harmless"] for f in figs.values()),
                "pixels": pixel_stats(lossless[test_idx], images[test_idx]),
                "embedding_cosine": float(cosine.mean()),
                "bytes_per_image": float(np.mean(sizes)),
            }
            print(f"quality {q}: harmless={results['quality'][str(q)]['harmless']}", flush=True)
        if args.timing_n:
            results["timing"] = timing(args.timing_n, args.seed, 95, scratch)
    harmless95 = results["quality"].get("95", {}).get("harmless")
    results["rule"] = (
        "JPEG at quality 95 if no figure moves by more than the half-width of the lossless "
        "figure's 95% interval at quality 95, else PNG"
    )
    results["choice"] = "jpeg" if harmless95 else "png"
    results["seconds"] = round(time.perf_counter() - start, 1)
    table = markdown(results, args.qualities)
    print(table)
    if "timing" in results:
        t = results["timing"]
        for fmt in ("png", "jpeg"):
            print(
                f"export of {t['n']} studies as {fmt}: {t[fmt]['seconds']} s, "
                f"{t[fmt]['bytes'] / 2**20:.1f} MiB in {t[fmt]['files']} files"
            )
    print(f"choice: {results['choice']} ({results['rule']})")
    write_json(args.out, to_jsonable({**results, "markdown": table}))


def _world_files(export: MimicExport, image_format: str, n: int) -> list[str]:
    out = []
    for item in export.studies[:n]:
        assert item.world_image is not None
        out.append(
            image_relpath(item.subject_id, item.study_id, item.world_image.dicom_id, image_format)
        )
    return out


if __name__ == "__main__":
    main()
