"""PadChest -> manifest: projections, one frontal per study, the label mapping."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from mechtune.data.importers import DataFormatError, _At
from mechtune.data.ontology import load_ontology
from mechtune.data.sources import Manifest, padchest_manifest
from mechtune.data.sources.padchest import PADCHEST_TO_CHEXPERT, parse_labels

from .builders import PADCHEST_ROWS as ROWS
from .builders import padchest_csv as _csv
from .builders import padchest_images as _images


def test_padchest_manifest_rows_mapping_and_counts(tmp_path):
    src = _csv(tmp_path / "padchest.csv", bom=True, crlf=True)
    _images(tmp_path / "images")
    out = tmp_path / "out" / "manifest.csv"
    report = padchest_manifest(src, tmp_path / "images", out)
    assert report.rows_read == 9 and report.items == 3
    assert report.skipped == {
        "lateral_view": 2,
        "extra_frontal": 1,
        "excluded": 1,
        "no_labels": 1,
        "other_projection": 1,
    }
    assert report.rows_read == report.items + report.n_skipped  # every row accounted for
    assert report.notes["studies_without_frontal"] == 4  # C (lateral), D, E, F
    assert report.notes["unmapped_labels"] == {"copd signs": 1}
    assert report.notes["missing_images"] == 0
    source = Manifest(out)
    a, b, g = source.items
    assert [s.study_id for s in source] == ["A", "B", "G"]
    assert a.image_ref == "../images/0/a_pa.png" and b.image_ref == "../images/1/b_2.png"
    # presence-only: mapped labels are present, nothing is ever stated absent
    assert {f.condition for f in a.findings} == {"cardiomegaly", "pleural_effusion"}
    assert b.label("no_finding") is True and b.label("support_devices") is None
    assert {f.condition for f in g.findings} == {"pleural_effusion", "pneumothorax", "fracture"}
    assert all(f.present for s in source for f in s.findings)
    grey = source.load_image(a)
    assert grey.dtype == np.uint8 and grey.min() == 0 and grey.max() == 255
    with open(out, encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert header[:4] == ["image", "patient_id", "study_id", "view"]
    assert "report" not in header  # the Spanish report is not carried over


def test_flat_image_folder_and_missing_images(tmp_path):
    src = _csv(tmp_path / "padchest.csv", gz=True)
    assert src.name == "padchest.csv.gz"
    _images(tmp_path / "flat", flat=True)
    out = tmp_path / "manifest.csv"
    padchest_manifest(src, tmp_path / "flat", out)
    assert [s.image_ref for s in Manifest(out)] == ["flat/a_pa.png", "flat/b_2.png", "flat/g.png"]
    report = padchest_manifest(src, tmp_path / "nowhere", out)
    assert report.notes["missing_images"] == 3
    with pytest.raises(DataFormatError, match="image file not found"):
        Manifest(out)


def test_bad_labels_never_eval_and_duplicates(tmp_path):
    rows = [
        *ROWS,
        ("h.png", "0", "H", "P8", "PA", "__import__('os').system('echo hacked')", ""),
        ("i.png", "0", "I", "P9", "PA", "['nodule'", ""),
        ROWS[0],
        ("j.png", "0", "A", "P99", "PA", "['normal']", ""),
    ]
    src = _csv(tmp_path / "padchest.csv", rows)
    with pytest.raises(DataFormatError) as info:
        padchest_manifest(src, tmp_path, tmp_path / "m.csv")
    assert info.value.reason == "bad_label" and "line 11, column 'Labels'" in str(info.value)
    assert "__import__" in str(info.value)
    assert not (tmp_path / "m.csv").exists()  # nothing half-written
    report = padchest_manifest(src, tmp_path, tmp_path / "m.csv", skip_bad=True)
    assert report.skipped["bad_label"] == 2
    assert report.skipped["duplicate_id"] == 1
    assert report.skipped["inconsistent_id"] == 1
    at = _At("x.csv", 2)
    assert parse_labels(at, "") == []
    assert parse_labels(at, "['  Pleural   Effusion ', '']") == ["pleural effusion"]
    with pytest.raises(DataFormatError, match="not a list of strings"):
        parse_labels(at, "['a', 1]")


def test_mapping_targets_are_chexpert_columns():
    columns = {c.column for c in load_ontology().conditions}
    assert set(PADCHEST_TO_CHEXPERT.values()) <= columns
    assert all(k == k.lower().strip() for k in PADCHEST_TO_CHEXPERT)
    assert PADCHEST_TO_CHEXPERT["normal"] == "No Finding"


def test_the_mapping_table_in_the_docs_matches_the_code():
    docs = (Path(__file__).parents[3] / "docs" / "data.md").read_text(encoding="utf-8")
    for label, column in PADCHEST_TO_CHEXPERT.items():
        assert f"| {label} | {column} |" in docs, label
