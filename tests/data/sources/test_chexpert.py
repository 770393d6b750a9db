"""The CheXpert reader on hand-made folders: views, path resolution, reports, dirty rows."""

from __future__ import annotations

import pytest

from mechtune.data.importers import DataFormatError
from mechtune.data.sources import CheXpert
from mechtune.data.splits import patient_split
from mechtune.errors import ConfigError, DataError

from .builders import CHEXPERT_HEADER, chexpert_folder, chexpert_row, write_text

TRAIN = [
    ("patient00001/study1/view1_frontal.jpg", "Frontal", "AP", {"Edema": "1.0"}),
    ("patient00001/study1/view2_lateral.jpg", "Lateral", "", {"Edema": "1.0"}),
    # an AP that sorts first by path, and a PA that wins
    ("patient00002/study1/view1_frontal.jpg", "Frontal", "AP", {"Cardiomegaly": "-1.0"}),
    ("patient00002/study1/view2_frontal.jpg", "Frontal", "PA", {"Cardiomegaly": "-1.0"}),
    ("patient00002/study2/view1_frontal.jpg", "Frontal", "LL", {"Fracture": "0.0"}),
    ("patient00003/study1/view1_lateral.jpg", "Lateral", "", {"Pneumothorax": "1.0"}),
]
VALID = [("patient64541/study1/view1_frontal.jpg", "Frontal", "AP", {"No Finding": "1.0"})]


def test_one_frontal_image_per_study_and_lateral_only_counted(tmp_path):
    root = chexpert_folder(tmp_path, TRAIN, VALID)
    source = CheXpert(root)
    assert [s.study_id for s in source] == [
        "train/patient00001/study1",
        "train/patient00002/study1",
        "train/patient00002/study2",
        "valid/patient64541/study1",
    ]
    first, second, third, fourth = source.items
    assert first.patient_id == "patient00001" and first.label("edema") is True
    assert second.image_ref == "train/patient00002/study1/view2_frontal.jpg"  # the PA
    assert third.image_ref == "train/patient00002/study2/view1_frontal.jpg"  # other frontal
    assert fourth.label("no_finding") is True
    assert source.report.rows_read == 7
    assert source.report.skipped == {"lateral_only": 1}
    assert source.report.notes["tables"] == ["train.csv", "valid.csv"]
    assert source.report.notes["studies_with_several_frontal"] == 1
    assert source.report.uncertain_labels == 1
    image = source.load_image(second, "RGB")
    assert image.shape == (12, 14, 3)


def test_patient_hash_splits_agree_per_patient(tmp_path):
    source = CheXpert(chexpert_folder(tmp_path, TRAIN, VALID), split_seed=3)
    for s in source:
        assert source.split_of(s) == patient_split(s.patient_id, 3, (0.8, 0.1, 0.1))
    assert source.split_of(source.items[1]) == source.split_of(source.items[2])
    only_test = CheXpert(tmp_path / "CheXpert-v1.0", split_fractions=(0, 0, 1))
    assert only_test.split_counts() == {"train": 0, "val": 0, "test": 4}


def test_root_may_be_the_parent_or_a_renamed_copy(tmp_path):
    root = chexpert_folder(tmp_path / "a", TRAIN, VALID)
    want = [(s.study_id, s.image_ref) for s in CheXpert(root)]
    assert [(s.study_id, s.image_ref) for s in CheXpert(root.parent)] == want
    renamed = chexpert_folder(tmp_path / "b", TRAIN, VALID, name="chexpert_copy")
    source = CheXpert(renamed)
    assert [(s.study_id, s.image_ref) for s in source] == want
    assert source.load_image(source.items[0]).shape == (12, 14)
    small = chexpert_folder(
        tmp_path / "c", TRAIN, name="CheXpert-v1.0-small", prefix="CheXpert-v1.0-small"
    )
    assert [s.image_ref for s in CheXpert(small.parent)] == [i for _, i in want[:3]]
    with pytest.raises(DataError, match=r"no train\.csv or valid\.csv"):
        CheXpert(tmp_path)


def test_files_option_reads_only_the_named_tables(tmp_path):
    root = chexpert_folder(tmp_path, TRAIN, VALID)
    source = CheXpert(root, files=("valid.csv",))
    assert [s.study_id for s in source] == ["valid/patient64541/study1"]
    with pytest.raises(DataError, match=r"no test\.csv"):
        CheXpert(root, files=("test.csv",))
    with pytest.raises(ConfigError, match="files"):
        CheXpert(root, files=())


