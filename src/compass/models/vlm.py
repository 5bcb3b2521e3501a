"""VLM composition and decomposition: SigLIP vision tower + projector + LLM, as LLaVA-OneVision (the only family
compose/decompose handle; the others train inside the VLM with `--train llm`)."""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

from compass.errors import CompassError
from compass.io import write_json_atomic

from compass.models.processors import ImageOnlyOnevisionProcessor, save_processor
from compass.vocab import IMAGE_TOKEN, VIDEO_TOKEN


def load_processor(path: str | Path):
    """The processor of a VLM directory (any supported family; torchvision-free where needed)."""
    from compass.models.processors import load_processor as load

    return load(path)


# --- composition -----------------------------------------------------------------------------------------
# A VLM here is LLaVA-OneVision: vision tower -> projector (Linear, act, Linear) -> LLM. The projector part
# also carries `image_newline`, the learned vector that ends each row of AnyRes patch features: like the
# projector it lives in the LLM's hidden space and is trained together with it.

PROJECTOR_WEIGHTS = "projector.safetensors"
PROJECTOR_CONFIG = "projector_config.json"
PROJECTOR_FORMAT = "compass-llava-onevision-projector/1"
PROJECTOR_TENSORS = ("linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias", "image_newline")
# VLM config keys that describe how vision features reach the LLM; they travel with the projector.
PROJECTOR_SETTINGS = (
    "projector_hidden_act",
    "multimodal_projector_bias",
    "vision_feature_layer",
    "vision_feature_select_strategy",
    "image_grid_pinpoints",
    "vision_aspect_ratio",
)
VISION_TYPES = ("siglip", "siglip_vision_model")


@dataclass(frozen=True)
class ProjectorShape:
    """linear_1: in_features -> hidden; linear_2: hidden -> out_features; image_newline: out_features."""

    in_features: int
    hidden: int
    out_features: int
    newline: int


def projector_shape(tensors: dict) -> ProjectorShape:
    w1, w2 = tensors["linear_1.weight"], tensors["linear_2.weight"]
    if w1.shape[0] != w2.shape[1]:
        raise CompassError(
            f"projector is inconsistent: linear_1 outputs {w1.shape[0]} but linear_2 takes {w2.shape[1]}"
        )
    return ProjectorShape(
        in_features=w1.shape[1], hidden=w1.shape[0], out_features=w2.shape[0], newline=tensors["image_newline"].shape[0]
    )


