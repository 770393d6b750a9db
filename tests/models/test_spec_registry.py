"""Model specs resolve through a registry of schemes; the phantom scheme is a plugin that
``mechtune.sim`` registers through an entry point, so ``mechtune.models`` never imports it."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import torch

from mechtune.errors import ConfigError
from mechtune.models import spec
from mechtune.models.spec import ModelSpecError, load_dual_encoder, parse_spec, register_scheme


def test_no_module_of_models_imports_sim():
    """Every module of ``mechtune.models``, imported in a fresh interpreter, leaves
    ``mechtune.sim`` unimported; the phantom scheme is still known (by its entry point)."""
    code = (
        "import importlib, pkgutil, sys, mechtune.models as m; "
        "[importlib.import_module(i.name) for i in pkgutil.walk_packages(m.__path__, 'mechtune.models.')]; "
        "import mechtune.models.spec as s; "
        "assert s.schemes() == ('hf', 'openclip', 'phantom'), s.schemes(); "
        "print(sorted(x for x in sys.modules if x.startswith('mechtune.sim')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_phantom_scheme_is_an_entry_point_of_sim():
    (plugin,) = [ep for ep in entry_points(group=spec.ENTRY_POINT_GROUP) if ep.name == "phantom"]
    assert plugin.value == "mechtune.sim.registry:register"
    assert type(load_dual_encoder("phantom:default")).__name__ == "PhantomDualEncoder"


def test_a_registered_scheme_loads_and_is_named_in_errors(monkeypatch):
    registry = spec.SchemeRegistry("model", spec.ENTRY_POINT_GROUP, ModelSpecError)
    registry._schemes = dict(spec._REGISTRY._schemes)
    monkeypatch.setattr(spec, "_REGISTRY", registry)
    seen = []

    def load(name, *, device, dtype):
        seen.append((name, str(device), dtype))
        return "encoder"

    register_scheme("toy", load, ("toy:tiny",))
    assert load_dual_encoder("toy:a/b:c") == "encoder" and seen == [("a/b:c", "cpu", None)]
    assert load_dual_encoder("toy:x", dtype="bfloat16") == "encoder"
    assert seen[-1] == ("x", "cpu", torch.bfloat16)
    with pytest.raises(ModelSpecError, match=r"SCHEME one of .*toy.* e\.g\. .*toy:tiny"):
        parse_spec("nope:x")

    def broken(name, **kw):
        raise OSError("no weights here")

    register_scheme("toy", broken)
    with pytest.raises(ModelSpecError, match="cannot load 'toy:x': no weights here"):
        load_dual_encoder("toy:x")


@pytest.mark.parametrize("name", ["", "a:b"])
def test_bad_scheme_names_are_refused(name):
    with pytest.raises(ConfigError, match="non-empty name without ':'"):
        register_scheme(name, lambda n: None)


def test_adapters_are_reachable_from_the_interface_module():
    from mechtune.models import dual_encoder, hf_dual, open_clip_adapter

    assert dual_encoder.HFCLIPDualEncoder is hf_dual.HFCLIPDualEncoder
    assert dual_encoder.SiglipDualEncoder is hf_dual.SiglipDualEncoder
    assert dual_encoder.OpenCLIPDualEncoder is open_clip_adapter.OpenCLIPDualEncoder
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        dual_encoder.Nope  # noqa: B018
