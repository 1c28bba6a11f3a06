"""The one model catalogue (dcsim/models.py): the calibration architectures and the profiles' models agree where
they name the same model, and profile importers read it without loading the calibration backends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from dcsim import models
from dcsim.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arch, key", sorted(models.ARCH_MODELS.items()))
def test_an_architecture_and_its_catalogue_model_have_one_shape(arch, key):
    cfg, spec = models.ARCHS[arch], models.MODELS[key]
    assert cfg["num_hidden_layers"] == spec.layers and cfg["hidden_size"] == spec.hidden_size
    assert cfg["num_key_value_heads"] == spec.kv_heads
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == spec.head_dim
    assert cfg["max_position_embeddings"] == spec.max_context
    # the formula's count, from the config, rounds to the catalogue's published figure (6.74e9 for Llama-2 7B)
    assert models.params_b(SimpleNamespace(**cfg)) == pytest.approx(spec.params_b, abs=0.005)


def test_params_b_counts_a_tiny_model_by_hand():
    # tiny-llama: embeddings 512 x 64, 2 layers of q,o (64x64) k,v (64x32) + MLP 3 x 64x128 + 2 norms, a final
    # norm and an untied head 512 x 64
    per_layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64
    total = 512 * 64 + 2 * per_layer + 64 + 512 * 64
    assert models.params_b(SimpleNamespace(**models.ARCHS["tiny-llama"])) == total / 1e9


def test_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(UserError, match="llama-2-7b"):
        models.model("llama-9")
    with pytest.raises(UserError, match="tiny-llama"):
        models.arch_config("llama-9")


def test_importers_do_not_load_the_calibration_backends():
    code = ("import json, sys, dcsim.profiles.importers, dcsim.profiles.fit\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('dcsim.calibrate.backends'))))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
