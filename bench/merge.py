"""Benchmark: `compass merge` task arithmetic vs mergekit 0.1.5 on the same checkpoints.

1. Timing and memory on two locally built Llama checkpoints (fp32, ~120 MB each, sharded at 50 MB): the base and
   a "finetuned" copy with seeded noise, theta = base + 0.25 * (ft - base). Each engine runs in a fresh Python
   process (imports and a shared torch warm-up done before the clock starts), so peak RSS is that merge's own; reported: merge wall time,
   peak RSS growth over the post-import RSS, and the ratio ours / mergekit. mergekit runs twice: with its
   defaults (5B output shards: the whole output is held before it is written) and with output shards matched
   to the base's 50 MB. The outputs are compared tensor by tensor.
2. Key-set check on a VLM: the tiny LLaVA-OneVision (transformers 5 layout, `language_model.model.*` keys)
   merged by both engines; each output's tensor names are compared with the base's.

mergekit is the `bench` extra (`pip install -c constraints.txt -e '.[bench]'`); it adds only mergekit,
immutables and sentencepiece to the pinned stack.

    .venv/bin/python bench/merge.py [--workdir DIR] [--hidden 512 --layers 4 --vocab 16000]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, sys, time
def vm_hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
job = json.loads(sys.argv[1])
import psutil, torch
torch.set_num_threads(1)
if job["engine"] == "ours":
    from compass.models.merge import task_arithmetic
else:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
# the same warm-up for both: first use of torch kernels faults in library code pages, which is not the merge's memory
a = torch.ones(1000); b = a.clone().sub_(a).mul_(0.5).add_(a).to(torch.float32); c = torch.stack([a, b]).sum(dim=0); del a, b, c
# peak = VmHWM of this process after resetting it here (ru_maxrss would also count the forked parent's pages)
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
rss0 = psutil.Process().memory_info().rss
t0 = time.perf_counter()
if job["engine"] == "ours":
    task_arithmetic(job["base"], [job["ft"]], [job["weight"]], job["out"], progress=False)
else:
    config = MergeConfiguration.model_validate({
        "merge_method": "task_arithmetic", "base_model": job["base"], "dtype": "float32",
        "models": [{"model": job["ft"], "parameters": {"weight": job["weight"]}}],
    })
    options = {"copy_tokenizer": False, "write_model_card": False, "quiet": True}
    if job["shard_size"]:
        options["out_shard_size"] = job["shard_size"]
    run_merge(config, job["out"], MergeOptions(**options))
wall = time.perf_counter() - t0
print(json.dumps({"wall_s": wall, "rss_start": rss0, "peak_rss": vm_hwm()}))
"""

SHARD = 50 * 10**6


def run_child(job: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(job)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"failed": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["growth_mib"] = (result["peak_rss"] - result["rss_start"]) / 2**20
    return result


def build_llama_pair(work: Path, hidden: int, layers: int, vocab: int) -> tuple[Path, Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    base, ft = work / "llama-base", work / "llama-ft"
    if (base / "config.json").exists() and (ft / "config.json").exists():
        return base, ft
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 2.6875), num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 128, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(base), max_shard_size=SHARD)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    model.save_pretrained(str(ft), max_shard_size=SHARD)
    return base, ft


def perturbed_copy(src: Path, dst: Path) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    gen = torch.Generator().manual_seed(1)
    for shard in dst.glob("*.safetensors"):
        tensors = load_file(str(shard))
        save_file({k: v + 0.1 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in tensors.items()},
                  str(shard), metadata={"format": "pt"})
    return dst


