"""`mechtune eval negation`: claim accuracy of a model on user-supplied claim sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from mechtune.cli._common import console
from mechtune.data.io import read_jsonl_records, write_json
from mechtune.errors import DataError
from mechtune.eval.metrics import claim_hits, proportion
from mechtune.eval.zero_shot import embed_images
from mechtune.models.spec import load_dual_encoder
from mechtune.sim.world import World, WorldConfig, load_world, make_world

app = typer.Typer(help="Evaluate models on benchmarks.", no_args_is_help=True)


class ClaimFileError(DataError):
    pass


def read_claims(path: Path, world: World) -> list[tuple[int, list[str]]]:
    """JSONL of ``{"image": row or study id, "candidates": [...], "correct": index}``.

    Returns (image row, candidates with the correct one first). Errors name file, line and
    value.
    """
    rows = {s.study_id: i for i, s in enumerate(world.studies)}
    out = []
    for number, record in read_jsonl_records(
        path, ("image", "candidates", "correct"), ClaimFileError
    ):
        where = f"{path}, line {number}"
        image, cands, correct = record["image"], record["candidates"], record["correct"]
        if isinstance(image, int) and 0 <= image < len(world.studies):
            row = image
        elif isinstance(image, str) and image in rows:
            row = rows[image]
        else:
            raise ClaimFileError(
                f"{where}, field 'image': {image!r} is neither a row nor a study id of the world"
            )
        if (
            not isinstance(cands, list)
            or len(cands) < 2
            or not all(isinstance(c, str) for c in cands)
        ):
            raise ClaimFileError(
                f"{where}, field 'candidates': need a list of >= 2 texts, got {cands!r}"
            )
        if not isinstance(correct, int) or not 0 <= correct < len(cands):
            raise ClaimFileError(
                f"{where}, field 'correct': {correct!r} is not an index into candidates"
            )
        out.append((row, [cands[correct], *(c for i, c in enumerate(cands) if i != correct)]))
    if not out:
        raise ClaimFileError(f"{path}: no claim sets")
    return out


@app.command("negation")
def negation(
    claims: Annotated[Path, typer.Option(help="JSONL of {image, candidates, correct}.")],
    model: Annotated[str, typer.Option(help="Model spec.")] = "phantom:default",
    adapter: Annotated[Path | None, typer.Option(help="A peft adapter folder to apply.")] = None,
    world: Annotated[Path | None, typer.Option(help="World folder the images come from.")] = None,
    n: Annotated[int, typer.Option("--n", help="Studies if the world is rendered.", min=1)] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of a rendered world.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write the result JSON here.")] = None,
) -> None:
    """Claim accuracy (top-1 over each set) with a 95% interval: a proportion over claim
    sets clustered by the image's patient (Wilson when every patient has one set, else a
    patient bootstrap with a Wilson floor)."""
    encoder = load_dual_encoder(model)
    if adapter is not None:
        from peft import PeftModel

        if not (adapter / "adapter_config.json").is_file():
            raise DataError(f"{adapter}: no adapter_config.json (expected a peft adapter folder)")
        PeftModel.from_pretrained(encoder.model, str(adapter))  # injects into encoder.model
    the_world = load_world(world) if world is not None else make_world(WorldConfig.seeded(n, seed))
    items = read_claims(claims, the_world)
    images = embed_images(encoder, the_world.images)
    texts = sorted({t for _, cands in items for t in cands})
    with torch.no_grad():
        table = encoder.encode_texts(texts)
    index = {t: i for i, t in enumerate(texts)}
    scores = [(table[[index[t] for t in cands]] @ images[row]).numpy() for row, cands in items]
    patients = [the_world.studies[row].patient_id for row, _ in items]
    hits = claim_hits(scores)
    est = proportion(hits.astype(np.float64), clusters=patients)
    result: dict[str, Any] = {
        "model": model,
        "adapter": str(adapter) if adapter else None,
        "claims": str(claims),
        "world": str(world) if world is not None else {"n_studies": n, "seed": seed},
        "claim_accuracy": est,
        # per claim set, in file order: the image's study and patient, whether the correct
        # claim won, and the cosine of every candidate (the correct one first)
        "items": [
            {
                "study": the_world.studies[row].study_id,
                "patient": patient,
                "correct": bool(hit),
                "scores": [float(s) for s in score],
            }
            for (row, _), patient, hit, score in zip(items, patients, hits, scores, strict=True)
        ],
    }
    console.print(f"claim accuracy on {est.n} claim sets: {est.pct()}")
    if out is not None:
        write_json(out, result)