def check_dimensions(vision_config, projector: ProjectorShape, text_config, vision_feature_layer: int | list[int] = -1,
                     ) -> None:
    """Vision hidden -> projector -> LLM hidden must chain, e.g. SigLIP2-so400m 1152 -> 1152x4096 -> 4096x4096 ->
    LLM-JP-4-8B 4096. Each mismatch names both sizes."""
    layers = 1 if isinstance(vision_feature_layer, int) else len(vision_feature_layer)
    vision_out = vision_config.hidden_size * layers
    problems = []
    if projector.in_features != vision_out:
        what = f"vision tower hidden size {vision_config.hidden_size}" + (f" x {layers} feature layers" if layers > 1 else "")
        problems.append(f"projector input {projector.in_features} != {what}")
    if projector.hidden != text_config.hidden_size:
        problems.append(
            f"projector inner size {projector.hidden} != LLM hidden size {text_config.hidden_size} "
            "(LLaVA-OneVision's projector maps to the LLM width and stays there)"
        )
    if projector.out_features != text_config.hidden_size:
        problems.append(f"projector output {projector.out_features} != LLM hidden size {text_config.hidden_size}")
    if projector.newline != text_config.hidden_size:
        problems.append(f"image_newline size {projector.newline} != LLM hidden size {text_config.hidden_size}")
    if problems:
        raise CompassError("dimension mismatch: " + "; ".join(problems))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CompassError(f"missing file: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CompassError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def vision_config_of(path: Path):
    """The SigLIP vision config of a vision-tower dir: a SiglipVisionModel or a full (hub) SiglipModel."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    if config.model_type not in VISION_TYPES:
        raise CompassError(
            f"vision tower {path}: model_type {config.model_type!r} is not supported; expected one of {VISION_TYPES} "
            "(a SigLIP / SigLIP2 fixed-resolution checkpoint)"
        )
    vision = config.vision_config if config.model_type == "siglip" else config
    vision = copy.deepcopy(vision)
    # LLaVA takes per-patch features; SigLIP's attention-pooling head is unused, so it is not part of the VLM.
    vision.vision_use_head = False
    return vision


def text_config_of(path: Path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    sub_configs = config.sub_configs
    if "vision_config" in sub_configs or "text_config" in sub_configs:
        raise CompassError(
            f"LLM {path}: model_type {config.model_type!r} is a composite model, not a causal LM; "
            "run `compass decompose` on it and pass its llm/ directory"
        )
    return config


def image_processor_settings(vision_dir: Path) -> dict:
    """The SigLIP image preprocessing saved beside a vision tower (preprocessor_config.json, or nested in
    processor_config.json as transformers 5 writes it)."""
    plain, nested = vision_dir / "preprocessor_config.json", vision_dir / "processor_config.json"
    if plain.is_file():
        data = _read_json(plain)
    elif nested.is_file() and "image_processor" in _read_json(nested):
        data = _read_json(nested)["image_processor"]
    else:
        raise CompassError(f"vision tower {vision_dir}: no image processor settings (preprocessor_config.json)")
    keys = ("size", "image_mean", "image_std", "resample", "rescale_factor", "do_rescale", "do_normalize",
            "do_convert_rgb")
    return {k: data[k] for k in keys if k in data}


def grid_pinpoints(image_size: int, max_tiles_per_side: int) -> list[list[int]]:
    """AnyRes resolutions: every (i, j) multiple of the tile size up to N x N (N=6 at 384 px is OneVision's list)."""
    return [[image_size * i, image_size * j] for i in range(1, max_tiles_per_side + 1)
            for j in range(1, max_tiles_per_side + 1)]


@dataclass
class Projector:
    tensors: dict  # PROJECTOR_TENSORS -> torch.Tensor
    settings: dict  # PROJECTOR_SETTINGS -> value

    @property
    def shape(self) -> ProjectorShape:
        return projector_shape(self.tensors)


def _tensor_index(model_dir: Path) -> dict[str, str]:
    """tensor name -> safetensors file of a (possibly sharded) HF directory."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return dict(_read_json(index)["weight_map"])
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise CompassError(f"{model_dir}: no model.safetensors or model.safetensors.index.json (weights must be safetensors)")
    from safetensors import safe_open

    with safe_open(str(single), "pt") as fh:
        return {name: single.name for name in fh.keys()}


def projector_from_vlm(vlm_dir: Path) -> Projector:
    """Read only the projector tensors of a LLaVA-OneVision dir (cheap even for an 8B VLM). Key prefixes differ
    between checkpoint layouts (`multi_modal_projector.` vs `model.multi_modal_projector.`), so each tensor is found
    by its unique suffix."""
    from safetensors import safe_open

    config = _read_json(vlm_dir / "config.json")
    if config["model_type"] != "llava_onevision":
        raise CompassError(f"projector source {vlm_dir}: model_type {config['model_type']!r}, expected 'llava_onevision'")
    index = _tensor_index(vlm_dir)
    tensors = {}
    for name in PROJECTOR_TENSORS:
        suffix = name if name == "image_newline" else f"multi_modal_projector.{name}"
        hits = [key for key in index if key == suffix or key.endswith("." + suffix)]
        if len(hits) != 1:
            raise CompassError(f"projector source {vlm_dir}: expected one tensor named *{suffix}, found {hits}")
        with safe_open(str(vlm_dir / index[hits[0]]), "pt") as fh:
            tensors[name] = fh.get_tensor(hits[0])
    from transformers import LlavaOnevisionConfig

    full = LlavaOnevisionConfig.from_pretrained(str(vlm_dir))
    settings = {key: copy.deepcopy(full.to_dict()[key]) for key in PROJECTOR_SETTINGS}
    return Projector(tensors, settings)


def load_projector(path: Path) -> Projector:
    """A projector dir written by decompose, or the projector inside a LLaVA-OneVision dir."""
    path = Path(path)
    if (path / PROJECTOR_CONFIG).is_file():
        from safetensors.torch import load_file

        config = _read_json(path / PROJECTOR_CONFIG)
        if config["format"] != PROJECTOR_FORMAT:
            raise CompassError(f"{path / PROJECTOR_CONFIG}: format {config['format']!r}, expected {PROJECTOR_FORMAT!r}")
        tensors = load_file(str(path / PROJECTOR_WEIGHTS))
        if sorted(tensors) != sorted(PROJECTOR_TENSORS):
            raise CompassError(f"{path / PROJECTOR_WEIGHTS}: tensors {sorted(tensors)}, expected {sorted(PROJECTOR_TENSORS)}")
        return Projector(tensors, {key: config[key] for key in PROJECTOR_SETTINGS})
    if (path / "config.json").is_file():
        return projector_from_vlm(path)
    raise CompassError(f"projector {path}: neither a projector dir ({PROJECTOR_CONFIG}) nor a VLM dir (config.json)")


def save_projector(projector: Projector, out_dir: Path) -> None:
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    shape = projector.shape
    save_file({k: projector.tensors[k].contiguous() for k in PROJECTOR_TENSORS}, str(out_dir / PROJECTOR_WEIGHTS),
              metadata={"format": "pt"})
    write_json_atomic(out_dir / PROJECTOR_CONFIG, {
        "format": PROJECTOR_FORMAT,
        "in_features": shape.in_features,
        "hidden": shape.hidden,
        "out_features": shape.out_features,
        "dtype": _dtype_name(projector.tensors["linear_1.weight"].dtype),
        **projector.settings,
    })


def fresh_projector(vision_config, text_config, seed: int, settings: dict, dtype) -> Projector:
    """A new projector, initialised from `seed` the way transformers initialises LLaVA-OneVision's (nn.Linear
    defaults, image_newline ~ N(0, 1/sqrt(hidden)))."""
    import torch

    layers = settings["vision_feature_layer"]
    in_features = vision_config.hidden_size * (1 if isinstance(layers, int) else len(layers))
    hidden = text_config.hidden_size
    bias = settings["multimodal_projector_bias"]
    generator = torch.manual_seed(seed)
    linear_1 = torch.nn.Linear(in_features, hidden, bias=bias)
    linear_2 = torch.nn.Linear(hidden, hidden, bias=bias)
    newline = torch.randn(hidden, generator=generator) / math.sqrt(hidden)
    tensors = {
        "linear_1.weight": linear_1.weight.detach(), "linear_1.bias": linear_1.bias.detach(),
        "linear_2.weight": linear_2.weight.detach(), "linear_2.bias": linear_2.bias.detach(),
        "image_newline": newline,
    }
    return Projector({k: v.to(dtype).clone() for k, v in tensors.items()}, dict(settings))


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _no_missing(info: dict, what: str) -> None:
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise CompassError(f"{what}: {len(missing)} weights missing from its files, e.g. {missing[:3]}")


def _param_dtypes(module) -> set:
    return {p.dtype for p in module.parameters()}


def _only_dtype(module, what: str):
    dtypes = _param_dtypes(module)
    if len(dtypes) != 1:
        raise CompassError(f"{what} mixes parameter dtypes {sorted(str(d) for d in dtypes)}")
    return next(iter(dtypes))


def compose_vlm(
    vision_dir: Path,
    llm_dir: Path,
    out_dir: Path,
    *,
    projector: Projector | None = None,
    seed: int = 0,
    fresh_settings: dict | None = None,
    anyres_max_tiles: int = 6,
    dtype: str = "auto",
) -> dict:
    """Write a LLaVA-OneVision directory (weights, config, generation config, processor) from a SigLIP vision tower,
    a projector (given, or fresh from `seed` with `fresh_settings`) and a causal-LM directory. Dimensions are
    checked from configs before any weight is loaded. Returns a summary for the run's metrics."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers import LlavaOnevisionImageProcessorPil, SiglipVisionModel

    vision_dir, llm_dir, out_dir = Path(vision_dir), Path(llm_dir), Path(out_dir)
    vision_config = vision_config_of(vision_dir)
    text_config = text_config_of(llm_dir)
    image_settings = image_processor_settings(vision_dir)
    size = image_settings["size"]
    if (size["height"], size["width"]) != (vision_config.image_size, vision_config.image_size):
        raise CompassError(
            f"vision tower {vision_dir}: image processor size {size['height']}x{size['width']} != the tower's "
            f"image_size {vision_config.image_size} (its position embeddings are fixed)"
        )
    if projector is not None:
        check_dimensions(vision_config, projector.shape, text_config, projector.settings["vision_feature_layer"])
    tokenizer = AutoTokenizer.from_pretrained(str(llm_dir))
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_id is None or image_token_id == tokenizer.unk_token_id:
        raise CompassError(
            f"LLM {llm_dir}: its tokenizer has no {IMAGE_TOKEN} token, which marks where image features go; "
            "add it (and resize the embeddings) before composing"
        )
    if image_token_id >= text_config.vocab_size:
        raise CompassError(f"LLM {llm_dir}: {IMAGE_TOKEN} id {image_token_id} >= vocab_size {text_config.vocab_size}")
    video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    if video_token_id is None or video_token_id == tokenizer.unk_token_id:
        video_token_id = image_token_id  # videos are not used by compass; the id only has to exist

    # A missing weight would be silently initialised at random by from_pretrained: refuse it instead. Unexpected
    # ones are fine (a hub SiglipModel also holds the text tower and the pooling head, which the VLM doesn't use).
    llm, info = AutoModelForCausalLM.from_pretrained(str(llm_dir), dtype="auto", output_loading_info=True)
    _no_missing(info, f"LLM {llm_dir}")
    vision, info = SiglipVisionModel.from_pretrained(str(vision_dir), config=vision_config, dtype="auto",
                                                     output_loading_info=True)
    _no_missing(info, f"vision tower {vision_dir}")
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype != "auto" and dtype not in dtypes:
        raise CompassError(f"dtype {dtype!r}: expected 'auto' or one of {sorted(dtypes)}")
    target = _only_dtype(llm, f"LLM {llm_dir}") if dtype == "auto" else dtypes[dtype]
    casts = []
    for part, module in (("vision tower", vision), ("LLM", llm)):
        found = _only_dtype(module, part)
        if found != target:
            module.to(target)
            casts.append(f"{part} {_dtype_name(found)} -> {_dtype_name(target)}")
    if projector is None:
        if fresh_settings is None:
            raise CompassError("compose without a projector needs the fresh projector's settings")
        settings = {**fresh_settings, "image_grid_pinpoints": grid_pinpoints(vision_config.image_size, anyres_max_tiles)}
        missing = sorted(set(PROJECTOR_SETTINGS) - set(settings))
        if missing:
            raise CompassError(f"fresh projector: missing settings {missing}")
        projector = fresh_projector(vision_config, text_config, seed, settings, target)
        check_dimensions(vision_config, projector.shape, text_config, settings["vision_feature_layer"])
    elif projector.tensors["linear_1.weight"].dtype != target:
        casts.append(f"projector {_dtype_name(projector.tensors['linear_1.weight'].dtype)} -> {_dtype_name(target)}")
        projector = Projector({k: v.to(target) for k, v in projector.tensors.items()}, projector.settings)

    config = LlavaOnevisionConfig(
        vision_config=_portable(vision.config),
        text_config=_portable(llm.config),
        image_token_index=image_token_id,
        video_token_index=video_token_id,
        tie_word_embeddings=llm.config.tie_word_embeddings,
        **projector.settings,
    )
    config.dtype = target
    with torch.device("meta"):
        vlm = LlavaOnevisionForConditionalGeneration(config)
    # Put the loaded parts in place of the empty (meta) ones: no copy, every tensor is the source's.
    if type(vlm.model.language_model) is not type(llm.base_model):
        raise CompassError(
            f"LLM {llm_dir}: base model {type(llm.base_model).__name__} is not the {type(vlm.model.language_model).__name__} "
            "that its config implies"
        )
    vlm.model.vision_tower = vision
    vlm.model.language_model = llm.base_model
    vlm.lm_head = llm.get_output_embeddings()
    vlm.model.multi_modal_projector.load_state_dict(
        {k: v for k, v in projector.tensors.items() if k != "image_newline"}, strict=True, assign=True
    )
    vlm.model.image_newline = torch.nn.Parameter(projector.tensors["image_newline"], requires_grad=True)
    left = [name for name, t in [*vlm.named_parameters(), *vlm.named_buffers()] if t.is_meta]
    if left:
        raise CompassError(f"compose left tensors without values: {left[:5]}")
    vlm.generation_config = llm.generation_config
    out_dir.mkdir(parents=True, exist_ok=True)
    vlm.save_pretrained(str(out_dir), safe_serialization=True)
    _check_saved_tensors(vlm, out_dir)

    image_processor = LlavaOnevisionImageProcessorPil(
        **image_settings, image_grid_pinpoints=projector.settings["image_grid_pinpoints"]
    )
    processor = ImageOnlyOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(vision_config.image_size // vision_config.patch_size) ** 2,
        vision_feature_select_strategy=projector.settings["vision_feature_select_strategy"],
        chat_template=tokenizer.chat_template,
        image_token=IMAGE_TOKEN,
        vision_aspect_ratio=projector.settings["vision_aspect_ratio"],
    )
    save_processor(processor, out_dir, "llava_onevision")
    shape = projector.shape
    return {
        "vision_hidden": vision_config.hidden_size,
        "projector": [shape.in_features, shape.hidden, shape.out_features],
        "llm_hidden": text_config.hidden_size,
        "parameters": sum(p.numel() for p in vlm.parameters()),
        "dtype": _dtype_name(target),
        "casts": casts,
    }


def _portable(config) -> dict:
    """A part's config as a VLM sub-config: without where it was loaded from, its own class and load dtype (the VLM's
    dtype is set once), so composing the same parts from any place writes the same bytes."""
    return {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "architectures", "dtype")}