def tensors_of(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=16000)
    parser.add_argument("--repeats", type=int, default=5, help="runs per engine; the median time and the max memory are shown")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-merge-"))
    work.mkdir(parents=True, exist_ok=True)

    # --- 1. timing and memory on a Llama pair ---------------------------------------------------------
    base, ft = build_llama_pair(work, args.hidden, args.layers, args.vocab)
    size_mib = sum(p.stat().st_size for p in base.glob("*.safetensors")) / 2**20
    print(f"checkpoints: {size_mib:.0f} MiB each, {len(list(base.glob('*.safetensors')))} shards ({base})")
    engines = {"ours": ("ours", None), "mergekit (default 5B shards)": ("mergekit", None), "mergekit (50 MB shards)": ("mergekit", SHARD)}
    runs: dict[str, list[dict]] = {label: [] for label in engines}
    outs = {}
    for repeat in range(args.repeats):  # interleaved, so a noisy neighbour hits every engine alike
        for label, (engine, shard_size) in engines.items():
            out = outs[label] = work / f"out-{engine}-{shard_size}"
            shutil.rmtree(out, ignore_errors=True)
            runs[label].append(run_child({"engine": engine, "base": str(base), "ft": str(ft), "out": str(out), "weight": 0.25, "shard_size": shard_size}))
            if "failed" in runs[label][-1]:
                raise SystemExit(f"{label} failed: {runs[label][-1]['failed']}")
    results = {}
    for label, rs in runs.items():
        times = sorted(r["wall_s"] for r in rs)
        results[label] = {"wall_s": times[len(times) // 2], "min_s": times[0], "growth_mib": max(r["growth_mib"] for r in rs), "out": outs[label]}
        print(f"  {label}: times {[round(t, 2) for t in times]} s, peak RSS growth {[round(r['growth_mib']) for r in rs]} MiB")
    ours_t, mk_t = tensors_of(results["ours"]["out"]), tensors_of(results["mergekit (default 5B shards)"]["out"])
    same_keys = ours_t.keys() == mk_t.keys()
    max_diff = max((ours_t[k] - mk_t[k]).abs().max().item() for k in ours_t) if same_keys else float("nan")

    # min is the run least disturbed by other processes on a shared machine; the median is shown beside it
    print(f"\n{'engine':<30} {'min s':>7} {'median s':>9} {'peak RSS growth MiB':>20}")
    for label, r in results.items():
        print(f"{label:<30} {r['min_s']:>7.2f} {r['wall_s']:>9.2f} {r['growth_mib']:>20.1f}")
    ours = results["ours"]
    for label in list(results)[1:]:
        other = results[label]
        print(f"ours / {label}: time ratio {ours['min_s'] / other['min_s']:.2f} (min), {ours['wall_s'] / other['wall_s']:.2f} (median); "
              f"peak-memory ratio {ours['growth_mib'] / other['growth_mib']:.2f}")
    print(f"outputs: same tensor names {same_keys}, max |ours - mergekit| = {max_diff}")

    # --- 2. key-set check on a VLM -------------------------------------------------------------------------
    from compass.errors import CompassError
    from compass.models.merge import check_output, read_checkpoint
    from compass.models.tiny import build_tiny_tokenizer, build_tiny_vlm

    vlm = work / "vlm-base"
    if not (vlm / "config.json").exists():
        build_tiny_vlm(vlm, build_tiny_tokenizer(work / "tokenizer"))
    vlm_ft = perturbed_copy(vlm, work / "vlm-ft")
    base_keys = set(read_checkpoint(vlm).tensors)
    lm_keys = {k for k in base_keys if "language_model" in k}
    print(f"\nVLM (tiny LLaVA-OneVision, transformers 5 layout): {len(base_keys)} tensors, {len(lm_keys)} language-model tensors")
    for engine in ("ours", "mergekit"):
        out = work / f"vlm-out-{engine}"
        shutil.rmtree(out, ignore_errors=True)
        result = run_child({"engine": engine, "base": str(vlm), "ft": str(vlm_ft), "out": str(out), "weight": 0.25, "shard_size": None})
        if "failed" in result:
            print(f"  {engine:<9} failed: {result['failed']}")
            continue
        keys = set(read_checkpoint(out).tensors)
        missing = base_keys - keys
        verdict = "ok"
        try:
            check_output(read_checkpoint(vlm), out, None)
        except CompassError as err:
            verdict = f"compass check refuses it: {str(err)[:110]}..."
        lm_written = sum("language_model" in k for k in keys)
        print(f"  {engine:<9} exit 0: {len(keys)} tensors written ({lm_written} of {len(lm_keys)} language-model tensors), "
              f"{len(missing)} base names missing; {verdict}")


if __name__ == "__main__":
    main()