def test_all_frontal_and_uncertain_policy(tmp_path):
    root = chexpert_folder(tmp_path, TRAIN)
    source = CheXpert(root, all_frontal=True, uncertain="present")
    assert [s.study_id for s in source] == [
        "train/patient00001/study1/view1_frontal",
        "train/patient00002/study1/view2_frontal",
        "train/patient00002/study1/view1_frontal",
        "train/patient00002/study2/view1_frontal",
    ]
    assert source.items[1].label("cardiomegaly") is True
    assert CheXpert(root, uncertain="absent").items[1].label("cardiomegaly") is False
    assert CheXpert(root).items[1].label("cardiomegaly") is None


def test_reports_csv_joins_by_image_path(tmp_path):
    root = chexpert_folder(tmp_path, TRAIN, VALID)
    reports = tmp_path / "df_chexpert_plus.csv"
    lines = [
        "path_to_image,split,section_findings,section_impression",
        'train/patient00001/study1/view2_lateral.jpg,train,"Mild interstitial edema",'
        '"Edema, improved"',
        "train/patient00002/study1/view2_frontal.jpg,train,,Enlarged heart.",
        "valid/patient64541/study1/view1_frontal.jpg,valid,,",
    ]
    write_text(reports, "\n".join(lines) + "\n", bom=True, crlf=True)
    source = CheXpert(root, reports_csv=reports)
    assert [s.report for s in source] == [
        "Mild interstitial edema. Edema, improved.",  # from the study's lateral row
        "Enlarged heart.",
        None,
        None,
    ]
    assert source.report.notes["reports_from_another_view"] == 1
    assert source.report.notes["studies_with_report"] == 2
    assert [s.report for s in CheXpert(root)] == [None] * 4
    write_text(reports, "path_to_image,section_findings\nx,y\n")
    with pytest.raises(DataFormatError, match="lacks column"):
        CheXpert(root, reports_csv=reports)


def test_duplicate_path_bad_view_bad_label_and_bad_path(tmp_path):
    rows = [
        *TRAIN,
        TRAIN[0],  # a duplicate Path
        ("patient00004/study1/view1_frontal.jpg", "Oblique", "AP", {}),
        ("patient00005/study1/view1_frontal.jpg", "Frontal", "PA", {"Edema": "yes"}),
    ]
    root = chexpert_folder(tmp_path, rows)
    with pytest.raises(DataFormatError) as info:
        CheXpert(root)
    assert info.value.reason == "duplicate_id" and "train.csv, line 8" in str(info.value)
    source = CheXpert(root, skip_bad=True)
    assert source.report.skipped == {
        "duplicate_id": 1,
        "bad_view": 1,
        "bad_label": 1,
        "lateral_only": 1,
    }
    assert any("Frontal/Lateral 'oblique'" in e for e in source.report.first_errors)
    assert len(source) == 3
    bad = tmp_path / "b" / "CheXpert-v1.0"
    write_text(
        bad / "train.csv",
        "\n".join(
            [
                CHEXPERT_HEADER,
                chexpert_row("CheXpert-v1.0/train/patient00001/view1.jpg", "Frontal", "PA", {}),
            ]
        )
        + "\n",
    )
    with pytest.raises(DataFormatError, match="not <split>/patientNNNNN/studyN") as info:
        CheXpert(bad)
    assert info.value.reason == "bad_id"


def test_missing_and_unreadable_images(tmp_path):
    missing = [TRAIN[0][0]]
    root = chexpert_folder(tmp_path, TRAIN, VALID, missing=missing, gz=True)
    with pytest.raises(DataFormatError, match="image file not found") as info:
        CheXpert(root)
    assert info.value.reason == "missing_image" and "train.csv.gz, line 2" in str(info.value)
    with pytest.raises(DataError, match="1 of 4 images"):
        CheXpert(root, skip_bad=True)
    assert len(CheXpert(root, skip_bad=True, max_missing=0.25)) == 3
    (root / "valid" / VALID[0][0]).write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match="2 of 4 images"):
        CheXpert(root, skip_bad=True, max_missing=0.25)
    source = CheXpert(root, skip_bad=True, max_missing=0.5)
    assert source.report.skipped["unreadable_image"] == 1
