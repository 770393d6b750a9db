"""The MIMIC-CXR-JPG reader on hand-made dirty folders, and report_sections."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from mechtune.data.importers import DataFormatError
from mechtune.data.sources import MimicCxrJpg, report_sections
from mechtune.data.splits import patient_split
from mechtune.errors import ConfigError, DataError

from .builders import (
    LABELS,
    REPORT,
    MimicStudy,
    basic_mimic,
    label_fields,
    mimic_folder,
    write_text,
)

META = "mimic-cxr-2.0.0-metadata.csv"


def test_items_follow_the_label_table_with_one_frontal_image_per_study(tmp_path):
    source = MimicCxrJpg(basic_mimic(tmp_path))
    ids = [s.study_id for s in source]
    assert ids == ["50414267", "53189527", "52000001"]
    first, second, third = source.items
    assert first.patient_id == second.patient_id == "10000032"
    # A PA beats an AP whose dicom_id sorts first; among APs the first dicom_id wins.
    assert first.image_ref == "files/p10/p10000032/s50414267/b-pa.jpg"
    assert second.image_ref == "files/p10/p10000032/s53189527/y-ap.jpg"
    assert third.image_ref == "files/p11/p11000011/s52000001/d-pa.jpg"
    assert first.label("pleural_effusion") is True
    assert first.label("cardiomegaly") is False
    assert first.label("edema") is None  # -1.0 under the default "skip" policy
    assert first.report == "Small left pleural effusion. Effusion, no edema."
    assert second.report == "No acute process."
    assert third.report is None  # no report file
    report = source.report
    # lateral-only, label row without images, metadata study without label row: counted.
    assert report.skipped == {"lateral_only": 1, "no_images": 1, "no_label_row": 1}
    assert report.rows_read == 5 and report.items == 3
    assert report.uncertain_labels == 1
    assert report.notes["studies_with_report"] == 2
    assert report.notes["studies_with_several_frontal"] == 2
    assert report.notes["views"] == {"AP": 3, "LATERAL": 1, "LL": 1, "PA": 3}
    assert any("52000002" in e and "no PA or AP" in e for e in report.first_errors)


def test_official_split_maps_validate_to_val_and_patients_stay_together(tmp_path):
    source = MimicCxrJpg(basic_mimic(tmp_path))
    assert [source.split_of(s) for s in source] == ["train", "train", "val"]
    assert source.split_counts() == {"train": 2, "val": 1, "test": 0}
    assert [s.study_id for s in source.split("val")] == ["52000001"]
    assert source.report.notes["split"].startswith("official")


def test_patient_hash_splits_without_a_split_file(tmp_path):
    studies = [
        MimicStudy(f"1{p:07d}", f"5{p:03d}{k:04d}", {"Edema": "1.0"}, [(f"d{p}-{k}", "PA")])
        for p in range(30)
        for k in range(2)
    ]
    root = mimic_folder(tmp_path, studies, split_file=False)
    by_seed = {}
    for seed in (0, 1):
        source = MimicCxrJpg(root, split_seed=seed)
        splits = {s.study_id: source.split_of(s) for s in source}
        for s in source:
            assert splits[s.study_id] == patient_split(s.patient_id, seed, (0.8, 0.1, 0.1))
        by_patient = {}
        for s in source:
            by_patient.setdefault(s.patient_id, set()).add(splits[s.study_id])
        assert all(len(v) == 1 for v in by_patient.values())
        by_seed[seed] = splits
    assert by_seed[0] != by_seed[1]  # split_seed reaches the hash
    all_train = MimicCxrJpg(root, split_fractions=(1.0, 0.0, 0.0))
    assert all_train.split_counts() == {"train": 60, "val": 0, "test": 0}


def test_all_frontal_keeps_every_frontal_image_sharing_the_study(tmp_path):
    source = MimicCxrJpg(basic_mimic(tmp_path), all_frontal=True)
    assert [s.study_id for s in source] == [
        "50414267/b-pa",
        "50414267/a-ap",
        "53189527/y-ap",
        "53189527/z-ap",
        "52000001/d-pa",
    ]
    a, b = source.items[:2]
    assert a.findings == b.findings and a.report == b.report and a.image_ref != b.image_ref
    assert source.report.uncertain_labels == 1  # counted once per study
    assert source.report.notes["studies_with_report"] == 2  # 4 items, 2 studies


def test_negbio_labels_and_uncertain_policy(tmp_path):
    root = basic_mimic(tmp_path)
    negbio = [",".join(["subject_id", "study_id", *LABELS])]
    negbio += [
        ",".join(["10000032", "50414267", *label_fields({"Edema": "-1.0"})]),
        ",".join(["10000032", "53189527", *label_fields({"Fracture": "1.0"})]),
        ",".join(["11000011", "52000001", *label_fields({})]),
    ]
    write_text(root / "mimic-cxr-2.0.0-negbio.csv", "\n".join(negbio) + "\n")
    chexpert = MimicCxrJpg(root)
    nb = MimicCxrJpg(root, labels="negbio")
    assert nb.report.notes["labels"] == "mimic-cxr-2.0.0-negbio.csv"
    assert nb.items[1].label("fracture") is True and chexpert.items[1].label("fracture") is None
    for policy, expected in (("skip", None), ("present", True), ("absent", False)):
        source = MimicCxrJpg(root, labels="negbio", uncertain=policy)
        assert source.items[0].label("edema") is expected
        assert source.report.uncertain_policy == policy
    with pytest.raises(ConfigError, match="labels must be one of"):
        MimicCxrJpg(root, labels="chexbert")
    with pytest.raises(ConfigError, match="uncertain"):
        MimicCxrJpg(root, uncertain="maybe")


def test_bom_crlf_and_plain_tables_read_the_same(tmp_path):
    want = [(s.study_id, s.image_ref, s.findings) for s in MimicCxrJpg(basic_mimic(tmp_path / "a"))]
    for i, opts in enumerate(
        ({"gz": False}, {"bom": True, "crlf": True}, {"gz": False, "bom": True})
    ):
        source = MimicCxrJpg(basic_mimic(tmp_path / str(i), **opts))
        assert [(s.study_id, s.image_ref, s.findings) for s in source] == want


def test_load_image_modes_and_pil(tmp_path):
    source = MimicCxrJpg(basic_mimic(tmp_path))
    study = source.items[0]
    grey, rgb = source.load_image(study), source.load_image(study, "RGB")
    assert grey.shape == (12, 14) and grey.dtype == np.uint8
    assert rgb.shape == (12, 14, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == grey).all()
    pil = source.load_pil(study)
    assert pil.mode == "RGB" and pil.size == (14, 12)
    assert source.load_pil(study, "L").mode == "L"
    assert len(source.load_images(source.items)) == 3
    with pytest.raises(ConfigError, match="image mode"):
        source.load_image(study, "CMYK")


def test_png_images_and_image_ext(tmp_path):
    root = basic_mimic(tmp_path, ext="png")
    assert MimicCxrJpg(root).items[0].image_ref.endswith("b-pa.png")
    with pytest.raises(DataFormatError, match="image file not found") as info:
        MimicCxrJpg(root, image_ext=("jpg",))
    assert info.value.reason == "missing_image"


def test_reports_root_and_reports_off(tmp_path):
    root = basic_mimic(tmp_path / "jpg")
    other = tmp_path / "reports"
    write_text(other / "files/p10/p10000032/s50414267.txt", "FINDINGS: Large right pneumothorax.")
    assert MimicCxrJpg(root, reports_root=other).items[0].report == "Large right pneumothorax."
    assert MimicCxrJpg(root, reports_root=other).items[1].report is None
    off = MimicCxrJpg(root, reports=False)
    assert [s.report for s in off] == [None, None, None]
    assert off.report.notes["studies_with_report"] == 0


def test_missing_tables_fail_naming_the_file(tmp_path):
    root = basic_mimic(tmp_path)
    (root / f"{META}.gz").unlink()
    with pytest.raises(DataError, match=r"no mimic-cxr-2\.0\.0-metadata\.csv or .*\.gz"):
        MimicCxrJpg(root)
    with pytest.raises(DataError, match=r"no mimic-cxr-2\.0\.0-negbio\.csv"):
        MimicCxrJpg(basic_mimic(tmp_path / "b"), labels="negbio")


def _extra(subject, study, **labels):
    return ",".join([subject, study, *label_fields(labels)])


def test_duplicate_label_row_errors_or_is_counted(tmp_path):
    root = basic_mimic(tmp_path, extra_label_rows=[_extra("11000011", "52000001")])
    with pytest.raises(DataFormatError) as info:
        MimicCxrJpg(root)
    err = info.value
    assert err.reason == "duplicate_id" and err.row == 7 and err.value == "52000001"
    assert "chexpert.csv.gz, line 7" in str(err)
    source = MimicCxrJpg(root, skip_bad=True)
    assert source.report.skipped["duplicate_id"] == 1 and len(source) == 3


def test_duplicate_dicom_in_metadata_errors_or_is_counted(tmp_path):
    dup = "d-pa,11000011,52000001,CHEST,PA,12,14"
    root = basic_mimic(tmp_path, extra_meta_rows=[dup])
    with pytest.raises(DataFormatError, match=r"metadata\.csv\.gz, line 10, column 'dicom_id'"):
        MimicCxrJpg(root)
    source = MimicCxrJpg(root, skip_bad=True)
    assert source.report.skipped["duplicate_id"] == 1 and len(source) == 3


def test_label_outside_the_four_values_names_file_row_and_value(tmp_path):
    root = basic_mimic(tmp_path, extra_label_rows=[_extra("13000013", "52000003", Edema="2.0")])
    with pytest.raises(DataFormatError) as info:
        MimicCxrJpg(root)
    assert info.value.reason == "bad_label" and info.value.column == "Edema"
    assert "line 7" in str(info.value) and "'2.0'" in str(info.value)
    source = MimicCxrJpg(root, skip_bad=True)
    assert source.report.skipped["bad_label"] == 1
    assert source.report.skipped["no_label_row"] == 1  # its metadata study, as documented


def test_subject_mismatch_between_tables_is_an_error(tmp_path):
    root = basic_mimic(tmp_path, extra_label_rows=[_extra("19999999", "52000003")])
    with pytest.raises(DataFormatError, match="has subject 13000013") as info:
        MimicCxrJpg(root)
    assert info.value.reason == "inconsistent_id"


def _image(root, study, dicom):
    return next(root.glob(f"files/*/*/s{study}/{dicom}.jpg"))


def test_missing_and_unreadable_images(tmp_path):
    root = basic_mimic(tmp_path)
    _image(root, "52000001", "d-pa").unlink()
    with pytest.raises(DataFormatError) as info:
        MimicCxrJpg(root)
    assert info.value.reason == "missing_image" and "d-pa.jpg" in str(info.value)
    assert "chexpert.csv.gz, line 4" in str(info.value)
    # skip_bad counts it, but 1 of 3 images is above any small max_missing.
    with pytest.raises(DataError, match="1 of 3 images are missing or unreadable"):
        MimicCxrJpg(root, skip_bad=True)
    source = MimicCxrJpg(root, skip_bad=True, max_missing=0.5)
    assert source.report.skipped["missing_image"] == 1 and len(source) == 2
    _image(root, "53189527", "y-ap").write_bytes(b"this is no jpeg at all")
    with pytest.raises(DataFormatError, match="not a readable image") as info:
        MimicCxrJpg(root, max_missing=0.9)
    assert info.value.reason == "unreadable_image" and "y-ap.jpg" in str(info.value)
    source = MimicCxrJpg(root, skip_bad=True, max_missing=0.7)
    assert source.report.skipped == {
        "lateral_only": 1,
        "no_images": 1,
        "no_label_row": 1,
        "missing_image": 1,
        "unreadable_image": 1,
    }


def test_an_image_broken_after_the_scan_fails_on_load_naming_the_file(tmp_path):
    root = basic_mimic(tmp_path)
    source = MimicCxrJpg(root)
    path = _image(root, "50414267", "b-pa")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a valid header, a truncated body
    with pytest.raises(DataError, match=r"b-pa\.jpg: unreadable image"):
        source.load_image(source.items[0])
    path.unlink()
    with pytest.raises(DataError, match=r"b-pa\.jpg: image file not found"):
        source.load_image(source.items[0])
    foreign = source.items[0].__class__("x", "y", ())
    with pytest.raises(DataError, match="not an item of this source"):
        source.split_of(foreign)


def test_split_conflicts(tmp_path):
    # Two images of one study in different splits.
    study = MimicStudy("11000011", "52000001", {}, [("d1", "PA"), ("d2", "AP")])
    study.splits = {"d2": "test"}
    other = MimicStudy("12000012", "52000002", {}, [("e1", "PA")])
    root = mimic_folder(tmp_path / "a", [study, other])
    with pytest.raises(DataFormatError, match="dicom d2 is in split 'test'") as info:
        MimicCxrJpg(root)
    assert info.value.reason == "split_conflict" and "split.csv.gz, line 3" in str(info.value)
    assert [s.study_id for s in MimicCxrJpg(root, skip_bad=True)] == ["52000002"]
    # One patient's two studies in different splits.
    a = MimicStudy("11000011", "52000001", {}, [("d1", "PA")])
    b = MimicStudy("11000011", "52000009", {}, [("d9", "PA")], split="test")
    root = mimic_folder(tmp_path / "b", [a, b, other])
    with pytest.raises(DataFormatError, match="patient '11000011' is in split 'test'"):
        MimicCxrJpg(root)
    skipped = MimicCxrJpg(root, skip_bad=True)
    assert [s.study_id for s in skipped] == ["52000001", "52000002"]
    assert skipped.report.skipped == {"split_conflict": 1}


def test_bad_split_value_and_missing_split_row(tmp_path):
    a = MimicStudy("11000011", "52000001", {}, [("d1", "PA")], split="holdout")
    b = MimicStudy("12000012", "52000002", {}, [("e1", "PA")])
    root = mimic_folder(tmp_path, [a, b])
    with pytest.raises(DataFormatError, match="split 'holdout' is not one of") as info:
        MimicCxrJpg(root)
    assert info.value.reason == "bad_split"
    source = MimicCxrJpg(root, skip_bad=True)
    assert source.report.skipped == {"bad_split": 1, "no_split_row": 1}
    assert [s.study_id for s in source] == ["52000002"]


def test_empty_result_and_bad_options(tmp_path):
    root = mimic_folder(tmp_path, [MimicStudy("11000011", "52000001", {}, [("d1", "LATERAL")])])
    with pytest.raises(DataError, match="no items left"):
        MimicCxrJpg(root)
    with pytest.raises(ConfigError, match="max_missing"):
        MimicCxrJpg(root, max_missing=2)
    with pytest.raises(ConfigError, match="split_fractions"):
        MimicCxrJpg(root, split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="image_ext"):
        MimicCxrJpg(root, image_ext=())
    with pytest.raises(DataError, match="not a folder"):
        MimicCxrJpg(tmp_path / "nowhere")


def test_gzip_table_with_a_non_utf8_byte_names_the_line(tmp_path):
    root = basic_mimic(tmp_path)
    path = root / f"{META}.gz"
    lines = gzip.decompress(path.read_bytes()).split(b"\n")
    lines[2] = lines[2].replace(b"CHEST", b"CH\xffST")
    path.write_bytes(gzip.compress(b"\n".join(lines)))
    with pytest.raises(DataFormatError, match="line 3: not UTF-8"):
        MimicCxrJpg(root)


# -- report_sections ----------------------------------------------------------------------

FULL = (
    REPORT.format(
        findings="There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral\n"
        " nodular opacities most likely represent nipple shadows.",
        impression="No acute cardiopulmonary process",
    )
    + "\n NOTIFICATION:  Dr. ___ was paged at 10:15 am.\n"
)

NO_HEADERS = """                                 FINAL REPORT
 HISTORY:  Status post chest tube removal.

 Single portable view of the chest is compared to previous exam from ___. There
 has been interval removal of the left chest tube.  No pneumothorax is seen.
