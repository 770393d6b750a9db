"""The manifest reader: CSV and JSONL, 16-bit PNGs, views, splits, dirty rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mechtune.data.importers import DataFormatError
from mechtune.data.sources import Manifest
from mechtune.data.splits import patient_split
from mechtune.errors import ConfigError, DataError

from .builders import write_image, write_text

HEADER = "image,patient_id,study_id,view,Pleural Effusion,Edema,report"


def _manifest(tmp_path, *rows, header=HEADER, name="manifest.csv", images=True, **opts):
    for i, row in enumerate(rows):
        image = row.split(",")[0]
        if images and image and not image.startswith("/"):
            write_image(tmp_path / image, seed=i)
    return write_text(tmp_path / name, "\n".join([header, *rows]) + "\n", **opts)


ROWS = [
    "img/a.png,p1,s1,PA,1.0,,Small left effusion.",
    "img/b.png,p1,s2,AP,0,-1.0,",
    "img/c.png,p2,s3,,,1,",
    "img/d.png,p3,s4,LL,1.0,,",
]


def test_csv_rows_are_items_and_lateral_views_are_counted(tmp_path):
    path = _manifest(tmp_path, *ROWS, gz=True, bom=True, crlf=True)
    assert path.name == "manifest.csv.gz"
    source = Manifest(path)
    assert [s.study_id for s in source] == ["s1", "s2", "s3"]
    a, b, c = source.items
    assert a.label("pleural_effusion") is True and a.report == "Small left effusion."
    assert b.label("pleural_effusion") is False and b.label("edema") is None and b.report is None
    assert c.label("edema") is True and c.label("pleural_effusion") is None
    assert a.image_ref == "img/a.png" and source.load_image(a).shape == (12, 14)
    assert source.report.skipped == {"lateral_only": 1}
    assert source.report.rows_read == 4 and source.report.uncertain_labels == 1
    assert source.report.notes["label_columns"] == ["Pleural Effusion", "Edema"]
    assert Manifest(path, uncertain="present").items[1].label("edema") is True
    for s in source:
        assert source.split_of(s) == patient_split(s.patient_id, 0, (0.8, 0.1, 0.1))


def test_jsonl_with_numeric_labels_and_absolute_paths(tmp_path):
    absolute = write_image(tmp_path / "elsewhere" / "x.png", seed=5)
    write_image(tmp_path / "m" / "y.png", seed=6)
    records = [
        {"image": str(absolute), "patient_id": 7, "study_id": 70, "Edema": 1.0, "Fracture": None},
        {"image": "y.png", "patient_id": "8", "study_id": "80", "Edema": -1, "Fracture": 0},
    ]
    path = tmp_path / "m" / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    source = Manifest(path, uncertain="absent")
    first, second = source.items
    assert (first.study_id, first.patient_id) == ("70", "7")
    assert first.image_ref == absolute.as_posix() and first.label("edema") is True
    assert first.label("fracture") is None
    assert second.label("edema") is False and second.label("fracture") is False
    assert source.load_image(first).shape == (12, 14)
    bad = tmp_path / "m" / "bad.jsonl"
    bad.write_text(json.dumps({**records[1], "Edema": 0.5}) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad\.jsonl, line 1, column 'Edema'.*'0\.5'"):
        Manifest(bad)
    bad.write_text(json.dumps({**records[1], "Edema": True}) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="'True'"):
        Manifest(bad)
    bad.write_text(json.dumps({**records[1], "pleural": 1}) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="unknown key 'pleural'"):
        Manifest(bad)
    bad.write_text(json.dumps(records[1]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="line 2: invalid JSON"):
        Manifest(bad)
    assert Manifest(bad, skip_bad=True).report.skipped == {"malformed": 1}


def test_sixteen_bit_png_is_windowed_by_its_own_range(tmp_path):
    values = np.linspace(1000, 40000, 16 * 16).reshape(16, 16).astype(np.uint16)
    image = tmp_path / "padchest" / "16bit.png"
    image.parent.mkdir()
    Image.fromarray(values).save(image)
    with Image.open(image) as check:
        assert check.mode.startswith("I")  # really stored as 16-bit
    path = _manifest(tmp_path, "padchest/16bit.png,p1,s1,PA,1.0,,", images=False)
    source = Manifest(path)
    grey = source.load_image(source.items[0])
    assert grey.dtype == np.uint8 and grey.shape == (16, 16)
    assert grey.min() == 0 and grey.max() == 255  # min -> 0, max -> 255
    expected = np.rint((values - 1000.0) * 255.0 / 39000.0).astype(np.uint8)
    np.testing.assert_array_equal(grey, expected)  # linear, nothing clipped
    rgb = source.load_image(source.items[0], "RGB")
    assert rgb.shape == (16, 16, 3) and (rgb[..., 2] == grey).all()


def test_split_column(tmp_path):
    header = "image,patient_id,study_id,split,Edema"
    rows = ["a.png,p1,s1,validate,1", "b.png,p1,s2,val,0", "c.png,p2,s3,test,"]
    source = Manifest(_manifest(tmp_path, *rows, header=header))
    assert [source.split_of(s) for s in source] == ["val", "val", "test"]
    assert source.report.notes["split"] == "split column"
    conflict = _manifest(tmp_path, *rows, "d.png,p2,s4,train,1", header=header, name="c.csv")
    with pytest.raises(DataFormatError, match="patient 'p2' is in split 'train'") as info:
        Manifest(conflict)
    assert "c.csv, line 5" in str(info.value) and "line 4" in str(info.value)
    assert Manifest(conflict, skip_bad=True).report.skipped == {"split_conflict": 1}
    blank = _manifest(tmp_path, "a.png,p1,s1,,1", header=header, name="blank.csv")
    with pytest.raises(DataFormatError, match="split '' is not one of") as info:
        Manifest(blank)
    assert info.value.reason == "bad_split"


def test_duplicate_rows_bad_labels_and_missing_fields(tmp_path):
    rows = [*ROWS, ROWS[0], "img/e.png,p4,s5,PA,2,,", "img/f.png,,s6,PA,1,,", ",p5,s7,PA,1,,"]
    path = _manifest(tmp_path, *rows)
    with pytest.raises(DataFormatError) as info:
        Manifest(path)
    assert info.value.reason == "duplicate_id" and "line 6, column 'study_id'" in str(info.value)
    assert "first at line 2" in str(info.value)
    source = Manifest(path, skip_bad=True)
    assert source.report.skipped == {
        "lateral_only": 1,
        "duplicate_id": 1,
        "bad_label": 1,
        "bad_id": 1,
        "malformed": 1,
    }
    assert len(source) == 3
    short = _manifest(tmp_path, "img/a.png,p1", name="short.csv")
    with pytest.raises(DataFormatError, match="expected 7 fields, got 2"):
        Manifest(short)


def test_missing_and_unreadable_images(tmp_path):
    path = _manifest(tmp_path, *ROWS)
    (tmp_path / "img" / "b.png").unlink()
    with pytest.raises(DataFormatError, match=r"image file not found: .*img/b\.png") as info:
        Manifest(path)
    assert "manifest.csv, line 3, column 'image'" in str(info.value)
    with pytest.raises(DataError, match="1 of 3 images"):
        Manifest(path, skip_bad=True, max_missing=0.2)
    assert len(Manifest(path, skip_bad=True, max_missing=0.4)) == 2
    write_image(tmp_path / "img" / "b.png")
    (tmp_path / "img" / "c.png").write_bytes(b"GIF89a but not really")
    with pytest.raises(DataFormatError, match="not a readable image") as info:
        Manifest(path, max_missing=0.9)
    assert info.value.reason == "unreadable_image"
    with pytest.raises(DataError, match="no items left"):
        Manifest(_manifest(tmp_path, "img/d.png,p3,s4,lateral,1.0,,", name="lat.csv"))


def test_headers_need_ids_and_labels_or_a_report(tmp_path):
    with pytest.raises(DataFormatError, match="unknown condition column 'Efusion'"):
        Manifest(_manifest(tmp_path, "a.png,p,s,1", header="image,patient_id,study_id,Efusion"))
    with pytest.raises(DataFormatError, match=r"lacks column.*patient_id"):
        Manifest(_manifest(tmp_path, "a.png,s,1", header="image,study_id,Edema", name="b.csv"))
    with pytest.raises(DataFormatError, match="neither a condition column nor a report"):
        Manifest(_manifest(tmp_path, "a.png,p,s", header="image,patient_id,study_id", name="c.csv"))
    reports_only = _manifest(
        tmp_path, "a.png,p,s,No effusion.", header="image,patient_id,study_id,report", name="d.csv"
    )
    source = Manifest(reports_only)
    assert source.items[0].findings == () and source.items[0].report == "No effusion."
    with pytest.raises(DataError, match=r"a manifest is \.csv"):
        Manifest(tmp_path / "x.parquet")
    with pytest.raises(DataError, match="manifest file not found"):
        Manifest(tmp_path / "x.csv")
    with pytest.raises(ConfigError, match="uncertain"):
        Manifest(reports_only, uncertain="ones")
