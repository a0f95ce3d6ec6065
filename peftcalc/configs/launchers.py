"""How a run is spread over GPUs, as the launchers and sharding sections say: DeepSpeed JSON, accelerate config
files, and FSDP sections (accelerate's `fsdp_config`, the Trainer's `fsdp`/`fsdp_config`, axolotl's).

DeepSpeed (deepspeed/runtime/zero/config.py): `zero_optimization.stage` 0-3, `offload_optimizer.device` and
`offload_param.device` cpu|nvme, `bf16.enabled` (DeepSpeed keeps fp32 master weights and optimizer states of
a bf16 model: peftcalc's bf16-mixed). accelerate (accelerate/commands/config/config_args.py): `num_processes` is
the total number of processes over all machines (accelerate launch --help: "The total number of processes to be
launched in parallel"). FSDP: FULL_SHARD and FSDP2's reshard_after_forward=True shard weights, gradients and
optimizer states (ZeRO-3); SHARD_GRAD_OP / reshard_after_forward=False keep gathered weights (ZeRO-2);
`offload_params` (torch CPUOffload) keeps parameters, gradients and the optimizer step on the CPU.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from peftcalc.configs.load import load
from peftcalc.configs.reading import NO_EFFECT, Reading
from peftcalc.configs.result import TrainingConfig

NOT_IN_FILE_GPUS = "the file does not say how many GPUs: give --gpus N (1 assumed, so nothing is sharded)"

DEEPSPEED_IGNORED = {
    "gradient_clipping": NO_EFFECT, "wall_clock_breakdown": NO_EFFECT, "zero_allow_untested_optimizer": NO_EFFECT,
    "zero_force_ds_cpu_optimizer": NO_EFFECT, "steps_per_print": NO_EFFECT, "train_batch_size": NO_EFFECT,
    "scheduler": NO_EFFECT, "communication_data_type": "the dtype of reduced gradients on the wire: none kept",
}
ZERO_IGNORED = {
    "overlap_comm": NO_EFFECT, "round_robin_gradients": NO_EFFECT,
    "contiguous_gradients": "the ipg bucket is counted as with contiguous_gradients true (DeepSpeed's default)",
    "sub_group_size": "optimizer step granularity: not modelled",
    "allgather_bucket_size": "ZeRO-2's all-gather bucket: not modelled", "reduce_scatter": NO_EFFECT,
    "allgather_partitions": NO_EFFECT,
    "stage3_gather_16bit_weights_on_model_save": "also writes a consolidated 16-bit model at save time (disk, "
                                                 "not modelled)",
    "gather_16bit_weights_on_model_save": "also writes a consolidated 16-bit model at save time (disk, not modelled)",
}
FSDP_IGNORED = dict.fromkeys(
    ("auto_wrap_policy", "transformer_layer_cls_to_wrap", "state_dict_type", "sync_module_states", "min_num_params",
     "activation_checkpointing_reentrant"), NO_EFFECT)
FSDP_IGNORED.update({
    "use_orig_params": "with peft's wrap policy (HF Trainer) trainable and frozen parameters are in separate units: "
                       "no difference; mixed units' frozen gradients are not modelled",
    "cpu_ram_efficient_loading": "load time only (not modelled)",
    "limit_all_gathers": "assumed true (accelerate's default): at most two all-gathers in flight"})
ACCELERATE_IGNORED = dict.fromkeys(
    ("compute_environment", "debug", "machine_rank", "main_training_function", "rdzv_backend", "same_network",
     "tpu_env", "tpu_use_cluster", "tpu_use_sudo", "use_cpu", "downcast_bf16", "enable_cpu_affinity", "gpu_ids",
     "main_process_ip", "main_process_port", "num_machines", "dynamo_config"), NO_EFFECT)
# zero_optimization keys -> Setup fields (elements); "auto" (transformers fills it from the hidden size) for the
# first three -> ds_auto_buckets
DS_BUCKETS = {"reduce_bucket_size": "ds_reduce_bucket_size", "stage3_prefetch_bucket_size": "ds_prefetch_bucket_size",
              "stage3_param_persistence_threshold": "ds_param_persistence_threshold",
              "stage3_max_live_parameters": "ds_max_live_parameters",
              "stage3_max_reuse_distance": "ds_max_reuse_distance"}
DS_ALIASES = {"prefetch_bucket_size": "stage3_prefetch_bucket_size",
              "param_persistence_threshold": "stage3_param_persistence_threshold",
              "max_live_parameters": "stage3_max_live_parameters", "max_reuse_distance": "stage3_max_reuse_distance"}
PREFETCH = {"BACKWARD_PRE": "pre", "BACKWARD_POST": "post", "NO_PREFETCH": "none", "1": "pre", "2": "post"}
SHARDING = {"FULL_SHARD": "3", "HYBRID_SHARD": "3", "SHARD_GRAD_OP": "2", "HYBRID_SHARD_ZERO2": "2", "NO_SHARD": "0",
            "1": "3", "2": "2", "3": "0", "4": "3", "5": "2"}  # accelerate also writes the enum's number


def find_companion(value: str, config_path: str) -> Path | None:
    """A file a config names by path (a DeepSpeed JSON): as written (relative to where the run starts), then
    relative to the config's folder and each folder above it, dropping leading parts of the path one at a time
    (the published examples write paths relative to the framework's repository root)."""
    named = Path(value)
    if named.is_file():
        return named
    parts = named.parts
    for folder in Path(config_path).resolve().parents:
        for start in range(len(parts)):
            candidate = folder.joinpath(*parts[start:])
            if candidate.is_file():
                return candidate
    return None


def read_deepspeed_section(r: Reading, key: str) -> dict[str, Any] | None:
    """The DeepSpeed config named by `key` (a path, or the mapping itself), read into `r`'s settings. Returns
    the DeepSpeed fields that need the training config to decide (`bf16`/`fp16` enabled: true or "auto")."""
    value = r.get(key)
    if value is None:
        return None
    if isinstance(value, Mapping):
        ds = read_deepspeed(value, f"{r.path} ({key})")
    else:
        found = find_companion(str(value), r.path)
        if found is None:
            r.not_modelled(key, f"DeepSpeed config {value} not found (looked beside {r.path} and above it): "
                                "ZeRO stage unknown, none assumed; give it with --from FILE, or --zero N")
            r.warn(f"{key}: {value} not found, so the ZeRO stage is unknown; give --zero N or --from {value}")
            return {}
        ds = read_deepspeed(load(found), str(found))
        r.companions.append(str(found))
    r.set(**dict(ds.settings.items()))
    zero = ds.settings.zero
    r.used(key, f"DeepSpeed {('ZeRO-' + zero) if zero else 'without ZeRO'} (read from {ds.path})")
    for use in ds.fields:
        r.uses[f"{key} -> {use.field}"] = replace(use, field=f"{key} -> {use.field}")
    r.warnings += [w for w in ds.warnings if w not in r.warnings]
    return {"bf16": _enabled(ds, "bf16"), "fp16": _enabled(ds, "fp16")}


def _enabled(ds: TrainingConfig, key: str) -> Any:
    use = next((u for u in ds.fields if u.field == f"{key}.enabled"), None)
    return None if use is None else use.value


def read_deepspeed(data: Mapping[str, Any], path: str) -> TrainingConfig:
    r = Reading(path, "deepspeed", data)
    stage = r.get("zero_optimization.stage")
    if stage is not None:
        if str(stage) not in ("0", "1", "2", "3"):
            raise r.error("zero_optimization.stage", f"{stage!r} is not a ZeRO stage (0, 1, 2 or 3)")
        r.used("zero_optimization.stage", f"--zero {stage} (DeepSpeed)", zero=str(stage), sharding="deepspeed")
    _deepspeed_buckets(r)
    for key, setting in (("offload_optimizer", "offload"), ("offload_param", "offload_params")):
        device = r.get(f"zero_optimization.{key}.device")
        if device in ("cpu", "nvme"):
            what = "optimizer states" if setting == "offload" else "parameters (and their gradients)"
            r.used(f"zero_optimization.{key}.device", f"{what} in CPU memory" +
                   (" (NVMe counted as CPU memory)" if device == "nvme" else ""), **{setting: True})
            if setting == "offload_params":
                r.set(offload=True)
        elif device is not None:
            r.ignored(f"zero_optimization.{key}.device", "none: kept on the GPU")
        r.rest_of(f"zero_optimization.{key}", ("pin_memory", "buffer_count", "buffer_size", "nvme_path",
                                               "max_in_cpu", "fast_init", "ratio"))
    for dtype, recipe in (("bf16", "bf16-mixed"), ("fp16", "fp16-mixed")):
        enabled = r.get(f"{dtype}.enabled")
        if enabled is True:
            r.used(f"{dtype}.enabled", f"--precision {recipe} (DeepSpeed keeps fp32 master weights and states)",
                   precision=recipe)
        elif enabled == "auto":
            r.ignored(f"{dtype}.enabled", "auto: the training config's bf16/fp16 decides")
        elif enabled is not None:
            r.ignored(f"{dtype}.enabled", "off")
        r.rest_of(dtype, ("loss_scale", "loss_scale_window", "initial_scale_power", "hysteresis", "min_loss_scale",
                          "immediate_grad_update"))
    for key, flag in (("train_micro_batch_size_per_gpu", "batch"), ("gradient_accumulation_steps",
                                                                     "gradient_accumulation")):
        value = r.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            r.used(key, f"--{flag.replace('_', '-')} {value}", **{flag: value})
        elif value == "auto":
            r.ignored(key, "auto: taken from the training config")
    _deepspeed_optimizer(r)
    r.rest_of("zero_optimization", ZERO_IGNORED)
    if r.get("zero_optimization.offload_param.device") in ("cpu", "nvme") and stage is not None and str(stage) != "3":
        raise r.error("zero_optimization.offload_param", f"parameter offload needs ZeRO stage 3, not {stage}")
    return r.finish(DEEPSPEED_IGNORED, containers=("zero_optimization", "bf16", "fp16", "optimizer"))


def _deepspeed_buckets(r: Reading) -> None:
    """The ZeRO bucket sizes (peftcalc/sharding/deepspeed.py), in elements; "auto" as transformers fills it."""
    for key, setting in DS_BUCKETS.items():
        name = next((f"zero_optimization.{k}" for k in (key, *[a for a, b in DS_ALIASES.items() if b == key])
                     if r.has(f"zero_optimization.{k}")), None)
        if name is None:
            continue
        value = r.get(name)
        if value == "auto" and setting in ("ds_reduce_bucket_size", "ds_prefetch_bucket_size",
                                           "ds_param_persistence_threshold"):
            r.used(name, "auto: transformers' size from the hidden size h (h*h, 0.9*h*h, 10*h)", ds_auto_buckets=True)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            r.used(name, f"{int(value):,} elements", **{setting: int(value)})
        else:
            raise r.error(name, f"{value!r} is not a number of elements")


def _deepspeed_optimizer(r: Reading) -> None:
    kind = str(r.get("optimizer.type", "")).lower()
    if not kind:
        return
    if kind in ("adam", "adamw", "fusedadam", "cpuadam"):
        r.used("optimizer.type", "adamw (DeepSpeed's fused Adam: no scratch)", optimizer="adamw", adamw_impl="fused")
    else:
        r.not_modelled("optimizer.type", f"DeepSpeed optimizer {kind}: not modelled, the command's --optimizer stands")
    r.rest_of("optimizer", ("params",))


def read_fsdp(r: Reading, flags_key: str | None, config_key: str, prefix: str = "fsdp_") -> bool:
    """An FSDP section: `flags_key` (the Trainer's and axolotl's legacy `fsdp: full_shard auto_wrap offload`)
    and `config_key` (`fsdp_config`, keys with or without the `fsdp_` prefix). True when FSDP is on."""
    flags = r.get(flags_key) if flags_key else None
    words = flags.split() if isinstance(flags, str) else [str(f) for f in flags] if isinstance(flags, list) else []
    config = r.get(config_key)
    if not words and not isinstance(config, Mapping):
        return False
    zero = "3"
    if words:
        chosen = [w for w in words if w.upper() in SHARDING]
        zero = SHARDING[chosen[0].upper()] if chosen else "3"
        r.used(flags_key, f"FSDP: --zero {zero}" + (" + parameter offload" if "offload" in words else ""), zero=zero,
               sharding="fsdp1")
        if "offload" in words:
            r.set(offload=True, offload_params=True)
    if isinstance(config, Mapping):
        zero = _fsdp_config(r, config_key, config, prefix, zero)
        r.rest_of(config_key, FSDP_IGNORED, prefix=prefix)
    if not r.has("num_processes"):
        r.warn(f"FSDP shards over the GPUs the launcher starts; {NOT_IN_FILE_GPUS}")
    return True


def _fsdp_config(r: Reading, key: str, config: Mapping[str, Any], prefix: str, zero: str) -> str:
    def name(field: str) -> str:
        return f"{key}.{prefix}{field}" if prefix + field in config else f"{key}.{field}"

    strategy = r.get(name("sharding_strategy"))
    if strategy is not None:
        zero = SHARDING.get(str(strategy).upper(), "3")
        r.used(name("sharding_strategy"), f"--zero {zero}", zero=zero)
    reshard = r.get(name("reshard_after_forward"))
    if reshard is not None:
        zero = "3" if reshard else "2"
        r.used(name("reshard_after_forward"), f"--zero {zero}", zero=zero)
    if strategy is None and reshard is None:
        r.set(zero=zero)
    if r.get(name("offload_params")) is True:
        if zero != "3":
            raise r.error(name("offload_params"), "FSDP parameter offload with a sharding strategy other than full "
                                                  "sharding is not modelled; use FULL_SHARD")
        r.used(name("offload_params"), "parameters, gradients and the optimizer step in CPU memory "
                                       "(--offload --offload-params)", offload=True, offload_params=True)
    elif r.lookup(name("offload_params")) is not None and r.has(name("offload_params")):
        r.ignored(name("offload_params"), "off")
    if r.get(name("activation_checkpointing")) is True:
        r.used(name("activation_checkpointing"), "--gradient-checkpointing", gradient_checkpointing=True)
    elif r.has(name("activation_checkpointing")):
        r.ignored(name("activation_checkpointing"), "off")
    fsdp_version(r, name("version"))
    prefetch = r.get(name("backward_prefetch"))
    if prefetch is not None:
        mode = PREFETCH.get(str(prefetch).upper())
        if mode is None:
            raise r.error(name("backward_prefetch"), f"{prefetch!r} is not BACKWARD_PRE, BACKWARD_POST or NO_PREFETCH")
        r.used(name("backward_prefetch"), f"FSDP1 backward prefetch: {mode}", fsdp_backward_prefetch=mode)
    forward = r.get(name("forward_prefetch"))
    if forward is not None:
        r.used(name("forward_prefetch"), f"FSDP1 forward prefetch: {bool(forward)}", fsdp_forward_prefetch=bool(forward))
    return zero


def fsdp_version(r: Reading, key: str) -> None:
    """accelerate's fsdp_version (1 unless 2: FSDP2's fully_shard, accelerate >= 1.6); FSDP1 when absent."""
    version = r.get(key)
    if version is None:
        r.set(sharding="fsdp1")
    elif str(version) in ("1", "2"):
        r.used(key, f"FSDP{version}", sharding=f"fsdp{version}")
    else:
        raise r.error(key, f"{version!r} is not an FSDP version (1 or 2)")


def read_accelerate(data: Mapping[str, Any], path: str) -> TrainingConfig:
    r = Reading(path, "accelerate", data)
    kind = str(r.get("distributed_type", "NO")).upper()
    processes = r.get("num_processes")
    if isinstance(processes, int) and processes > 0:
        r.used("num_processes", f"--gpus {processes} (accelerate counts processes over all machines)", gpus=processes)
    if kind == "DEEPSPEED":
        _accelerate_deepspeed(r)
    elif kind == "FSDP":
        r.used("distributed_type", "FSDP")
        read_fsdp(r, None, "fsdp_config")
    elif kind in ("MULTI_GPU", "NO"):
        r.used("distributed_type", "data parallel (DDP): --zero 0" if kind == "MULTI_GPU" else "one process",
               zero="0")
    else:
        r.not_modelled("distributed_type", f"{kind}: not a distribution peftcalc models")
    mixed = r.get("mixed_precision")
    if kind == "DEEPSPEED" and mixed in ("bf16", "fp16"):
        recipe = f"{mixed}-mixed"
        r.used("mixed_precision", f"--precision {recipe} (DeepSpeed keeps fp32 master weights and states)",
               precision=recipe)
    elif mixed is not None:
        r.ignored("mixed_precision", f"{mixed}: the autocast dtype; the precision recipe comes from the training "
                                     "config's dtype together with it")
    return r.finish(ACCELERATE_IGNORED, containers=("fsdp_config", "deepspeed_config"))


def _accelerate_deepspeed(r: Reading) -> None:
    r.used("distributed_type", "DeepSpeed")
    if r.has("deepspeed_config.deepspeed_config_file"):
        read_deepspeed_section(r, "deepspeed_config.deepspeed_config_file")
    stage = r.get("deepspeed_config.zero_stage")
    if stage is not None:
        r.used("deepspeed_config.zero_stage", f"--zero {stage} (DeepSpeed, its default buckets)", zero=str(stage),
               sharding="deepspeed")
    for key, setting in (("offload_optimizer_device", "offload"), ("offload_param_device", "offload_params")):
        device = r.get(f"deepspeed_config.{key}")
        if device in ("cpu", "nvme"):
            r.used(f"deepspeed_config.{key}", f"{setting.replace('_', ' ')} to CPU memory", **{setting: True})
            if setting == "offload_params":
                r.set(offload=True)
        elif device is not None:
            r.ignored(f"deepspeed_config.{key}", "none: kept on the GPU")
    r.rest_of("deepspeed_config", {"deepspeed_multinode_launcher": NO_EFFECT,
                                   "zero3_init_flag": "load-time only", "zero3_save_16bit_model":
                                   "also writes a consolidated 16-bit model at save time (disk, not modelled)",
                                   "gradient_accumulation_steps": NO_EFFECT, "gradient_clipping": NO_EFFECT})
