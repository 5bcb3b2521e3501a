"""Model merges on safetensors checkpoints: a LoRA adapter into its base (PEFT merge_and_unload), and task
arithmetic theta = base + sum_i w_i * (theta_i - base) (docs/method.md B.5) tensor by tensor.

Task arithmetic works on the files, not on a model object, so it is the same for an LLM and a VLM: every
tensor of the base is merged and written under the same name, into a shard of the same name, in the base's
layout (single file or shards + index). Each tensor is read (memory-mapped), merged in float32, and written
straight to its output shard, so peak memory is a few tensors, not a shard and not the model. Then the
output's key set, shapes and dtypes are checked against the base: a merge that silently drops or renames
tensors (mergekit 0.1.5 drops the language model of transformers-5 LLaVA checkpoints) fails here instead.
"""
from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from compass.errors import CompassError

INDEX_SUFFIX = ".safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# safetensors dtype names of floating tensors (merged); other dtypes (int buffers) are copied from the base
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
TORCH_DTYPE_NAMES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
HEADER_ALIGN = 8


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors name: F32, BF16, ...
    shape: tuple[int, ...]
    file: str  # shard file name inside the model directory
    start: int  # byte offsets of the data in that file
    end: int


@dataclass(frozen=True)
class Checkpoint:
    """The safetensors layout of a model directory: tensor name -> (dtype, shape, shard), in file order."""

    path: Path
    tensors: dict[str, TensorInfo]
    index_name: str | None  # e.g. model.safetensors.index.json, or None for a single file
    index_metadata: dict
    file_metadata: dict[str, dict[str, str]]  # shard -> its __metadata__

    @property
    def files(self) -> list[str]:
        return list(dict.fromkeys(info.file for info in self.tensors.values()))


