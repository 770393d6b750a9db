"""Yes/no paraphrase sets (PSF-Med style, arXiv 2602.21428).

Each question asks whether a condition is present, in the narrow original register
("Is there a pleural effusion?"), and comes with 4-6 meaning-preserving paraphrases: at
least one per strategy (lexical, syntactic, register shift, voice) the family pool has,
the rest drawn from the pool's remaining families. No paraphrase inverts polarity: every
template asks about presence, and a test scans them for negation cues.

Train-split patients get train families only. Validation and test patients get each
question twice: once with train families (in-distribution) and once with held-out
families.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mechtune.data.builders.common import (
    BuildResult,
    Progress,
    SplitOf,
    TableSet,
    counted,
    finish,
    study_split,
)
from mechtune.data.ontology import PARAPHRASE_STRATEGIES, CueFamily, load_ontology
from mechtune.data.psf import write_psf_records
from mechtune.data.schema import SPLITS, ImageQuestion, ParaphraseSet, Study
from mechtune.data.sources.base import ImageStudySource
from mechtune.data.splits import DEFAULT_FRACTIONS, check_fractions, record_rng
from mechtune.data.text import realise_question
from mechtune.errors import ConfigError


@dataclass(frozen=True)
class ParaphraseConfig:
    """Knobs of the paraphrase builder.

    ``questions_per_study`` questions per study (alternately present and absent
    conditions), each worded in ``original_family`` (a question family) with
    ``min_paraphrases``..``max_paraphrases`` paraphrases; ``heldout_eval`` adds a held-out
    family copy of every validation and test question.
    """

    seed: int = 0
    questions_per_study: int = 2
    min_paraphrases: int = 4
    max_paraphrases: int = 6
    original_family: str = "q.is_there"
    heldout_eval: bool = True
    split_fractions: tuple[float, float, float] = DEFAULT_FRACTIONS

    def __post_init__(self) -> None:
        if self.questions_per_study < 1:
            raise ConfigError(f"questions_per_study must be >= 1, got {self.questions_per_study}")
        if not 1 <= self.min_paraphrases <= self.max_paraphrases:
            raise ConfigError(
                f"need 1 <= min_paraphrases <= max_paraphrases, got "
                f"{self.min_paraphrases}, {self.max_paraphrases}"
            )
        questions = {f.id for f in load_ontology().families_of("question")}
        if self.original_family not in questions:
            raise ConfigError(
                f"original_family {self.original_family!r} is not a question family "
                f"(one of {sorted(questions)})"
            )
        object.__setattr__(self, "split_fractions", check_fractions(self.split_fractions))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["split_fractions"] = list(self.split_fractions)
        return d


def _pick_families(pool: tuple[CueFamily, ...], n: int, rng: random.Random) -> list[CueFamily]:
    """One family per strategy first, then fill up to n from the rest of the pool."""
    by_strategy: dict[str, list[CueFamily]] = {}
    for fam in pool:
        by_strategy.setdefault(fam.strategy or "", []).append(fam)
    chosen = [rng.choice(by_strategy[s]) for s in PARAPHRASE_STRATEGIES if s in by_strategy]
    rest = [f for f in pool if f not in chosen]
    rng.shuffle(rest)
    chosen.extend(rest[: max(0, n - len(chosen))])
    return chosen[:n]


def balanced_conditions(study: Study, k: int, rng: random.Random) -> list[str]:
    """Balance yes and no answers: alternate present and absent conditions."""
    onto = load_ontology()
    present = [c.id for c in onto.pathologies if study.label(c.id) is True]
    absent = [c.id for c in onto.pathologies if study.label(c.id) is False]
    rng.shuffle(present)
    rng.shuffle(absent)
    chosen: list[str] = []
    while len(chosen) < k and (present or absent):
        for group in (present, absent):
            if group and len(chosen) < k:
                chosen.append(group.pop())
    return chosen


def make_paraphrase_set(
    study: Study,
    condition: str,
    heldout: bool,
    split: str,
    config: ParaphraseConfig,
    rng: random.Random,
) -> ParaphraseSet:
    onto = load_ontology()
    pool = onto.families_of("paraphrase", heldout=heldout, condition=condition)
    n = rng.randint(config.min_paraphrases, config.max_paraphrases)
    question = realise_question(condition, config.original_family)
    n_synonyms = max(1, len(onto.condition(condition).synonyms))
    texts: list[str] = []
    families: list[CueFamily] = []
    for fam in _pick_families(pool, n, rng):
        text = realise_question(condition, fam.id, rng.randrange(n_synonyms))
        if text != question and text not in texts:
            texts.append(text)
            families.append(fam)
    answer = study.label(condition)
    return ParaphraseSet(
        question_id=f"{study.study_id}-{condition}-{'h' if heldout else 'i'}",
        study_id=study.study_id,
        patient_id=study.patient_id,
        condition=condition,
        question=question,
        paraphrases=tuple(texts),
        strategies=tuple(f.strategy or "unknown" for f in families),
        families=tuple(f.id for f in families),
        answer=bool(answer),
        image_ref=study.image_ref,
        heldout_family=tuple(f.heldout for f in families),
        split=split,
    )


def _study_sets(
    study: Study, split: str, heldout: bool, config: ParaphraseConfig
) -> list[ParaphraseSet]:
    """A study's questions: its own random stream (``config.seed``, the study, ``heldout``),
    so they do not depend on which other studies are asked about."""
    rng = record_rng(config.seed, "vqa-paraphrase", study.study_id, heldout)
    conditions = balanced_conditions(study, config.questions_per_study, rng)
    return [make_paraphrase_set(study, c, heldout, split, config, rng) for c in conditions]


def image_paraphrase_sets(
    rows: Iterable[tuple[int, Study]],
    split: str,
    *,
    heldout: bool,
    questions_per_study: int = 2,
    seed: int = 0,
) -> list[ImageQuestion]:
    """PSF-Med style paraphrase sets bound to image rows, for studies and models in memory.

    ``rows``: ``(row, study)`` pairs, the row of the study's image in the caller's image
    batch (:class:`~mechtune.data.schema.ImageQuestion`), for the studies of ``split``
    (recorded on each set). Each study gets ``questions_per_study`` questions, balanced
    yes/no (:func:`balanced_conditions`; fewer when the study has fewer definite labels),
    worded as :class:`ParaphraseConfig` words them with paraphrases from the held-out
    families (``heldout=True``, never used in training) or the training families
    (in-distribution). A study's questions depend only on ``seed``, the study and
    ``heldout`` (a per-record stream), not on which other studies are listed; the
    held-out copy of a study draws its own conditions. Raises ``ConfigError`` for
    ``questions_per_study`` < 1.
    """
    config = ParaphraseConfig(seed=seed, questions_per_study=questions_per_study)
    return [
        ImageQuestion(record, int(row))
        for row, study in rows
        for record in _study_sets(study, split, heldout, config)
    ]


def source_paraphrase_sets(
    source: ImageStudySource, *, questions_per_study: int = 2, seed: int = 0
) -> list[ParaphraseSet]:
    """The PSF-Med style questions of every item of an image-study source, in its order.

    A train-split item (``source.split_of``) gets ``questions_per_study`` questions with
    training families; a validation or test item gets them twice, in-distribution
    (training families) and held-out (held-out families; question ids end in ``-i`` and
    ``-h``). Each set keeps the item's ``study_id``, ``patient_id``, ``image_ref`` and
    split. These are the records :func:`image_paraphrase_sets` gives for the same items,
    split, ``heldout``, ``questions_per_study`` and ``seed``, so a questions file and the
    in-memory path ask the same questions. Items without a definite (present or absent)
    label get none. Raises ``ConfigError`` for ``questions_per_study`` < 1.
    """
    config = ParaphraseConfig(seed=seed, questions_per_study=questions_per_study)
    out: list[ParaphraseSet] = []
    for study in source.studies():
        split = source.split_of(study)
        for heldout in (False,) if split == "train" else (False, True):
            out.extend(_study_sets(study, split, heldout, config))
    return out


def write_source_questions(
    source: ImageStudySource,
    path: str | Path,
    *,
    questions_per_study: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Write :func:`source_paraphrase_sets` of ``source`` to ``path`` as PSF-Med JSONL.

    Each record's ``image`` is the item's ``image_ref`` (for the table readers, the image
    file relative to the source's root: pass that root as the data folder) and its
    ``split`` the item's split; see :mod:`mechtune.data.psf` for the record format. The
    file is written atomically, and the same source, ``questions_per_study`` and ``seed``
    give the same bytes. Returns the counts a manifest records: ``file`` (the file name),
    ``questions_per_study``, ``seed``, ``studies`` (items), ``studies_with_questions``,
    ``studies_without_definite_label``, ``records``, ``records_by_split``,
    ``records_by_family_pool`` (``in_distribution``, ``heldout``), ``answers`` (yes, no),
    ``paraphrases`` and ``paraphrases_by_strategy``. Raises ``ConfigError`` for
    ``questions_per_study`` < 1 and ``DataError`` when a record would not read back.
    """
    sets = source_paraphrase_sets(source, questions_per_study=questions_per_study, seed=seed)
    write_psf_records(sets, path)
    asked = {s.study_id for s in sets}
    by_split = Counter(s.split for s in sets)
    strategies = Counter(x for s in sets for x in s.strategies)
    heldout = sum(bool(s.heldout_family) and all(s.heldout_family) for s in sets)
    return {
        "file": Path(path).name,
        "questions_per_study": questions_per_study,
        "seed": seed,
        "studies": len(source),
        "studies_with_questions": len(asked),
        "studies_without_definite_label": sum(s.study_id not in asked for s in source.studies()),
        "records": len(sets),
        "records_by_split": {name: by_split[name] for name in SPLITS},
        "records_by_family_pool": {"in_distribution": len(sets) - heldout, "heldout": heldout},
        "answers": {"no": sum(not s.answer for s in sets), "yes": sum(s.answer for s in sets)},
        "paraphrases": sum(len(s.paraphrases) for s in sets),
        "paraphrases_by_strategy": dict(sorted(strategies.items())),
    }


