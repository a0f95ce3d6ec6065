"""`--model NAME`: a catalogue name, or a Hugging Face id (`Qwen/Qwen3-8B`) found, in this order, in the catalogue
(its `hf_id`), in the local Hugging Face cache (the snapshots' config.json), then on the Hub when online
(huggingface_hub, if installed). Never a weight file: only config.json is read."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from peftcalc.errors import ConfigError, PeftcalcError
from peftcalc.model.catalogue import find, get_model, unknown_model
from peftcalc.model.hf_config import spec_from_config
from peftcalc.model.spec import ModelSpec, Scope

# owner/name as the Hub allows them (huggingface_hub's validate_repo_id: letters, digits, - _ . ; 96 chars)
HF_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")


def hub_cache() -> Path:
    """The Hugging Face hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub
    (huggingface_hub's constants)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(home) / "hub"


def cached_config(repo_id: str) -> Path | None:
    """The config.json of `repo_id` in the local cache: the snapshot refs/main points to, else the newest."""
    repo = hub_cache() / f"models--{repo_id.replace('/', '--')}"
    snapshots = repo / "snapshots"
    ref = repo / "refs" / "main"
    if ref.is_file():
        p = snapshots / ref.read_text(encoding="utf-8").strip() / "config.json"
        if p.is_file():
            return p
    found = [p for p in snapshots.glob("*/config.json") if p.is_file()] if snapshots.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download_config(repo_id: str) -> Path | None:
    """config.json from the Hub (into the Hugging Face cache), or None when offline or huggingface_hub is absent.
    Network and access errors become one line."""
    if offline():
        return None
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        return None
    try:
        return Path(hf_hub_download(repo_id, "config.json", etag_timeout=5))
    except LocalEntryNotFoundError:
        return None  # no connection: treated as offline
    except HfHubHTTPError as e:
        raise PeftcalcError(f"the Hub refused {repo_id}/config.json ({str(e).splitlines()[0]}); gated models need "
                            "`hf auth login`, or download config.json yourself and pass --config PATH") from None
    except OSError as e:
        raise PeftcalcError(f"cannot fetch {repo_id}/config.json from the Hub: {e}; pass --config PATH") from None


def resolve_model(name: str, scope: Scope = "text") -> ModelSpec:
    """The model `--model` names: catalogue name or hf_id, local Hugging Face cache, then the Hub."""
    if find(name) is not None:
        return get_model(name, scope)
    if not HF_ID.fullmatch(name.strip()):
        raise unknown_model(name)
    repo_id = name.strip()
    path = cached_config(repo_id) or download_config(repo_id)
    if path is None:
        raise PeftcalcError(
            f"{repo_id} is not in the catalogue nor in the local Hugging Face cache ({hub_cache()})"
            + (" and HF_HUB_OFFLINE is set" if offline() else ", and the Hub cannot be reached")
            + f": download its config.json (https://huggingface.co/{repo_id}/blob/main/config.json) and pass "
              "--config PATH")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    return spec_from_config(cfg, repo_id, str(path), scope)