def read_header(path: Path) -> tuple[dict, dict[str, str], int]:
    """The JSON header of a safetensors file (tensor entries in data order), its __metadata__, and where the
    data begins (offsets in the header are relative to it)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise CompassError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (size,) = struct.unpack("<Q", head)
        if size > 100_000_000:
            raise CompassError(f"{path}: not a safetensors file (header size {size})")
        try:
            header = json.loads(fh.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CompassError(f"{path}: not a safetensors file (header is not JSON: {err})") from None
    metadata = header.pop("__metadata__") if "__metadata__" in header else {}
    entries = dict(sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]))
    return entries, metadata, 8 + size


def read_checkpoint(model_dir: Path) -> Checkpoint:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CompassError(f"model directory not found: {model_dir}")
    indexes = sorted(model_dir.glob(f"*{INDEX_SUFFIX}"))
    if len(indexes) > 1:
        raise CompassError(f"{model_dir}: several safetensors indexes {[p.name for p in indexes]}; expected one")
    if indexes:
        index = json.loads(indexes[0].read_text())
        weight_map: dict[str, str] = index["weight_map"]
        files = list(dict.fromkeys(weight_map.values()))
        # "metadata" (total_size) is optional in the index format; keep what the base has
        index_name, index_metadata = indexes[0].name, index["metadata"] if "metadata" in index else {}
    elif (model_dir / SINGLE_FILE).is_file():
        files, weight_map, index_name, index_metadata = [SINGLE_FILE], None, None, {}
    else:
        found = sorted(p.name for p in model_dir.iterdir() if p.suffix in {".bin", ".pt", ".safetensors"})
        raise CompassError(f"{model_dir}: no {SINGLE_FILE} or *{INDEX_SUFFIX} (found {found or 'no weights'}); "
                           "merges read safetensors checkpoints only")
    tensors: dict[str, TensorInfo] = {}
    file_metadata = {}
    for name in files:
        path = model_dir / name
        if not path.is_file():
            raise CompassError(f"{model_dir}: shard {name} named in the index is missing")
        entries, metadata, data_start = read_header(path)
        file_metadata[name] = metadata
        for key, entry in entries.items():
            if weight_map is not None and weight_map.get(key) != name:
                raise CompassError(f"{path}: tensor {key!r} is not mapped to this shard in the index")
            begin, end = entry["data_offsets"]
            tensors[key] = TensorInfo(entry["dtype"], tuple(entry["shape"]), name, data_start + begin, data_start + end)
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise CompassError(f"{model_dir}: index names tensors that no shard holds, e.g. {missing[:3]}")
    return Checkpoint(model_dir, tensors, index_name, index_metadata, file_metadata)


def check_compatible(base: Checkpoint, other: Checkpoint, what: str = "model") -> None:
    """Same tensor names and shapes as the base (dtypes may differ: merges compute in float32)."""
    missing = [k for k in base.tensors if k not in other.tensors]
    extra = [k for k in other.tensors if k not in base.tensors]
    if missing:
        raise CompassError(f"{what} {other.path} lacks {len(missing)} tensor(s) of the base {base.path}, first {missing[0]!r}")
    if extra:
        raise CompassError(f"{what} {other.path} has {len(extra)} tensor(s) the base {base.path} lacks, first {extra[0]!r}")
    for key, info in base.tensors.items():
        theirs = other.tensors[key]
        if theirs.shape != info.shape:
            raise CompassError(f"{what} {other.path}: tensor {key!r} has shape {list(theirs.shape)}, the base has {list(info.shape)}")
        if (theirs.dtype in FLOAT_DTYPES) != (info.dtype in FLOAT_DTYPES):
            raise CompassError(f"{what} {other.path}: tensor {key!r} has dtype {theirs.dtype}, the base has {info.dtype}")


def check_output(base: Checkpoint, out_dir: Path, dtype: str | None) -> Checkpoint:
    """The written model must have exactly the base's tensors, shapes and dtypes (float dtypes -> `dtype` when set)."""
    out = read_checkpoint(out_dir)
    check_compatible(base, out, what="merged output")
    for key, info in base.tensors.items():
        expected = TORCH_DTYPE_NAMES[dtype] if dtype is not None and info.dtype in FLOAT_DTYPES else info.dtype
        if out.tensors[key].dtype != expected:
            raise CompassError(f"merged output {out_dir}: tensor {key!r} has dtype {out.tensors[key].dtype}, expected {expected}")
    return out


# --- streaming safetensors reader and writer -------------------------------------------------------------


def torch_dtype(name: str):
    import torch

    table = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64, "BOOL": torch.bool,
             "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
    if name not in table:
        raise CompassError(f"unsupported safetensors dtype {name!r}")
    return table[name]


class ShardReader:
    """Reads tensors with plain file reads into fresh tensors. Unlike a memory map (safe_open), pages read
    once do not stay resident in this process, so reading a whole checkpoint costs one tensor of memory."""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        self.files: dict[str, object] = {}

    def read(self, key: str):
        import torch

        info = self.ckpt.tensors[key]
        if info.file not in self.files:
            self.files[info.file] = open(self.ckpt.path / info.file, "rb", buffering=0)
        fh = self.files[info.file]
        tensor = torch.empty(info.shape, dtype=torch_dtype(info.dtype))
        view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        if len(view) != info.end - info.start:
            raise CompassError(f"{self.ckpt.path / info.file}: tensor {key!r} spans {info.end - info.start} bytes, "
                               f"its dtype and shape need {len(view)}")
        fh.seek(info.start)
        done = 0
        while done < len(view):
            got = fh.readinto(view[done:])
            if not got:
                raise CompassError(f"{self.ckpt.path / info.file}: file ends inside tensor {key!r}")
            done += got
        return tensor

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()
        self.files.clear()



