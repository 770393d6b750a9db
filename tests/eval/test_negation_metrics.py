import json

import numpy as np
import pytest
import torch

from mechtune.data.builders.contextual import ContextualConfig, study_records
from mechtune.eval.negation import EvalStudies, evaluate_negation
from mechtune.sim.world import WorldConfig, make_world


class ToyEncoder:
    """A deterministic dual encoder with hashed text features, for checking arithmetic."""

    def encode_images(self, images):
        x = torch.as_tensor(np.asarray(images), dtype=torch.float32).flatten(1)[:, ::512]
        return torch.nn.functional.normalize(x - x.mean(1, keepdim=True), dim=-1)

    def encode_texts(self, texts):
        rows = []
        for t in texts:
            g = torch.Generator().manual_seed(sum(map(ord, t)) * 7 + len(t))
            rows.append(torch.randn(32, generator=g))
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def test_zero_shot_matches_brute_force():
    world = make_world(WorldConfig(n_studies=300, seed=2))
    model = ToyEncoder()
    report = evaluate_negation(model, world.eval_set(model, "test"), seed=world.config.seed)

    idx = world.indices("test")
    img = model.encode_images(world.images[idx])
    # retrieval: rank each image's own report among the split's distinct reports
    reports = sorted({world.studies[i].report for i in idx})
    txt = model.encode_texts(reports)
    hits1 = []
    for row, i in enumerate(idx):
        sims = [float(img[row] @ txt[j]) for j in range(len(reports))]
        own = sims[reports.index(world.studies[i].report)]
        hits1.append(sum(s >= own for s in sims) - 1 < 1)
    assert report["retrieval"]["R@1"].value == np.mean(hits1)

    # claims: top-1 over each claim set, in-distribution families
    cfg = ContextualConfig(seed=world.config.seed)
    correct, total = 0, 0
    for row, i in enumerate(idx):
        for cs in study_records(world.studies[i], cfg, split_of=lambda _s: "test")[0]:
            if cs.heldout_family:
                continue
            emb = model.encode_texts(list(cs.candidates))
            s = [float(e @ img[row]) for e in emb]
            correct += s[0] > max(s[1:])
            total += 1
    got = report["claims"]["in_distribution"]["claim_accuracy"]
    assert got.n == total and got.value == correct / total


def test_polarity_mcq_accuracy_matches_brute_force():
    from mechtune.data.builders.polarity import PolarityConfig, make_mcq, passes_row_filter
    from mechtune.eval.negation import polarity_mcq_accuracy

    world = make_world(WorldConfig(n_studies=400, seed=2))
    model = ToyEncoder()
    got = polarity_mcq_accuracy(model, world.eval_set(model, "train"), seed=2)
    cfg = PolarityConfig(seed=2)
    idx = world.indices("train")
    img = model.encode_images(world.images[idx])
    for form in ("negated", "affirmative"):
        hits = []
        for row, i in enumerate(idx):
            if not passes_row_filter(world.studies[i], cfg):
                continue
            q = make_mcq(world.studies[i], cfg, "train")
            options = list(getattr(q, f"{form}_options"))
            scores = [float(model.encode_texts([o])[0] @ img[row]) for o in options]
            hits.append(int(np.argmax(scores)) == q.correct_index)
        assert got[form].n == len(hits) > 0
        assert got[form].value == np.mean(hits)


def test_zero_shot_intervals_cluster_by_patient_and_items_are_saved():
    from mechtune.data.io import dumps_json
    from mechtune.eval.metrics import proportion

    world = make_world(WorldConfig(n_studies=300, seed=2))
    report = evaluate_negation(ToyEncoder(), world.eval_set(ToyEncoder(), "test"), seed=2)
    idx = world.indices("test")
    patients = [world.studies[i].patient_id for i in idx]
    assert len(set(patients)) < len(patients)  # some patients have several studies

    # per-item results: one row per claim set, ids unique, with patient and slice
    items = report["items"]["claims"]
    assert len(set(items["id"])) == len(items["id"])
    held = [i for i, h in enumerate(items["heldout"]) if h]
    acc = report["claims"]["heldout"]["claim_accuracy"]
    assert acc.n == len(held) and acc.value == np.mean([items["correct"][i] for i in held])
    # the interval is the patient-clustered proportion of exactly those items
    assert acc == proportion(
        [float(items["correct"][i]) for i in held], clusters=[items["patient"][i] for i in held]
    )
    assert acc.method == "cluster-bootstrap+wilson-floor"
    assert acc.clusters == len({items["patient"][i] for i in held})
    negated = report["claims"]["heldout"]["accuracy_by_polarity"]["negated"]
    sel = [i for i in held if items["slice"][i] == "negated"]
    assert negated.n == len(sel)
    assert negated.value == pytest.approx(np.mean([items["correct"][i] for i in sel]))
    # the gap: affirmative minus negated accuracy, a patient bootstrap of the difference
    gap = report["claims"]["heldout"]["affirmative_negation_gap"]
    aff = [items["correct"][i] for i in held if items["slice"][i] == "affirmative"]
    assert gap.value == pytest.approx(np.mean(aff) - np.mean([items["correct"][i] for i in sel]))
    assert gap.method == "cluster-bootstrap"

    retrieval = report["items"]["retrieval"]
    assert retrieval["patient"] == patients
    r1 = report["retrieval"]["R@1"]
    assert r1.value == np.mean(retrieval["R@1"]) and r1.clusters == len(set(patients))
    mcq = report["items"]["polarity_mcq"]
    assert report["polarity_mcq"]["negated"].value == np.mean(mcq["negated"])
    # the whole report is strict JSON
    json.loads(dumps_json(report), parse_constant=_refuse)


