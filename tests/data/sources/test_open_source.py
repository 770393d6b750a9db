"""open_source: layout detection, option checks, the lazy phantom-world reader."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from mechtune.data import sources
from mechtune.data.sources import (
    CheXpert,
    Manifest,
    MimicCxrJpg,
    detect_layout,
    open_source,
    reader_class,
)
from mechtune.errors import ConfigError, DataError

from .builders import basic_mimic, chexpert_folder, write_image, write_text

TRAIN = [("patient00001/study1/view1_frontal.jpg", "Frontal", "PA", {"Edema": "1.0"})]


def test_each_layout_is_detected_and_opened(tmp_path):
    mimic = basic_mimic(tmp_path / "mimic", gz=True)
    assert detect_layout(mimic) == "mimic-cxr-jpg"
    source = open_source(mimic, uncertain="present", all_frontal=True)
    assert isinstance(source, MimicCxrJpg) and len(source) == 5
    assert source.items[0].label("edema") is True  # the options reach the reader

    chexpert = chexpert_folder(tmp_path / "chex", TRAIN, gz=True)
    assert detect_layout(chexpert) == detect_layout(chexpert.parent) == "chexpert"
    assert isinstance(open_source(chexpert.parent), CheXpert)

    write_image(tmp_path / "m" / "a.png")
    for name in ("manifest.csv", "manifest.jsonl"):
        text = (
            "image,patient_id,study_id,Edema\na.png,p,s,1\n"
            if name.endswith("csv")
            else json.dumps({"image": "a.png", "patient_id": "p", "study_id": "s", "Edema": 1})
        )
        path = write_text(tmp_path / "m" / name, text, gz=True)
        assert detect_layout(path) == "manifest"
        assert open_source(path, split_seed=4).items[0].label("edema") is True
    assert isinstance(open_source(path), Manifest)


def test_unknown_layout_and_missing_path_name_what_was_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"unknown data layout; looked for a manifest file"):
        detect_layout(tmp_path)
    with pytest.raises(DataError, match=r"notes\.txt: unknown data layout"):
        open_source(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="no such file or folder"):
        open_source(tmp_path / "absent")
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "polarity"}))
    with pytest.raises(DataError, match="phantom world folder"):
        detect_layout(tmp_path)


def test_options_a_layout_does_not_take_are_config_errors(tmp_path):
    chexpert = chexpert_folder(tmp_path, TRAIN)
    with pytest.raises(ConfigError, match=r"chexpert reader does not take option\(s\) labels"):
        open_source(chexpert, labels="negbio")
    write_image(tmp_path / "a.png")
    path = write_text(tmp_path / "m.csv", "image,patient_id,study_id,Edema\na.png,p,s,1\n")
    with pytest.raises(ConfigError, match="all_frontal, reports_root; it takes uncertain"):
        open_source(path, all_frontal=True, reports_root=tmp_path)
    with pytest.raises(ConfigError, match="layout must be one of"):
        reader_class("dicom")


def test_world_folders_go_to_the_lazy_phantom_reader(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "world"}))
    assert detect_layout(tmp_path) == "world"
    assert sources.LAZY_READERS["world"] == "mechtune.sim.source:PhantomWorldSource"
    if importlib.util.find_spec("mechtune.sim.source") is None:
        with pytest.raises(DataError, match="cannot be loaded"):
            reader_class("world")
        pytest.skip("mechtune.sim.source is not on this branch yet")
    cls = reader_class("world")
    assert cls.__name__ == "PhantomWorldSource"


def test_importing_the_data_layer_does_not_import_the_phantom_world():
    code = (
        "import sys, mechtune.data, mechtune.data.sources; "
        "print(any(m.startswith('mechtune.sim') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