"""

WET_READ = """WET READ: ___ ___ 10:15 PM
  No PTX. Small effusions.
 ______________________________________________________________________________
                                 FINAL REPORT
 INDICATION:  Cough.

 COMPARISON:  ___.

 IMPRESSION:  Small bilateral pleural effusions, unchanged.
"""

FINDINGS_AND_IMPRESSION = """EXAMINATION: CHEST (PORTABLE AP)
INDICATION: Intubated.
FINDINGS AND IMPRESSION: Endotracheal tube terminates 4 cm above the carina.
Heart size: normal.
RECOMMENDATION(S): None.
"""

TITLE_CASE = "Findings:\n  Mild pulmonary edema.\nImpression:\n  Edema.\nComparison: none"


@pytest.mark.parametrize(
    "text,expected",
    [
        (
            FULL,
            "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral "
            "nodular opacities most likely represent nipple shadows. No acute "
            "cardiopulmonary process.",
        ),
        (
            NO_HEADERS,
            "Single portable view of the chest is compared to previous exam from ___. There "
            "has been interval removal of the left chest tube. No pneumothorax is seen.",
        ),
        (WET_READ, "Small bilateral pleural effusions, unchanged."),
        (
            FINDINGS_AND_IMPRESSION,
            "Endotracheal tube terminates 4 cm above the carina. Heart size: normal.",
        ),
        (TITLE_CASE, "Mild pulmonary edema. Edema."),
        ("IMPRESSION\n  No acute process.\r\n", "No acute process."),
        ("No acute process", "No acute process."),
        ("FINAL REPORT\n INDICATION: cough\n\n COMPARISON: none\n", None),
        ("", None),
    ],
)
def test_report_sections(text, expected):
    assert report_sections(text) == expected


def test_report_sections_puts_findings_before_impression():
    text = "IMPRESSION: Pneumonia.\nFINDINGS: Right lower lobe opacity.\n"
    assert report_sections(text) == "Right lower lobe opacity. Pneumonia."


def test_non_utf8_report_errors_or_is_counted(tmp_path):
    root = basic_mimic(tmp_path)
    next(root.glob("files/*/*/s53189527.txt")).write_bytes(b"IMPRESSION: caf\xe9")
    with pytest.raises(DataFormatError, match="not UTF-8") as info:
        MimicCxrJpg(root)
    assert info.value.reason == "bad_report"
    assert MimicCxrJpg(root, skip_bad=True).report.skipped["bad_report"] == 1


def test_metadata_bad_ids_and_a_study_under_two_subjects(tmp_path):
    rows = ["x1,1100001A,52000001,CHEST,PA,12,14", "x2,19999999,52000001,CHEST,PA,12,14"]
    root = basic_mimic(tmp_path, extra_meta_rows=rows)
    with pytest.raises(DataFormatError, match="id '1100001A' is not an integer") as info:
        MimicCxrJpg(root)
    assert info.value.reason == "bad_id" and info.value.column == "subject_id"
    source = MimicCxrJpg(root, skip_bad=True)
    assert source.report.skipped["bad_id"] == 1
    assert source.report.skipped["inconsistent_id"] == 1
    assert any(
        "under subject 19999999 here but under 11000011" in e for e in source.report.first_errors
    )


def test_split_file_row_naming_another_study_is_an_error(tmp_path):
    root = basic_mimic(tmp_path, gz=False)
    path = root / "mimic-cxr-2.0.0-split.csv"
    path.write_text(path.read_text().replace("d-pa,52000001", "d-pa,52000002"))
    with pytest.raises(DataFormatError, match="belongs to study 52000001") as info:
        MimicCxrJpg(root)
    assert info.value.reason == "inconsistent_id" and "split.csv, line" in str(info.value)