def build_paraphrase(
    studies: Iterable[Study],
    out_dir: str | Path,
    config: ParaphraseConfig | None = None,
    *,
    fmt: str = "parquet",
    progress: Progress | None = None,
    source: dict[str, Any] | None = None,
    split_of: SplitOf | None = None,
) -> BuildResult:
    """Write the ``paraphrases`` table plus a manifest."""
    config = config or ParaphraseConfig()
    out = Path(out_dir)
    seen = 0
    answers: Counter[str] = Counter()
    strategies: Counter[str] = Counter()
    with TableSet(out, ["paraphrases"], fmt) as tables:
        for study in counted(studies, progress):
            seen += 1
            split = study_split(study, config.seed, config.split_fractions, split_of)
            rng = record_rng(config.seed, "paraphrase", study.study_id)
            pools = [False, True] if split != "train" and config.heldout_eval else [False]
            for condition in balanced_conditions(study, config.questions_per_study, rng):
                for heldout in pools:
                    record = make_paraphrase_set(study, condition, heldout, split, config, rng)
                    answers["yes" if record.answer else "no"] += 1
                    strategies.update(record.strategies)
                    tables.write("paraphrases", record)
    counts = {
        "studies": seen,
        "answers": dict(sorted(answers.items())),
        "paraphrases_by_strategy": dict(sorted(strategies.items())),
        "tables": tables.counts(),
    }
    result = BuildResult(out, "paraphrase", tables.files, counts)
    return finish(result, config=config.to_dict(), extra={"source": source or {}})