def _refuse(name):
    raise AssertionError(f"non-standard JSON constant {name}")


def _strip(studies, *, reports=True, sides=True):
    import dataclasses

    out = []
    for s in studies:
        findings = s.findings
        if not sides:
            findings = tuple(dataclasses.replace(f, laterality=None) for f in findings)
            # a finding stated on both sides becomes a duplicate without its side
            findings = tuple({f.key(): f for f in findings}.values())
        out.append(dataclasses.replace(s, findings=findings, report=s.report if reports else None))
    return out


def test_metrics_the_data_cannot_support_are_na_with_the_reason():
    """Without reports R@k is n/a; without laterality contralateral negation is n/a; the
    metrics that the data supports are still reported."""
    from mechtune.eval.negation import NO_LATERALITY, NO_REPORTS, summary_rows

    world = make_world(WorldConfig(n_studies=300, seed=2))
    model = ToyEncoder()
    full = world.eval_set(model, "test")
    off = {"freeform": "the free-form claim sets were turned off"}  # no freeform= given
    assert evaluate_negation(model, full, seed=2)["not_available"] == off

    bare = EvalStudies(_strip(full.studies, reports=False, sides=False), full.images, "test")
    report = evaluate_negation(model, bare, seed=2)
    assert report["retrieval"] == {"R@1": None, "R@5": None}
    assert report["not_available"] == {
        "retrieval": NO_REPORTS,
        "contralateral": NO_LATERALITY,
        **off,
    }
    assert report["items"]["retrieval"]["id"] == []
    held = report["claims"]["heldout"]
    assert held["accuracy_by_polarity"]["contralateral"] is None
    assert 0 <= held["claim_accuracy"].value <= 1 and held["affirmative_negation_gap"] is not None
    rows = dict((r[0], r[1:]) for r in summary_rows(report))
    assert rows["image->report R@1"][0] == "n/a"
    assert rows["  contralateral negation"] == ("n/a", "n/a")

    # some studies without a report: R@k over those that have one, the rest not queried
    half = [s if i % 2 else _strip([s], reports=False)[0] for i, s in enumerate(full.studies)]
    partial = evaluate_negation(model, EvalStudies(half, full.images, "test"), seed=2)
    assert partial["retrieval"]["R@1"].n == sum(1 for s in half if s.report)
    assert "retrieval" not in partial["not_available"]


def test_eval_studies_refuse_mismatched_embeddings():
    from mechtune.errors import DataError

    world = make_world(WorldConfig(n_studies=60, seed=2))
    data = world.eval_set(ToyEncoder(), "test")
    with pytest.raises(DataError, match=r"studies but .* image embeddings for split 'test'"):
        EvalStudies(list(data.studies)[:-1], data.images, "test")
    with pytest.raises(DataError, match="split 'val' has no study"):
        EvalStudies([], data.images[:0], "val")


def test_embed_texts_reports_each_batch_and_keeps_one_row_per_distinct_text():
    from mechtune.eval.negation import embed_texts

    model, done = ToyEncoder(), []
    texts = ["b", "a", "c", "a", "d", "e", "f", "g", "b"]
    table, index = embed_texts(model, texts, progress=done.append, batch_size=3)
    assert done == [3, 3, 1]
    assert sorted(index) == list("abcdefg") and table.shape == (7, 32)
    assert torch.equal(table[index["e"]], model.encode_texts(["e"])[0])


def test_evaluation_tracks_every_distinct_text_once():
    from mechtune.data.builders.polarity import PolarityConfig, make_mcq, passes_row_filter
    from tests.progress_helpers import Recorder

    world = make_world(WorldConfig(n_studies=300, seed=2))
    model, track = ToyEncoder(), Recorder()
    data = world.eval_set(model, "test")
    report = evaluate_negation(model, data, seed=2, track=track)
    # the texts a brute-force evaluation embeds: claim candidates, reports, MCQ options
    texts = {
        t
        for s in data.studies
        for cs in study_records(s, ContextualConfig(seed=2), split_of=lambda _s: "test")[0]
        for t in cs.candidates
    }
    texts |= {s.report for s in data.studies if s.report}
    cfg = PolarityConfig(seed=2)
    for s in data.studies:
        if passes_row_filter(s, cfg):
            q = make_mcq(s, cfg, "test")
            texts |= set(q.negated_options) | set(q.affirmative_options)
    track.check_complete()
    (stage,) = track.stages
    assert (stage.description, stage.total) == ("evaluate test: embed texts", len(texts))
    assert json.dumps(report, default=str) == json.dumps(
        evaluate_negation(model, data, seed=2), default=str
    )
