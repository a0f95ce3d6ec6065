"""Every catalogue entry: a name, a Hugging Face id, a source; every entry without a hand-written family counts
exactly what transformers builds from its config (text-only: the text config's causal LM; --full-model: the
image-text-to-text model), built here independently of peftcalc's derivation."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from peftcalc.model.catalogue import entry, get_model, model_names
from peftcalc.model.families import FAMILIES

NAMES = model_names()
DERIVED = [n for n in NAMES if entry(n)["config"]["model_type"] not in FAMILIES]
NOT_MODEL = ("architectures", "transformers_version", "_name_or_path", "auto_map", "torch_dtype", "dtype",
             "quantization_config")


def test_every_entry_names_its_source_and_hugging_face_id() -> None:
    ids = [entry(n).get("hf_id", "") for n in NAMES]
    assert all("/" in i for i in ids) and len(set(map(str.lower, ids))) == len(ids)
    assert all(entry(n)["source"].startswith("https://") for n in NAMES)


def built(name: str, full: bool) -> torch.nn.Module:
    cfg = {k: v for k, v in entry(name)["config"].items() if k not in NOT_MODEL}
    config = AutoConfig.for_model(cfg.pop("model_type"), **json.loads(json.dumps(cfg)))
    with torch.device("meta"):
        if full:
            return AutoModelForImageTextToText.from_config(config)
        return AutoModelForCausalLM.from_config(config.get_text_config(decoder=True)
                                                if "text_config" in config.sub_configs else config)


@pytest.mark.catalogue
@pytest.mark.parametrize("name", DERIVED)
def test_derived_entries_count_what_transformers_builds(name: str) -> None:
    spec = get_model(name)
    assert spec.origin == "derived"
    assert spec.total_params == sum(p.numel() for p in built(name, False).parameters())
    if spec.derivation.multimodal:
        assert get_model(name, "full").total_params == sum(p.numel() for p in built(name, True).parameters())