class ShardWriter:
    """Writes one safetensors file tensor by tensor: the header comes first (names, dtypes, shapes, offsets are
    known from the base), then each tensor's bytes in header order, so only the tensor being written is held."""

    def __init__(self, path: Path, specs: dict[str, tuple[str, tuple[int, ...]]], metadata: dict[str, str]):
        header: dict = {"__metadata__": metadata} if metadata else {}
        offset = 0
        self.order = list(specs)
        self.sizes = {}
        for key, (dtype, shape) in specs.items():
            count = 1
            for dim in shape:
                count *= dim
            size = count * DTYPE_BYTES[dtype]
            header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            self.sizes[key] = size
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % HEADER_ALIGN)  # the format pads the header with spaces to 8 bytes
        self.fh = open(path, "wb")
        self.fh.write(struct.pack("<Q", len(raw)) + raw)
        self.next = 0

    def write(self, key: str, tensor) -> None:
        import torch

        if key != self.order[self.next]:
            raise CompassError(f"internal: wrote {key!r} but the header's next tensor is {self.order[self.next]!r}")
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        if data.nbytes != self.sizes[key]:
            raise CompassError(f"internal: tensor {key!r} has {data.nbytes} bytes, header says {self.sizes[key]}")
        self.fh.write(memoryview(data))
        self.next += 1

    def close(self) -> None:
        self.fh.close()
        if self.next != len(self.order):
            raise CompassError(f"internal: {len(self.order) - self.next} tensor(s) never written")


# --- task arithmetic -----------------------------------------------------------------------------------


def copy_non_weight_files(src: Path, dst: Path, skip: set[str]) -> list[str]:
    """Config, tokenizer, processor, chat template...: everything of `src` except weights and hidden files."""
    copied = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if not path.is_file() or any(p.startswith(".") for p in rel.parts) or rel.as_posix() in skip:
            continue
        if path.suffix == ".safetensors" or path.name.endswith(INDEX_SUFFIX):
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dst / rel)
        copied.append(rel.as_posix())
    return copied


def set_config_dtype(config_path: Path, dtype: str) -> None:
    """Record a changed dtype in config.json (top level and sub-configs) so from_pretrained loads it as such."""
    config = json.loads(config_path.read_text())

    def visit(node: dict) -> None:
        for key in ("dtype", "torch_dtype"):
            if key in node:
                node[key] = dtype
        for value in node.values():
            if isinstance(value, dict):
                visit(value)

    visit(config)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def task_arithmetic(base_dir: Path, finetuned: list[Path], weights: list[float], out_dir: Path,
                    dtype: str | None = None, progress: bool = True) -> dict:
    """theta = base + sum_i w_i * (theta_i - base), computed in float32 per tensor, written in the base's layout
    with the base's (or `dtype`'s) float dtypes. Non-float tensors are copied from the base. Returns metrics."""
    import torch
    from tqdm import tqdm

    if len(finetuned) != len(weights) or not finetuned:
        raise CompassError(f"task arithmetic needs one weight per finetuned model: {len(finetuned)} model(s), weights {weights}")
    if dtype is not None and dtype not in TORCH_DTYPE_NAMES:
        raise CompassError(f"dtype must be one of {sorted(TORCH_DTYPE_NAMES)} or unset, got {dtype!r}")
    base = read_checkpoint(base_dir)
    others = [read_checkpoint(path) for path in finetuned]
    for other in others:
        check_compatible(base, other, what="finetuned model")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_name = TORCH_DTYPE_NAMES.get(dtype)

    def out_dtype(info: TensorInfo) -> str:
        return out_name if out_name is not None and info.dtype in FLOAT_DTYPES else info.dtype

    base_reader, readers = ShardReader(base), [ShardReader(other) for other in others]
    total_bytes = changed = 0
    bar = tqdm(total=len(base.tensors), desc="task arithmetic", unit="tensor", disable=not progress)
    try:
        for file in base.files:
            keys = [k for k, info in base.tensors.items() if info.file == file]
            writer = ShardWriter(out_dir / file, {k: (out_dtype(base.tensors[k]), base.tensors[k].shape) for k in keys},
                                 base.file_metadata[file])
            try:
                for key in keys:
                    info = base.tensors[key]
                    theta = base_reader.read(key)
                    if info.dtype in FLOAT_DTYPES:
                        # in place on freshly read tensors: base, the running sum and one finetuned tensor in memory
                        theta0 = theta.to(torch.float32)
                        mixed = None
                        for reader, weight in zip(readers, weights):
                            task = reader.read(key).to(torch.float32).sub_(theta0).mul_(weight)
                            mixed = task if mixed is None else mixed.add_(task)
                            del task
                        mixed.add_(theta0)  # base + sum_i w_i (theta_i - base)
                        changed += not torch.equal(mixed, theta0)
                        theta = mixed.to(torch_dtype(out_dtype(info)))
                        del theta0, mixed
                    writer.write(key, theta)
                    total_bytes += writer.sizes[key]
                    del theta
                    bar.update(1)
            finally:
                writer.close()
    finally:
        bar.close()
        base_reader.close()
        for reader in readers:
            reader.close()

    if base.index_name is not None:
        index = {"metadata": {**base.index_metadata, "total_size": total_bytes},
                 "weight_map": {k: info.file for k, info in sorted(base.tensors.items())}}
        (out_dir / base.index_name).write_text(json.dumps(index, indent=2) + "\n")
    copied = copy_non_weight_files(base.path, out_dir, skip=set())
    if dtype is not None and (out_dir / "config.json").is_file():
        set_config_dtype(out_dir / "config.json", dtype)
    out = check_output(base, out_dir, dtype)
    return {"tensors": len(out.tensors), "changed_tensors": changed, "shards": len(out.files), "bytes": total_bytes,
            "models": len(finetuned), "weights": list(weights), "copied_files": copied}