def _check_saved_tensors(model, out_dir: Path) -> None:
    """Every distinct tensor of the in-memory model must be in the written files (guards against a layout that
    silently drops a part, as mergekit does with LLaVA checkpoints)."""
    distinct = {t.data_ptr() for t in model.state_dict().values()}
    saved = _tensor_index(out_dir)
    if len(saved) != len(distinct):
        raise CompassError(f"{out_dir}: wrote {len(saved)} tensors but the model has {len(distinct)}")


def decompose_vlm(vlm_dir: Path, vision_out: Path, projector_out: Path, llm_out: Path) -> dict:
    """Split a LLaVA-OneVision dir into a SigLIP vision tower dir (+ its image processor), a projector dir and a
    causal-LM dir (+ the VLM's tokenizer and chat template, ready for text-only training)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlavaOnevisionForConditionalGeneration
    from transformers import SiglipImageProcessorPil

    vlm_dir = Path(vlm_dir)
    config = AutoConfig.from_pretrained(str(vlm_dir))
    if config.model_type != "llava_onevision":
        raise CompassError(f"VLM {vlm_dir}: model_type {config.model_type!r}, expected 'llava_onevision'")
    if config.vision_config.model_type != "siglip_vision_model":
        raise CompassError(f"VLM {vlm_dir}: vision tower {config.vision_config.model_type!r}, expected 'siglip_vision_model'")
    processor = load_processor(vlm_dir)
    vlm, info = LlavaOnevisionForConditionalGeneration.from_pretrained(str(vlm_dir), dtype="auto", output_loading_info=True)
    _no_missing(info, f"VLM {vlm_dir}")

    vision = vlm.model.vision_tower
    vision.save_pretrained(str(vision_out), safe_serialization=True)
    image_processor = processor.image_processor
    SiglipImageProcessorPil(
        size=dict(image_processor.size),
        image_mean=list(image_processor.image_mean),
        image_std=list(image_processor.image_std),
        resample=image_processor.resample,
        rescale_factor=image_processor.rescale_factor,
        do_rescale=image_processor.do_rescale,
        do_normalize=image_processor.do_normalize,
        do_convert_rgb=image_processor.do_convert_rgb,
    ).save_pretrained(str(vision_out))

    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(vlm.config.text_config)
    if type(llm.base_model) is not type(vlm.model.language_model):
        raise CompassError(f"VLM {vlm_dir}: language model {type(vlm.model.language_model).__name__} has no causal-LM class")
    setattr(llm, llm.base_model_prefix, vlm.model.language_model)
    llm.set_output_embeddings(vlm.lm_head)
    left = [name for name, t in [*llm.named_parameters(), *llm.named_buffers()] if t.is_meta]
    if left:
        raise CompassError(f"decompose left LLM tensors without values: {left[:5]}")
    llm.generation_config = vlm.generation_config
    llm.save_pretrained(str(llm_out), safe_serialization=True)
    _check_saved_tensors(llm, Path(llm_out))
    processor.tokenizer.save_pretrained(str(llm_out))

    projector_module = vlm.model.multi_modal_projector
    tensors = {f"{k}": v.detach() for k, v in projector_module.state_dict().items()}
    tensors["image_newline"] = vlm.model.image_newline.detach()
    settings = {key: copy.deepcopy(vlm.config.to_dict()[key]) for key in PROJECTOR_SETTINGS}
    projector = Projector(tensors, settings)
    save_projector(projector, Path(projector_out))
    shape = projector.shape
    return {
        "vision_hidden": vlm.config.vision_config.hidden_size,
        "projector": [shape.in_features, shape.hidden, shape.out_features],
        "llm_hidden": vlm.config.text_config.hidden_size,
        "parameters": {
            "vision": sum(p.numel() for p in vision.parameters()),
            "projector": sum(t.numel() for t in tensors.values()),
            "llm": sum(p.numel() for p in llm.parameters()),
        },
    }
