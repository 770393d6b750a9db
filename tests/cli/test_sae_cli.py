"""`mechtune sae train|analyze` on the tiny random Gemma 3 (question files with image paths)
and on the phantom VQA model (the questions of a saved world read as an image-study source,
built here with the sim API)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from mechtune.cli.main import app
from mechtune.errors import ConfigError, DataError
from mechtune.interp.sae import load_sae
from tests.pipelines.test_questions import needs_split_field
from tests.tiny_gemma import TEXT_LAYERS, tiny_gemma

runner = CliRunner()

RECORDS = [
    ("Is there edema?", ["Any edema?", "Is edema present?"], "yes", "a.png"),
    ("Is there an effusion?", ["Any effusion?", "Is an effusion seen?"], "no", "b.png"),
    ("Is the heart enlarged?", ["Is there cardiomegaly?"], "yes", "c.png"),
    ("Is there a pneumothorax?", ["Any pneumothorax?", "Is a pneumothorax seen?"], "no", "a.png"),
]


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return tiny_gemma(tmp_path_factory.mktemp("tiny_gemma"))


def write_questions(folder):
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / name)
    path = folder / "questions.jsonl"
    lines = [
        json.dumps({"question": q, "paraphrases": p, "answer": a, "image": img})
        for q, p, a, img in RECORDS
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def questions(tmp_path):
    return write_questions(tmp_path)


@pytest.fixture(scope="module")
def shared_questions(tmp_path_factory):
    """Questions that no test changes, shared by the tests of one module."""
    return write_questions(tmp_path_factory.mktemp("questions"))


def _train(gemma_dir, questions, out, *extra):
    args = ["sae", "train", "--model", f"hf:{gemma_dir}", "--questions", str(questions)]
    args += ["--out", str(out), "--width", "16", "--k", "4", "--steps", "5", *extra]
    return runner.invoke(app, args)


def test_sae_train_on_gemma_writes_saelens_saes_and_stats(gemma_dir, questions, tmp_path):
    out = tmp_path / "saes"
    result = _train(gemma_dir, questions, out, "--layers", "0,2")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["layers"]) == {"0", "2"}
    # readout = the answer position: one token per distinct (image, text) pair
    assert all(r["tokens"] == 4 + 7 for r in report["layers"].values())
    assert all(np.isfinite(r["r2"]) and r["l0"] <= 4 for r in report["layers"].values())
    assert report["images"]["distinct"] == 3
    sae = load_sae(out / "layer_2")
    hidden = json.loads((gemma_dir / "config.json").read_text())["text_config"]["hidden_size"]
    assert (sae.config.layer, sae.config.d_in, sae.config.d_sae) == (2, hidden, 16)
    assert sorted(p.name for p in out.iterdir()) == ["layer_0", "layer_2", "report.json"]


def test_sae_analyze_on_gemma_reports_auc_per_layer_and_a_range(gemma_dir, questions, tmp_path):
    saes = tmp_path / "saes"
    assert _train(gemma_dir, questions, saes).exit_code == 0
    out = tmp_path / "analysis"
    args = ["sae", "analyze", "--model", f"hf:{gemma_dir}", "--questions", str(questions)]
    result = runner.invoke(
        app, [*args, "--saes", str(saes), "--out", str(out), "--auc-shuffles", "3"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "analysis.json").read_text())
    analysis = data["analysis"]
    assert analysis["layers"] == list(range(TEXT_LAYERS))
    # the shuffled-label control: printed and saved per layer
    assert "permutation p" in result.output
    assert set(analysis["auc_shuffled_by_layer"]) == {str(i) for i in range(TEXT_LAYERS)}
    assert {c["shuffles"] for c in analysis["auc_shuffled_by_layer"].values()} == {3}
    assert analysis["pairs"] == sum(len(p) for _, p, _, _ in RECORDS)
    assert len(analysis["chosen_layers"]) == 3  # peak +- 1 in a 3-layer model
    baseline = data["baseline"]["all"]
    assert baseline["groups"] == len(RECORDS)
    assert baseline["pairs"] == analysis["pairs"]
    assert 0 <= baseline["flip_rate"]["value"] <= 1 and baseline["na"] == {}
    assert (out / "auc_by_layer.png").stat().st_size > 0


def test_sae_train_names_the_question_and_the_missing_image(gemma_dir, questions, tmp_path):
    (questions.parent / "b.png").unlink()
    result = _train(gemma_dir, questions, tmp_path / "saes")
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert (
        "questions.jsonl" in output and "'q2'" in output
    )  # q<n>: the n-th record and "b.png" in output
    assert not (tmp_path / "saes").exists()


def test_sae_train_rejects_a_bad_model_spec_and_bad_layers(gemma_dir, questions, tmp_path):
    result = _train(tmp_path / "nowhere", questions, tmp_path / "saes")
    assert result.exit_code == 2 and "is not a folder" in " ".join(result.output.split())
    result = _train(gemma_dir, questions, tmp_path / "saes", "--layers", "0,7")
    assert result.exit_code == 2 and "layers 0..2" in " ".join(result.output.split())
    args = ["sae", "train", "--model", "clip:x", "--questions", str(questions)]
    args += ["--out", str(tmp_path / "s")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "bad yes/no VLM spec 'clip:x'" in result.output


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    from mechtune.sim.world import WorldConfig, make_world, save_world

    folder = tmp_path_factory.mktemp("world") / "world"
    save_world(make_world(WorldConfig.seeded(60, 1)), folder)
    return folder


def test_sae_train_and_analyze_on_the_phantom_vqa(tmp_path, world_dir):
    torch.manual_seed(0)
    saes, out = tmp_path / "saes", tmp_path / "analysis"
    data = ["--data", str(world_dir), "--seed", "1"]
    result = runner.invoke(
        app,
        ["sae", "train", "--out", str(saes), "--layers", "4,5", "--steps", "5", *data],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((saes / "report.json").read_text())
    assert report["model"] == "phantom:vqa" and report["corpus_texts"] > 0
    assert report["data"] == {"path": str(world_dir), "layout": "phantom-world", "items": 60}
    args = ["sae", "analyze", "--saes", str(saes), "--out", str(out), "--max-questions", "40"]
    result = runner.invoke(app, [*args, *data])
    assert result.exit_code == 0, result.output
    analysis = json.loads((out / "analysis.json").read_text())["analysis"]
    assert analysis["layers"] == [4, 5] and analysis["peak_layer"] in (4, 5)
    assert analysis["chosen_layers"] == [3, 4, 5]  # peak +- 1, shifted inside 0..5


def test_dtype_and_device_reach_the_model_load(gemma_dir, questions, tmp_path):
    """--dtype loads the weights in that dtype (the states the SAEs read follow); the
    report says what was loaded."""
    base = _train_run(gemma_dir, questions, tmp_path / "a", TRAIN_BASE)
    assert (base["report"]["dtype"], base["report"]["device"]) == ("float32", "cpu")
    half = _train_run(gemma_dir, questions, tmp_path / "b", [*TRAIN_BASE, "--dtype", "bfloat16"])
    assert half["report"]["dtype"] == "bfloat16"
    assert half["weights"] != base["weights"]
    result = _train(gemma_dir, questions, tmp_path / "c", "--dtype", "float8")
    assert result.exit_code == 2 and "dtype must be one of" in result.output
    result = _train(gemma_dir, questions, tmp_path / "d", "--device", "nosuch")
    assert result.exit_code != 0 and not (tmp_path / "d").exists()


# -- Gemma Scope 2 folders -------------------------------------------------------------------


def _hidden(gemma_dir) -> int:
    return json.loads((gemma_dir / "config.json").read_text())["text_config"]["hidden_size"]


def _gs2(root, name, d_in, *, seed=0, hook=None):
    """A Gemma Scope 2 style SAE folder: params.safetensors (no mechtune metadata) and, with
    ``hook``, a config.json naming the site as Gemma Scope 2 does."""
    g = torch.Generator().manual_seed(seed)
    folder = root / name
    folder.mkdir(parents=True)
    tensors = {
        "w_enc": torch.randn(d_in, 16, generator=g),
        "w_dec": torch.randn(16, d_in, generator=g),
        "b_enc": torch.randn(16, generator=g),
        "b_dec": torch.zeros(d_in),
        "threshold": torch.rand(16, generator=g),
    }
    save_file(tensors, folder / "params.safetensors")
    if hook is not None:
        config = {"hf_hook_point_in": hook, "width": 16, "l0": 5, "model_name": "tiny"}
        (folder / "config.json").write_text(json.dumps(config))
    return tensors


class _Stop(Exception):
    """Raised by a stand-in for analyse() once it has seen its arguments."""


@pytest.fixture
def captured(monkeypatch):
    """Replace analyse() with a recorder, so a test sees what `sae analyze` passes it."""
    seen = {}

    def record(vlm, images, pairs, saes, config, track=None):
        seen.update(pairs=pairs, saes=saes, config=config)
        raise _Stop

    monkeypatch.setattr("mechtune.interp.sae_analysis.analyse", record)
    return seen


def _analyze(gemma_dir, questions, saes, out, *extra):
    args = ["sae", "analyze", "--model", f"hf:{gemma_dir}", "--questions", str(questions)]
    return runner.invoke(app, [*args, "--saes", str(saes), "--out", str(out), *extra])


def test_sae_analyze_reads_gemma_scope_2_folder_names(gemma_dir, questions, tmp_path):
    root = tmp_path / "resid_post"
    for layer in range(TEXT_LAYERS):
        hook = f"model.layers.{layer}.output"
        _gs2(root, f"layer_{layer}_width_16_l0_small", _hidden(gemma_dir), seed=layer, hook=hook)
    out = tmp_path / "analysis"
    result = _analyze(gemma_dir, questions, root, out)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "analysis.json").read_text())
    assert data["analysis"]["layers"] == list(range(TEXT_LAYERS))
    assert sorted(p.name for p in root.iterdir())[0] == "layer_0_width_16_l0_small"  # unrenamed


def test_two_sae_folders_for_one_layer_are_named_or_picked_by_variant(
    gemma_dir, questions, tmp_path, captured
):
    root, d = tmp_path / "saes", _hidden(gemma_dir)
    _gs2(root, "layer_1_width_16_l0_small", d, seed=1)
    medium = _gs2(root, "layer_1_width_16_l0_medium", d, seed=2)
    _gs2(root, "layer_2_width_16_l0_medium", d, seed=3)
    result = _analyze(gemma_dir, questions, root, tmp_path / "out")
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "two SAEs for layer 1" in output
    assert "'layer_1_width_16_l0_medium'" in output and "'layer_1_width_16_l0_small'" in output
    assert "--sae-variant" in output

    result = _analyze(
        gemma_dir, questions, root, tmp_path / "out", "--sae-variant", "width_16_l0_medium"
    )
    assert isinstance(result.exception, _Stop), result.output
    assert sorted(captured["saes"]) == [1, 2]
    torch.testing.assert_close(captured["saes"][1].w_enc, medium["w_enc"])

    result = _analyze(gemma_dir, questions, root, tmp_path / "out", "--sae-variant", "width_1m")
    assert result.exit_code == 2 and "variant 'width_1m'" in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("name", "hook", "message"),
    [
        ("layer_1_width_16_l0_small", "model.layers.2.output", "says layer 1 but the SAE's hook"),
        ("layer_1", "model.layers.1.self_attn.o_proj.input", "which is not the output of block 1"),
        ("layer_7_13_17_width_16", None, "is not named layer_<L> or layer_<L>_<variant>"),
    ],
)
def test_sae_folders_whose_layer_or_site_disagree_are_refused(
    gemma_dir, questions, tmp_path, name, hook, message
):
    _gs2(tmp_path / "saes", name, _hidden(gemma_dir), hook=hook)
    result = _analyze(gemma_dir, questions, tmp_path / "saes", tmp_path / "out")
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_a_saelens_sae_placed_in_the_wrong_layer_folder_is_refused(gemma_dir, questions, tmp_path):
    from mechtune.interp.sae import SAE, SAEConfig
    from mechtune.interp.sae_saelens import save_saelens

    sae = SAE(SAEConfig(_hidden(gemma_dir), 16, "topk", k=2, layer=2))
    save_saelens(sae, tmp_path / "saes" / "layer_1")
    result = _analyze(gemma_dir, questions, tmp_path / "saes", tmp_path / "out")
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "the folder name says layer 1 but the SAE's own metadata says layer 2" in output


# -- every option changes what the commands do -----------------------------------------------

TRAIN_BASE = ["--layers", "0", "--width", "16", "--k", "4", "--steps", "5"]


@pytest.fixture(scope="module")
def train_base(gemma_dir, shared_questions, tmp_path_factory):
    return _train_run(gemma_dir, shared_questions, tmp_path_factory.mktemp("base"), TRAIN_BASE)


@pytest.fixture(scope="module")
def trained_saes(gemma_dir, shared_questions, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    assert _train(gemma_dir, shared_questions, out).exit_code == 0
    return out


def _train_run(gemma_dir, questions, out, args):
    cmd = ["sae", "train", "--model", f"hf:{gemma_dir}", "--questions", str(questions)]
    result = runner.invoke(app, [*cmd, "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    saes = {p.name: load_sae(p) for p in sorted(out.iterdir()) if p.is_dir()}
    weights = {name: sae.w_dec.detach().numpy().round(5).tolist() for name, sae in saes.items()}
    configs = {name: json.loads((out / name / "cfg.json").read_text()) for name in saes}
    return {"report": report, "weights": weights, "cfg": configs}


def _replace_option(args, option, value):
    args = list(args)
    if option in args:
        i = args.index(option)
        del args[i : i + 2]
    return [*args, option, value] if value is not None else args


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--layers", "2"),
        ("--kind", "jumprelu"),
        ("--width", "8"),
        ("--k", "2"),
        ("--steps", "7"),
        ("--seed", "1"),
        ("--corpus", "CORPUS"),
    ],
)
def test_every_sae_train_option_changes_the_saes(
    gemma_dir, shared_questions, train_base, tmp_path, option, value
):
    questions, base = shared_questions, train_base
    if value == "CORPUS":
        value = str(tmp_path / "corpus.txt")
        (tmp_path / "corpus.txt").write_text("A small effusion.\nNo edema.\n")
    args = _replace_option(TRAIN_BASE, option, value)
    if option == "--kind":
        args = _replace_option(args, "--k", None)  # --k is for topk
    changed = _train_run(gemma_dir, questions, tmp_path / "b", args)
    assert changed != base
    expect = {
        "--layers": lambda r: list(r["cfg"]) == ["layer_2"],
        "--kind": lambda r: r["cfg"]["layer_0"]["architecture"] == "jumprelu",
        "--width": lambda r: r["cfg"]["layer_0"]["d_sae"] == 8,
        "--k": lambda r: r["cfg"]["layer_0"]["k"] == 2 and r["report"]["layers"]["0"]["l0"] <= 2,
        "--steps": lambda r: r["report"]["sae"]["steps"] == 7,
        "--seed": lambda r: r["report"]["sae"]["seed"] == 1,
        "--corpus": lambda r: r["report"]["corpus_texts"] == 2,
    }
    assert expect[option](changed)


def test_buffer_tokens_reach_the_streaming_trainer(gemma_dir, questions, tmp_path):
    """--buffer-tokens sizes the shuffle buffer the SAEs train from (the bound on rows held
    at once; tests/interp/test_sae_stream.py shows the peak stays put as tokens double):
    below the SAE batch it is refused by the trainer, and the report records it."""
    result = _train(gemma_dir, questions, tmp_path / "small", "--buffer-tokens", "100")
    assert result.exit_code == 2
    assert "buffer_tokens (100) must be >= the SAE batch_size" in " ".join(result.output.split())
    result = _train(gemma_dir, questions, tmp_path / "ok", "--buffer-tokens", "2048")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert report["sae"]["buffer_tokens"] == 2048
    memory = report["layers"]["0"]["memory"]
    assert memory["peak_tokens"] <= 2048 and memory["tokens"] == report["layers"]["0"]["tokens"]


def test_sae_train_refuses_k_for_jumprelu(gemma_dir, questions, tmp_path):
    result = _train(gemma_dir, questions, tmp_path / "saes", "--kind", "jumprelu")
    assert result.exit_code == 2 and "--k is for --kind topk" in " ".join(result.output.split())


def test_sae_train_question_options_change_the_training_data(
    gemma_dir, questions, train_base, tmp_path
):
    base = train_base
    # --questions: another file (the first two records)
    fewer = questions.parent / "fewer.jsonl"
    fewer.write_text("\n".join(questions.read_text().splitlines()[:2]) + "\n")
    other = _train_run(gemma_dir, fewer, tmp_path / "b", TRAIN_BASE)
    assert (base["report"]["question_sets"], other["report"]["question_sets"]) == (4, 2)
    # --skip-bad: a record without an answer fails the run, or is skipped and counted
    bad = questions.parent / "bad.jsonl"
    bad.write_text(questions.read_text() + json.dumps({"question": "Is it?"}) + "\n")
    assert _train(gemma_dir, bad, tmp_path / "c").exit_code == 2
    skipped = _train_run(gemma_dir, bad, tmp_path / "d", [*TRAIN_BASE, "--skip-bad"])
    assert skipped["report"]["questions"]["rows_read"] == 5
    assert skipped["report"]["question_sets"] == 4
    # --data a plain folder: image paths are relative to it, not to the questions' folder
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "q.jsonl").write_text(questions.read_text())
    result = _train(gemma_dir, moved / "q.jsonl", tmp_path / "e")
    assert result.exit_code == 2 and "is not a file in the questions file's folder" in " ".join(
        result.output.split()
    )
    rooted = _train_run(
        gemma_dir,
        moved / "q.jsonl",
        tmp_path / "f",
        [*TRAIN_BASE, "--data", str(questions.parent)],
    )
    assert rooted["report"]["data"] == {"path": str(questions.parent), "layout": "image folder"}
    assert rooted["weights"] == base["weights"]


@pytest.mark.parametrize(
    ("option", "value", "check"),
    [
        ("--half-width", "0", lambda seen: seen["config"].half_width == 0),
        ("--seed", "3", lambda seen: seen["config"].seed == 3),
        ("--layers", "0,2", lambda seen: sorted(seen["saes"]) == [0, 2]),
        ("--max-questions", "2", lambda seen: len(set(seen["pairs"].groups)) == 2),
        ("--auc-shuffles", "5", lambda seen: seen["config"].shuffles == 5),
    ],
)
def test_every_sae_analyze_option_reaches_the_analysis(
    gemma_dir, shared_questions, trained_saes, tmp_path, captured, option, value, check
):
    questions, saes = shared_questions, trained_saes
    result = _analyze(gemma_dir, questions, saes, tmp_path / "out")
    assert isinstance(result.exception, _Stop), result.output
    base = dict(captured)
    assert not check(base)
    result = _analyze(gemma_dir, questions, saes, tmp_path / "out", option, value)
    assert isinstance(result.exception, _Stop), result.output
    assert check(captured)
    if option == "--seed":  # also the sample of questions
        result = _analyze(gemma_dir, questions, saes, tmp_path / "o", "--max-questions", "2")
        first = list(captured["pairs"].originals)
        _analyze(gemma_dir, questions, saes, tmp_path / "o", "--max-questions", "2", "--seed", "5")
        assert list(captured["pairs"].originals) != first


SHARED = {
    "--data": ("data", "W"),
    "--device": ("device", "cuda:1"),
    "--dtype": ("dtype", "bfloat16"),
    "--seed": ("seed", 4),
    "--split": ("split", "test"),
    "--skip-bad": ("skip_bad", True),
    "--questions": ("questions", "Q"),
    "--model": ("model", "M"),
}


@pytest.mark.parametrize("command", ["train", "analyze"])
@pytest.mark.parametrize("option", sorted(SHARED))
def test_both_commands_pass_the_question_options_on(monkeypatch, tmp_path, command, option):
    """The shared options reach load_questions (their effects are tested below)."""
    seen = {}

    def record(model, questions, **kwargs):
        seen.update(kwargs, model=model, questions=questions)
        raise _Stop

    monkeypatch.setattr("mechtune.cli.sae.load_questions", record)
    name, value = SHARED[option]
    value = {"W": tmp_path / "w", "Q": tmp_path / "q.jsonl", "M": "hf:x"}.get(value, value)
    args = ["sae", command, "--out", str(tmp_path / "out")]
    if command == "analyze":
        args += ["--saes", str(tmp_path)]
    args += [option] if value is True else [option, str(value)]
    result = runner.invoke(app, args)
    assert isinstance(result.exception, _Stop), result.output
    assert seen[name] == value


@pytest.fixture(scope="module")
def phantom():
    from mechtune.models.vlm_spec import load_yes_no_vlm

    return load_yes_no_vlm("phantom:vqa")


@pytest.fixture
def phantom_questions(monkeypatch, phantom, world_dir):
    from mechtune.cli import sae as sae_cli

    monkeypatch.setattr(
        "mechtune.models.vlm_spec.load_yes_no_vlm", lambda spec, device, dtype: phantom
    )

    def load(**kwargs):
        questions = kwargs.pop("questions", None)
        options = {"data": world_dir, "seed": 0, "split": None, "skip_bad": False, **kwargs}
        return sae_cli.load_questions("phantom:vqa", questions, **options)

    return load


@pytest.mark.parametrize(("name", "value"), [("seed", 1), ("split", "test")])
def test_data_options_change_the_questions(phantom_questions, name, value):
    _, base, base_info = phantom_questions()
    _, changed, info = phantom_questions(**{name: value})
    assert [q.record.question for q in changed.sets] != [q.record.question for q in base.sets]
    assert base_info["own_questions"]["split"] == "train"  # the commands' default
    if name == "split":
        assert info["own_questions"]["split"] == "test"
        assert {q.record.split for q in changed.sets} == {"test"}


def test_data_is_read_as_a_source_and_question_files_bind_to_its_studies(
    phantom_questions, world_dir, tmp_path
):
    from mechtune.data.sources import open_source

    source = open_source(world_dir)
    vlm, loaded, info = phantom_questions()
    train = source.split("train")
    assert {q.record.study_id for q in loaded.sets} == {s.study_id for s in train}
    assert loaded.images.shape == (len(train), 384)  # phantom embeddings, one per study
    first = train[3]
    torch.testing.assert_close(  # one image alone: equal up to batch rounding
        loaded.images[3], vlm.prepare_images([source.load_image(first, "L")])[0]
    )
    assert loaded.corpus == sorted({s.report for s in train if s.report})
    assert (info["model"], info["device"], info["dtype"]) == ("phantom:vqa", "cpu", "float32")
    assert info["data"] == {"path": str(world_dir), "layout": "phantom-world", "items": 60}
    assert info["images"] == {"distinct": len(train)}
    # a question file names studies of the data by study id or image reference
    path = tmp_path / "q.jsonl"
    other = source.studies()[7]
    rows = [
        {
            "question": "Is there edema?",
            "paraphrases": ["Any edema?"],
            "answer": "no",
            "image": other.image_ref,
        },
        {
            "question": "Is there an effusion?",
            "paraphrases": ["Any effusion?"],
            "answer": "yes",
            "study_id": first.study_id,
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, bound, info = phantom_questions(questions=path)
    assert [q.image for q in bound.sets] == [0, 1] and bound.images.shape[0] == 2
    assert info["questions"]["path"] == str(path) and info["questions"]["rows_kept"] == 2
    rows[0]["image"] = "images.npy#999"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"question 'q1': image 'images.npy#999' is neither"):
        phantom_questions(questions=path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"data": None}, "give --questions FILE"),
        ({"split": "dev"}, "--split must be one of train, val, test, got 'dev'"),
    ],
)
def test_question_options_that_cannot_work_are_refused(phantom_questions, options, message):
    with pytest.raises(ConfigError, match=message):
        phantom_questions(**options)


def test_split_of_a_questions_file_without_split_labels_uses_it_whole(
    gemma_dir, questions, tmp_path
):
    result = _train(gemma_dir, questions, tmp_path / "saes", "--layers", "0", "--split", "test")
    assert result.exit_code == 0, result.output
    assert "has no split labels: using all 4 records" in " ".join(result.output.split())
    report = json.loads((tmp_path / "saes" / "report.json").read_text())
    assert report["question_sets"] == len(RECORDS)


@needs_split_field
def test_split_keeps_a_labelled_questions_files_split(gemma_dir, questions, tmp_path):
    """The commands read the train split of a labelled file unless --split says another."""
    lines = questions.read_text().splitlines()
    splits = ["train", "test", "train", "val"]
    labelled = questions.parent / "labelled.jsonl"
    labelled.write_text(
        "".join(
            json.dumps({**json.loads(line), "split": split}) + "\n"
            for line, split in zip(lines, splits, strict=True)
        )
    )
    base = _train_run(gemma_dir, labelled, tmp_path / "a", TRAIN_BASE)
    assert base["report"]["question_sets"] == 2
    test = _train_run(gemma_dir, labelled, tmp_path / "b", [*TRAIN_BASE, "--split", "test"])
    assert test["report"]["question_sets"] == 1
    assert test["report"]["images"]["distinct"] == 1  # only b.png is read


_SHARED_OPTIONS = {option: "test_both_commands_pass_the_question_options_on" for option in SHARED}
OPTION_TESTS = {
    "mechtune sae train": {
        **_SHARED_OPTIONS,
        "--out": "test_sae_train_on_gemma_writes_saelens_saes_and_stats",
        "--buffer-tokens": "test_buffer_tokens_reach_the_streaming_trainer",
        **{
            option: "test_every_sae_train_option_changes_the_saes"
            for option in ("--layers", "--kind", "--width", "--k", "--steps", "--seed", "--corpus")
        },
    },
    "mechtune sae analyze": {
        **_SHARED_OPTIONS,
        "--out": "test_sae_analyze_on_gemma_reports_auc_per_layer_and_a_range",
        "--saes": "test_sae_analyze_reads_gemma_scope_2_folder_names",
        "--sae-variant": "test_two_sae_folders_for_one_layer_are_named_or_picked_by_variant",
        **{
            option: "test_every_sae_analyze_option_reaches_the_analysis"
            for option in (
                "--half-width",
                "--seed",
                "--layers",
                "--max-questions",
                "--auc-shuffles",
            )
        },
    },
}