# --- LoRA ---------------------------------------------------------------------------------------------


def model_class(model_dir: Path):
    """The transformers class named in config.json's `architectures` (what save_pretrained recorded)."""
    import transformers

    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        raise CompassError(f"{model_dir}: no config.json; a base model must be a transformers model directory")
    config = json.loads(config_path.read_text())
    architectures = config["architectures"] if "architectures" in config else None
    if not isinstance(architectures, list) or len(architectures) != 1:
        raise CompassError(f"{config_path}: expected exactly one entry in 'architectures', got {architectures}")
    try:
        return getattr(transformers, architectures[0])
    except AttributeError:
        raise CompassError(f"{config_path}: architecture {architectures[0]!r} is not a transformers class") from None


def merge_lora(base_dir: Path, adapter_dir: Path, out_dir: Path, dtype: str | None = None, extra=None) -> dict:
    """Fold a PEFT LoRA adapter into its base (merge_and_unload) and save safetensors in the base's layout
    (the shard size is the base's largest shard); tokenizer/processor files come from the base. `extra`, when
    given, is called on the merged model before it is saved (e.g. to put fully trained tensors that live
    outside the adapter in place); what it returns is reported as "extra"."""
    import torch
    from peft import PeftModel

    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise CompassError(f"{adapter_dir}: no adapter_config.json; expected a PEFT adapter directory")
    base = read_checkpoint(base_dir)
    load_dtype = "auto" if dtype is None else getattr(torch, dtype)
    model = model_class(base_dir).from_pretrained(str(base_dir), dtype=load_dtype)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    extra_result = extra(merged) if extra is not None else None
    # keep the base's sharding: one file stays one file; shards stay at most the base's largest shard
    shard_bytes = max((base_dir / f).stat().st_size for f in base.files) if base.index_name else 1 << 50
    merged.save_pretrained(str(out_dir), safe_serialization=True, max_shard_size=shard_bytes)
    written = {p.name for p in out_dir.iterdir()}
    copied = copy_non_weight_files(base_dir, out_dir, skip=written)
    out = check_output(base, out_dir, dtype)
    result = {"tensors": len(out.tensors), "shards": len(out.files), "copied_files": copied}
    return result if extra is None else {**result, "extra": extra_result}
