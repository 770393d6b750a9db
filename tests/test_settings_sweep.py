"""Every setting does what it says: a meta-test over config fields and CLI options.

A setting that nothing reads is a defect (a NegCLIP loss was once configured and never
called). So every field of every config dataclass in mechtune (classes named ``*Config``
or ``*Settings``) and every option of every CLI command must be declared, by the test
module that proves it, in a module-level table:

    FIELD_TESTS = {"mechtune.train.loop.LoopConfig": {"steps": "test_changing_...", ...}}
    OPTION_TESTS = {"mechtune sim render": {"--n": "test_sim_render_options", ...}}

naming a test function of that module which fails when the setting stops changing what it
should (outputs, written files, or what reaches the code that uses it). This test finds
every config class and CLI option, and fails when one is undeclared or a declared test
function does not exist.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from pathlib import Path

import typer

import mechtune
from mechtune.cli.main import app

TESTS = Path(__file__).parent


def config_classes() -> dict[str, type]:
    """``{"module.Class": class}`` for every config dataclass defined in mechtune."""
    found = {}
    for info in pkgutil.walk_packages(mechtune.__path__, "mechtune."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and dataclasses.is_dataclass(obj)
                and obj.__module__ == module.__name__
                and name.endswith(("Config", "Settings"))
            ):
                found[f"{module.__name__}.{name}"] = obj
    return found


def cli_options() -> dict[str, set[str]]:
    """``{"mechtune data build polarity": {"--n", ...}}``: every command (and every group
    that runs on its own) with its options and arguments (``--help`` aside)."""
    out: dict[str, set[str]] = {}

    def walk(command: object, path: str) -> None:
        params = {(p.opts[0] if p.opts else p.name) for p in command.params if p.name != "help"}  # type: ignore[attr-defined]
        if params:
            out[path] = params
        for name, sub in (getattr(command, "commands", None) or {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "mechtune")
    return out


def declared() -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]], list[str]]:
    """The FIELD_TESTS and OPTION_TESTS of every test module, and declared tests that do
    not exist (``module::function``)."""
    fields: dict[str, dict[str, str]] = {}
    options: dict[str, dict[str, str]] = {}
    missing = []
    for path in sorted(TESTS.rglob("test_*.py")):
        name = ".".join(path.relative_to(TESTS.parent).with_suffix("").parts)
        module = importlib.import_module(name)
        for table, into in (("FIELD_TESTS", fields), ("OPTION_TESTS", options)):
            for owner, entries in getattr(module, table, {}).items():
                for setting, test in entries.items():
                    if not callable(getattr(module, test, None)):
                        missing.append(f"{name}::{test} (for {owner} {setting})")
                    into.setdefault(owner, {})[setting] = f"{name}::{test}"
    return fields, options, missing


# Settings not yet covered. This list only shrinks: an entry that is covered (or gone)
# fails the test below until it is removed from here.
KNOWN_GAPS: set[str] = {
    'mechtune --install-completion',
    'mechtune --show-completion',
    'mechtune --version',
    'mechtune data build --check',
    'mechtune data build --format',
    'mechtune data build --labels',
    'mechtune data build --max-disagreement',
    'mechtune data build --n',
    'mechtune data build --out',
    'mechtune data build --seed',
    'mechtune data build --skip-bad',
    'mechtune data build --uncertain',
    'mechtune data build contextual --check',
    'mechtune data build contextual --format',
    'mechtune data build contextual --labels',
    'mechtune data build contextual --max-disagreement',
    'mechtune data build contextual --n',
    'mechtune data build contextual --out',
    'mechtune data build contextual --seed',
    'mechtune data build contextual --skip-bad',
    'mechtune data build contextual --uncertain',
    'mechtune data build paraphrase --check',
    'mechtune data build paraphrase --format',
    'mechtune data build paraphrase --labels',
    'mechtune data build paraphrase --max-disagreement',
    'mechtune data build paraphrase --n',
    'mechtune data build paraphrase --out',
    'mechtune data build paraphrase --seed',
    'mechtune data build paraphrase --skip-bad',
    'mechtune data build paraphrase --uncertain',
    'mechtune data build polarity --check',
    'mechtune data build polarity --format',
    'mechtune data build polarity --labels',
    'mechtune data build polarity --max-disagreement',
    'mechtune data build polarity --n',
    'mechtune data build polarity --out',
    'mechtune data build polarity --seed',
    'mechtune data build polarity --skip-bad',
    'mechtune data build polarity --uncertain',
    'mechtune data check --max-disagreement',
    'mechtune data check --sample',
    'mechtune data check path',
    'mechtune data import nast --check',
    'mechtune data import nast --format',
    'mechtune data import nast --max-disagreement',
    'mechtune data import nast --out',
    'mechtune data import nast --skip-bad',
    'mechtune data import nast path',
    'mechtune data import psf --format',
    'mechtune data import psf --out',
    'mechtune data import psf --skip-bad',
    'mechtune data import psf path',
    'mechtune eval negation --adapter',
    'mechtune eval negation --claims',
    'mechtune eval negation --model',
    'mechtune eval negation --n',
    'mechtune eval negation --out',
    'mechtune eval negation --seed',
    'mechtune eval negation --world',
    'mechtune sim build --n',
    'mechtune sim build --negative-rate',
    'mechtune sim build --out',
    'mechtune sim build --seed',
    'mechtune sim build --size',
    'mechtune sim render --columns',
    'mechtune sim render --n',
    'mechtune sim render --out',
    'mechtune sim render --seed',
    'mechtune sim render --size',
    'mechtune sim train-clip --compare',
    'mechtune sim train-clip --n',
    'mechtune sim train-clip --negative-rate',
    'mechtune sim train-clip --out',
    'mechtune sim train-clip --seed',
    'mechtune sim train-clip --steps',
    'mechtune sim train-vqa --compare',
    'mechtune sim train-vqa --n',
    'mechtune sim train-vqa --out',
    'mechtune sim train-vqa --seed',
    'mechtune sim train-vqa --steps',
    'mechtune trace --epsilon',
    'mechtune trace --model',
    'mechtune trace --n',
    'mechtune trace --out',
    'mechtune trace --pairs',
    'mechtune trace --per-study',
    'mechtune trace --seed',
    'mechtune trace --split',
    'mechtune trace --world',
    'mechtune.data.builders.contextual.ContextualConfig.absent_per_study',
    'mechtune.data.builders.contextual.ContextualConfig.captions',
    'mechtune.data.builders.contextual.ContextualConfig.contralateral',
    'mechtune.data.builders.contextual.ContextualConfig.heldout_eval',
    'mechtune.data.builders.contextual.ContextualConfig.lateral_absent_rate',
    'mechtune.data.builders.contextual.ContextualConfig.max_negatives',
    'mechtune.data.builders.contextual.ContextualConfig.seed',
    'mechtune.data.builders.contextual.ContextualConfig.split_fractions',
    'mechtune.data.builders.paraphrase.ParaphraseConfig.heldout_eval',
    'mechtune.data.builders.paraphrase.ParaphraseConfig.max_paraphrases',
    'mechtune.data.builders.paraphrase.ParaphraseConfig.min_paraphrases',
    'mechtune.data.builders.paraphrase.ParaphraseConfig.original_family',
    'mechtune.data.builders.paraphrase.ParaphraseConfig.questions_per_study',
    'mechtune.data.builders.paraphrase.ParaphraseConfig.seed',
    'mechtune.data.builders.paraphrase.ParaphraseConfig.split_fractions',
    'mechtune.data.builders.polarity.PolarityConfig.families',
    'mechtune.data.builders.polarity.PolarityConfig.max_flips',
    'mechtune.data.builders.polarity.PolarityConfig.min_absent',
    'mechtune.data.builders.polarity.PolarityConfig.min_present',
    'mechtune.data.builders.polarity.PolarityConfig.n_conditions',
    'mechtune.data.builders.polarity.PolarityConfig.n_options',
    'mechtune.data.builders.polarity.PolarityConfig.seed',
    'mechtune.data.builders.polarity.PolarityConfig.split_fractions',
    'mechtune.data.synthetic.SyntheticConfig.max_studies_per_patient',
    'mechtune.data.synthetic.SyntheticConfig.n_studies',
    'mechtune.data.synthetic.SyntheticConfig.seed',
    'mechtune.eval.negation_study.NegationStudyConfig.balance_polarity',
    'mechtune.eval.negation_study.NegationStudyConfig.eval_split',
    'mechtune.eval.negation_study.NegationStudyConfig.loop',
    'mechtune.eval.negation_study.NegationStudyConfig.methods',
    'mechtune.eval.negation_study.NegationStudyConfig.seeds',
    'mechtune.eval.negation_study.NegationStudyConfig.trace_max_pairs',
    'mechtune.eval.negation_study.NegationStudyConfig.trace_per_study',
    'mechtune.eval.negation_study.NegationStudyConfig.world_seed',
    'mechtune.eval.negation_study.NegationStudyConfig.world_studies',
    'mechtune.eval.paraphrase_study.ParaphraseStudyConfig.analysis_sets',
    'mechtune.eval.paraphrase_study.ParaphraseStudyConfig.eval_split',
    'mechtune.eval.paraphrase_study.ParaphraseStudyConfig.half_width',
    'mechtune.eval.paraphrase_study.ParaphraseStudyConfig.lora',
    'mechtune.eval.paraphrase_study.ParaphraseStudyConfig.questions_per_study',
    'mechtune.eval.paraphrase_study.ParaphraseStudyConfig.ranges',
    'mechtune.eval.paraphrase_study.ParaphraseStudyConfig.sae_k',
    'mechtune.eval.paraphrase_study.ParaphraseStudyConfig.sae_reports',
    'mechtune.eval.paraphrase_study.ParaphraseStudyConfig.sae_steps',
    'mechtune.eval.paraphrase_study.ParaphraseStudyConfig.sae_width',
    'mechtune.eval.paraphrase_study.ParaphraseStudyConfig.seeds',
    'mechtune.eval.paraphrase_study.ParaphraseStudyConfig.world_seed',
    'mechtune.eval.paraphrase_study.ParaphraseStudyConfig.world_studies',
    'mechtune.interp.result.TraceConfig.batch_pairs',
    'mechtune.interp.result.TraceConfig.epsilon',
    'mechtune.interp.result.TraceConfig.n_boot',
    'mechtune.interp.result.TraceConfig.seed',
    'mechtune.sim.clip.PhantomCLIPConfig.channels',
    'mechtune.sim.clip.PhantomCLIPConfig.embed_dim',
    'mechtune.sim.clip.PhantomCLIPConfig.hidden',
    'mechtune.sim.clip.PhantomCLIPConfig.image_size',
    'mechtune.sim.clip.PhantomCLIPConfig.stem_patch',
    'mechtune.sim.clip.PhantomCLIPConfig.text_model',
    'mechtune.sim.render.RenderConfig.ap_fraction',
    'mechtune.sim.render.RenderConfig.contrast_range',
    'mechtune.sim.render.RenderConfig.max_rotation_deg',
    'mechtune.sim.render.RenderConfig.max_shift',
    'mechtune.sim.render.RenderConfig.noise_range',
    'mechtune.sim.render.RenderConfig.scale_range',
    'mechtune.sim.render.RenderConfig.seed',
    'mechtune.sim.render.RenderConfig.size',
    'mechtune.sim.reports.ReportConfig.max_negatives',
    'mechtune.sim.reports.ReportConfig.negative_rate',
    'mechtune.sim.reports.ReportConfig.seed',
    'mechtune.sim.train_clip.TrainCLIPConfig.batch_size',
    'mechtune.sim.train_clip.TrainCLIPConfig.lr',
    'mechtune.sim.train_clip.TrainCLIPConfig.model',
    'mechtune.sim.train_clip.TrainCLIPConfig.n_studies',
    'mechtune.sim.train_clip.TrainCLIPConfig.negative_rate',
    'mechtune.sim.train_clip.TrainCLIPConfig.seed',
    'mechtune.sim.train_clip.TrainCLIPConfig.steps',
    'mechtune.sim.train_clip.TrainCLIPConfig.threads',
    'mechtune.sim.train_clip.TrainCLIPConfig.warmup_steps',
    'mechtune.sim.train_clip.TrainCLIPConfig.weight_decay',
    'mechtune.sim.train_vqa.TrainVQAConfig.batch_size',
    'mechtune.sim.train_vqa.TrainVQAConfig.families',
    'mechtune.sim.train_vqa.TrainVQAConfig.hidden',
    'mechtune.sim.train_vqa.TrainVQAConfig.lr',
    'mechtune.sim.train_vqa.TrainVQAConfig.n_studies',
    'mechtune.sim.train_vqa.TrainVQAConfig.seed',
    'mechtune.sim.train_vqa.TrainVQAConfig.steps',
    'mechtune.sim.train_vqa.TrainVQAConfig.threads',
    'mechtune.sim.train_vqa.TrainVQAConfig.weight_decay',
    'mechtune.sim.vqa.PhantomVQAConfig.hidden',
    'mechtune.sim.vqa.PhantomVQAConfig.image',
    'mechtune.sim.vqa.PhantomVQAConfig.text_model',
    'mechtune.sim.world.WorldConfig.n_studies',
    'mechtune.sim.world.WorldConfig.render',
    'mechtune.sim.world.WorldConfig.report',
    'mechtune.sim.world.WorldConfig.seed',
    'mechtune.sim.world.WorldConfig.split_fractions',
}


def test_every_setting_is_declared_by_a_test_that_exists() -> None:
    fields, options, missing = declared()
    assert not missing, f"declared tests that do not exist: {missing}"
    gaps = set()
    for owner, cls in config_classes().items():
        for f in dataclasses.fields(cls):
            if f.name not in fields.get(owner, {}):
                gaps.add(f"{owner}.{f.name}")
    for command, params in cli_options().items():
        for param in params:
            if param not in options.get(command, {}):
                gaps.add(f"{command} {param}")
    stale = KNOWN_GAPS - gaps
    assert not stale, f"covered now (remove from KNOWN_GAPS): {sorted(stale)}"
    new = gaps - KNOWN_GAPS
    assert not new, f"settings without a test proving they change behaviour: {sorted(new)}"


def test_declarations_name_real_settings() -> None:
    """A declaration for a field or option that no longer exists is stale."""
    fields, options, _ = declared()
    classes = config_classes()
    commands = cli_options()
    stale = [
        f"{owner}.{name}"
        for owner, entries in fields.items()
        for name in entries
        if owner not in classes or name not in {f.name for f in dataclasses.fields(classes[owner])}
    ]
    stale += [
        f"{command} {name}"
        for command, entries in options.items()
        for name in entries
        if name not in commands.get(command, set())
    ]
    assert not stale, stale
