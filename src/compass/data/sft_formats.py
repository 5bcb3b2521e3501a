"""SFT data in the formats people already have -> SftExample (messages + image paths), detected or given.

Formats (the exact shapes of the published datasets):
  messages           TRL conversational language modeling: {"messages": [{"role", "content"}]}; `content` a string
                     or a list of parts [{"type": "image"}, {"type": "text", "text": ...}]; `images` optional (VLM)
  prompt_completion  TRL prompt-completion: {"prompt", "completion"}, each a string (standard: becomes one user and
                     one assistant turn) or a message list (conversational); `images` optional (VLM)
  sharegpt           {"conversations": [{"from": "system"|"human"|"gpt", "value"}]} (OpenHermes-2.5, ShareGPT dumps);
                     "user"/"assistant" are accepted as `from` too
  alpaca             {"instruction", "input", "output"} (tatsu-lab/alpaca): the user turn is the instruction, followed
                     by the input after a blank line when there is one
  trace, doc_example compass's own Trace / DocExample records

Rows come from a JSONL file (row = line number), a parquet file, a directory of either laid out like a hub dataset,
or a hub dataset id (`datasets.load_dataset`, with split, config and revision; the resolved commit is recorded).
A file's format is detected from its first row (or given), and every later row must fit it; a row that fits no
format is one error line naming the row and what was expected.

Images: a path (relative to the file it is written in), a {"bytes", "path"} dict as parquet/hub rows carry them, or a
PIL image. Bytes and PIL images are written once, named by their sha256, into the caller's image folder, so the
training code sees paths only. Within message text, images sit where the parts list puts them (as `<image>` marks).
"""
from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compass.errors import CompassError
from compass.io import iter_numbered_json_objects

IMAGE_MARK = "<image>"
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}

SftFormat = Literal["messages", "prompt_completion", "sharegpt", "alpaca", "trace", "doc_example"]
SFT_FORMATS: tuple[str, ...] = ("messages", "prompt_completion", "sharegpt", "alpaca", "trace", "doc_example")
EXPECTED = {
    "messages": "a 'messages' list of {role: system|user|assistant, content} (TRL conversational)",
    "prompt_completion": "'prompt' and 'completion', strings or message lists (TRL prompt-completion)",
    "sharegpt": "a 'conversations' list of {from: system|human|gpt, value} (ShareGPT)",
    "alpaca": "'instruction', 'input' and 'output' strings (alpaca)",
    "trace": "a compass Trace record",
    "doc_example": "a compass DocExample record",
}
LOCAL_SUFFIXES = (".jsonl", ".parquet")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class SftExample:
    id: str
    messages: list[dict]  # role/content, content a string (images as <image> marks where they go)
    images: list[Path] = field(default_factory=list)


def expected_any() -> str:
    return "; or ".join(EXPECTED[name] for name in SFT_FORMATS)


# --- reading rows from files or the hub -------------------------------------------------------------------


@dataclass
class Row:
    where: str  # 'file.jsonl:7' / 'file.parquet row 3' / 'owner/name[train] row 3'
    index: int  # 0-based position in the split
    data: dict[str, Any]
    base_dir: Path | None  # relative image paths resolve here


@dataclass
class LoadedRows:
    rows: list[Row]
    files: dict[str, str]  # local file -> sha256 (empty for a hub dataset)
    hub_id: str | None = None
    revision: str | None = None  # the resolved hub commit (or the revision asked for, when the hub cannot say)


def _jsonl_rows(path: Path) -> Iterator[Row]:
    for index, (lineno, data) in enumerate(iter_numbered_json_objects(path)):
        yield Row(f"{path}:{lineno}", index, data, path.parent)


def _file_rows(path: Path, start: int = 0) -> list[Row]:
    if path.suffix == ".jsonl":
        rows = list(_jsonl_rows(path))
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = [Row(f"{path} row {i + 1}", i, data, path.parent) for i, data in enumerate(pq.read_table(path).to_pylist())]
    else:
        raise CompassError(f"{path}: unsupported file type {path.suffix!r}; use {' or '.join(LOCAL_SUFFIXES)} (or a hub dataset id)")
    for row in rows:
        row.index += start
    return rows


def data_files(path: Path) -> list[Path]:
    """A .jsonl/.parquet file, or the sorted .jsonl and .parquet shards of a directory (hidden files skipped)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CompassError(f"no such file or directory: {path}")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in LOCAL_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise CompassError(f"no .jsonl or .parquet files in directory {path}")
    return files


def load_rows(location: str | Path, split: str = "train", *, hub_config: str | None = None,
              revision: str | None = None) -> LoadedRows:
    """Rows of one split: a local .jsonl/.parquet file, a hub-like directory of split files, or a hub dataset id."""
    from compass.data.sources.base import local_split_files
    from compass.io import sha256_file

    path = Path(location)
    if path.is_file() or path.is_dir():
        files = [path] if path.is_file() else local_split_files(path, split)
        rows: list[Row] = []
        for file in files:
            rows.extend(_file_rows(file, start=len(rows)))
        return LoadedRows(rows, {file.as_posix(): sha256_file(file) for file in files})
    text = str(location)
    if path.suffix in LOCAL_SUFFIXES or not _HUB_ID.match(text):
        raise CompassError(f"no such file or directory: {text} (and it is not a hub dataset id like 'HuggingFaceH4/ultrafeedback_binarized')")
    return _hub_rows(text, split, hub_config, revision)


def _hub_rows(hub_id: str, split: str, hub_config: str | None, revision: str | None) -> LoadedRows:
    import datasets

    from compass.hub import HubRef, resolve_revision

    # the commit the name points at now (online: the hub; offline: the local hub cache): loaded and recorded
    commit = resolve_revision(HubRef("dataset", hub_id, revision))
    try:
        dataset = datasets.load_dataset(hub_id, hub_config, split=split, revision=commit)
    except Exception as err:  # datasets raises many types (offline, missing config, bad split): one clear line
        raise CompassError(f"could not load hub dataset {hub_id!r} (config {hub_config!r}, split {split!r}, revision "
                           f"{revision or 'main'} = {commit}): {type(err).__name__}: {err}") from None
    where = f"{hub_id}[{split}]"
    rows = [Row(f"{where} row {i + 1}", i, data, None) for i, data in enumerate(dataset)]
    return LoadedRows(rows, {}, hub_id=hub_id, revision=commit)


def hub_refs(sources: Sequence["DataSource"]) -> list:
    """The hub datasets of a mix, for the runner's cache key (`hub_inputs` of a stage)."""
    from compass.hub import HubRef

    return [HubRef("dataset", s.hub_id, s.revision) for s in sources if s.hub_id is not None]


# --- format detection and conversion ----------------------------------------------------------------------


def detect_sft_format(row: dict[str, Any]) -> str | None:
    """The format a row is shaped like, or None. compass records first: a Trace also has `messages`."""
    if "question_id" in row and "cot_placement" in row:
        return "doc_example"
    if "problem_id" in row and "raw_output" in row:
        return "trace"
    if "messages" in row:
        return "messages"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    return None


class RowError(CompassError):
    pass


def _fail(row: Row, fmt: str, problem: str) -> RowError:
    return RowError(f"{row.where}: {problem}; expected {EXPECTED[fmt]}; found keys {sorted(row.data)}")


def _text(row: Row, fmt: str, value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _fail(row, fmt, f"{what} must be a string, got {type(value).__name__}")
    return value


def _content_text(row: Row, fmt: str, content: Any, what: str) -> tuple[str, int]:
    """A message content as text with <image> marks, and how many image parts it had."""
    if isinstance(content, str):
        return content, content.count(IMAGE_MARK)
    if not isinstance(content, list):
        raise _fail(row, fmt, f"{what} must be a string or a list of parts, got {type(content).__name__}")
    pieces, images = [], 0
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            pieces.append(_text(row, fmt, part.get("text"), f"{what}[{i}].text"))
        elif kind == "image":
            pieces.append(IMAGE_MARK)
            images += 1
        else:
            raise _fail(row, fmt, f"{what}[{i}] must be {{type: text, text}} or {{type: image}}, got {part!r}")
    return "".join(pieces), images


def _messages(row: Row, fmt: str, value: Any, what: str, roles: Sequence[str] = ROLES) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _fail(row, fmt, f"{what} must be a non-empty list of messages, got {type(value).__name__}")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise _fail(row, fmt, f"{what}[{i}] must be {{role, content}}, got {message!r}"[:300])
        if message["role"] not in roles:
            raise _fail(row, fmt, f"{what}[{i}].role is {message['role']!r}, not one of {list(roles)}")
        text, _ = _content_text(row, fmt, message["content"], f"{what}[{i}].content")
        out.append({"role": message["role"], "content": text})
    return out


def _images(row: Row, fmt: str, image_dir: Path | None) -> list[Path]:
    if "images" not in row.data or row.data["images"] is None:
        return []
    value = row.data["images"]
    if not isinstance(value, list):
        raise _fail(row, fmt, f"'images' must be a list, got {type(value).__name__}")
    return [_image_path(row, fmt, item, i, image_dir) for i, item in enumerate(value)]


def _image_path(row: Row, fmt: str, item: Any, i: int, image_dir: Path | None) -> Path:
    if isinstance(item, dict) and item.get("bytes") is not None:
        return _store_image_bytes(row, item["bytes"], image_dir)
    if isinstance(item, dict) and item.get("path") is not None:
        item = item["path"]
    if isinstance(item, str):
        path = Path(item)
        if not path.is_absolute() and row.base_dir is not None:
            path = row.base_dir / path
        if not path.is_file():
            raise CompassError(f"{row.where}: images[{i}]: image not found: {path}")
        return path
    from PIL import Image

    if isinstance(item, Image.Image):
        import io

        buffer = io.BytesIO()
        item.save(buffer, format="PNG")
        return _store_image_bytes(row, buffer.getvalue(), image_dir)
    raise _fail(row, fmt, f"images[{i}] must be a path, a {{bytes, path}} dict or an image, got {type(item).__name__}")


def _store_image_bytes(row: Row, data: bytes, image_dir: Path | None) -> Path:
    if image_dir is None:
        raise CompassError(f"{row.where}: the row carries image bytes, and this reader was given no folder to write them to")
    from PIL import Image
    import io

    suffix = "." + (Image.open(io.BytesIO(data)).format or "png").lower()
    target = image_dir / f"{hashlib.sha256(data).hexdigest()}{suffix}"
    if not target.is_file():
        from compass.io import atomic_open

        image_dir.mkdir(parents=True, exist_ok=True)
        with atomic_open(target, "wb", encoding=None) as fh:
            fh.write(data)
    return target


def convert_sft_row(row: Row, fmt: str, *, id_prefix: str, image_dir: Path | None = None) -> SftExample:
    """One row of `fmt` -> SftExample; a row that does not fit fails with its position and the expected shape."""
    data = row.data
    if fmt in ("trace", "doc_example"):
        return _record_example(row, fmt)
    if fmt == "messages":
        messages = _messages(row, fmt, data["messages"], "messages")
    elif fmt == "prompt_completion":
        for key in ("prompt", "completion"):
            if key not in data:
                raise _fail(row, fmt, f"missing '{key}'")
        prompt, completion = data["prompt"], data["completion"]
        if isinstance(prompt, str) and isinstance(completion, str):
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        elif isinstance(prompt, list) and isinstance(completion, list):
            messages = _messages(row, fmt, prompt, "prompt") + _messages(row, fmt, completion, "completion", ("assistant",))
        else:
            raise _fail(row, fmt, f"prompt ({type(prompt).__name__}) and completion ({type(completion).__name__}) must "
                                  "both be strings or both message lists")
    elif fmt == "sharegpt":
        turns = data.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise _fail(row, fmt, "'conversations' must be a non-empty list")
        messages = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
                raise _fail(row, fmt, f"conversations[{i}] must be {{from, value}}, got {turn!r}"[:300])
            if turn["from"] not in SHAREGPT_ROLES:
                raise _fail(row, fmt, f"conversations[{i}].from is {turn['from']!r}, not one of {sorted(SHAREGPT_ROLES)}")
            messages.append({"role": SHAREGPT_ROLES[turn["from"]],
                             "content": _text(row, fmt, turn["value"], f"conversations[{i}].value")})
    elif fmt == "alpaca":
        for key in ("instruction", "output"):
            if key not in data:
                raise _fail(row, fmt, f"missing '{key}'")
        instruction = _text(row, fmt, data["instruction"], "instruction")
        extra = _text(row, fmt, data.get("input") or "", "input")  # alpaca leaves 'input' empty for most rows
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": _text(row, fmt, data["output"], "output")}]
    else:
        raise CompassError(f"unknown SFT format {fmt!r}; known: {', '.join(SFT_FORMATS)}")
    if not any(m["role"] == "assistant" for m in messages):
        raise _fail(row, fmt, "no assistant turn to train on")
    images = _images(row, fmt, image_dir)
    marks = sum(m["content"].count(IMAGE_MARK) for m in messages)
    if marks and marks != len(images):
        raise _fail(row, fmt, f"{marks} image places in the messages but {len(images)} images")
    row_id = data.get("id")
    return SftExample(id=row_id if isinstance(row_id, str) else f"{id_prefix}/{row.index}", messages=messages, images=images)


def _record_example(row: Row, fmt: str) -> SftExample:
    from pydantic import ValidationError

    from compass.records import DocExample, Trace

    model = DocExample if fmt == "doc_example" else Trace
    try:
        record = model.model_validate(row.data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<record>"
        raise CompassError(f"{row.where}: field '{where}': {first['msg']} (expected a {model.__name__} record)") from None
    images = [_image_path(row, fmt, image, i, None) for i, image in enumerate(record.images)]
    messages = [m.model_dump() for m in record.messages]
    if not any(m["role"] == "assistant" for m in messages):
        raise CompassError(f"{row.where}: record {record.id!r} has no assistant message to train on")
    return SftExample(id=record.id, messages=messages, images=images)


def convert_sft_rows(rows: Sequence[Row], fmt: str = "auto", *, id_prefix: str,
                     image_dir: Path | None = None) -> tuple[list[SftExample], str]:
    """Every row in one format (detected from the first row unless given); returns the examples and the format."""
    if not rows:
        raise CompassError(f"{id_prefix}: no rows")
    if fmt == "auto":
        detected = detect_sft_format(rows[0].data)
        if detected is None:
            raise CompassError(f"{rows[0].where}: the row fits no SFT format; expected {expected_any()}; "
                               f"found keys {sorted(rows[0].data)}")
        fmt = detected
    elif fmt not in SFT_FORMATS:
        raise CompassError(f"unknown SFT format {fmt!r}; known: auto, {', '.join(SFT_FORMATS)}")
    return [convert_sft_row(row, fmt, id_prefix=id_prefix, image_dir=image_dir) for row in rows], fmt


# --- several datasets mixed with weights ----------------------------------------------------------------


class DataSource(BaseModel):
    """One dataset split: a local file/directory (`path`) or a hub dataset (`hub_id`), with its share in the mix."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, description="local .jsonl/.parquet file or hub-like directory; relative to the `data` input if given")
    hub_id: str | None = Field(None, description="hub dataset id, e.g. teknium/OpenHermes-2.5")
    hub_config: str | None = Field(None, description="hub config (subset) name")
    split: str = Field("train", description="split name")
    revision: str | None = Field(None, description="hub revision (commit, tag or branch) to pin; the resolved commit is recorded")
    format: Literal["auto", "messages", "prompt_completion", "sharegpt", "alpaca", "trace", "doc_example",
                    "pair", "preference", "implicit", "ultrafeedback"] = Field(
        "auto", description="row format; auto = detected from the first row (SFT formats for SFT data, "
                            "pair/preference/implicit/ultrafeedback for preference data)")
    weight: float = Field(1.0, gt=0, description="share of its rows in the mix: 1 = every row once, 0.5 = a seeded half, "
                                                 "2 = every row twice")
    limit: int | None = Field(None, ge=1, description="read at most this many rows (the first ones) before weighting")
    name: str | None = Field(None, description="name in metrics and example ids (default: the hub id or file name)")

    @model_validator(mode="after")
    def _one_location(self):
        if (self.path is None) == (self.hub_id is None):
            raise ValueError(f"give exactly one of path or hub_id (path={self.path!r}, hub_id={self.hub_id!r})")
        return self

    def label(self) -> str:
        return self.name or self.hub_id or Path(self.path).name  # type: ignore[arg-type]

    def location(self, base: Path | None) -> str:
        if self.hub_id is not None:
            return self.hub_id
        path = Path(self.path)  # type: ignore[arg-type]
        # relative to the stage's `data` input, whose bytes are hashed into the run's cache key and ledger record
        if path.is_absolute() or base is None:
            raise CompassError(f"dataset {self.label()!r}: path {self.path!r} must be relative to the stage's `data` input "
                               "(give --data DIR), so that the run's cache key covers its bytes")
        path = (base if base.is_dir() else base.parent) / path
        if not path.exists():
            raise CompassError(f"dataset {self.label()!r}: no such file or directory: {path}")
        return str(path)


def weighted_take(count: int, weight: float, seed: int, name: str) -> list[int]:
    """Row indices for a weight: whole copies for the integer part, a seeded sample (in file order) for the rest.
    The draw depends only on (seed, name, count, weight)."""
    whole = int(weight)
    extra = round((weight - whole) * count)
    rng = random.Random(f"{seed}:{name}")
    sample = sorted(rng.sample(range(count), extra)) if extra else []
    return [i for _ in range(whole) for i in range(count)] + sample


def load_source(source: DataSource, base: Path | None, seed: int, image_dir: Path | None,
                converter=None) -> tuple[list, dict[str, Any]]:
    """Rows of one DataSource converted (SFT by default), weighted; and its report for the metrics/ledger."""
    loaded = load_rows(source.location(base), source.split, hub_config=source.hub_config, revision=source.revision)
    rows = loaded.rows[: source.limit] if source.limit else loaded.rows
    label = source.label()
    if converter is None:
        items, fmt = convert_sft_rows(rows, source.format, id_prefix=label, image_dir=image_dir)
        report: dict[str, Any] = {}
    else:
        items, fmt, report = converter(rows, source.format, label)
    order = weighted_take(len(items), source.weight, seed, label)
    copies: dict[int, int] = {}
    taken = []
    for i in order:
        copies[i] = copies.get(i, 0) + 1
        taken.append(_copy_of(items[i], copies[i]))
    report = {"format": fmt, "rows": len(rows), "converted": len(items), "weight": source.weight, "taken": len(taken),
              **report, "files": loaded.files}
    if loaded.hub_id is not None:
        report.update(hub_id=loaded.hub_id, split=source.split, hub_config=source.hub_config, revision=loaded.revision)
    return taken, report


def _copy_of(item, copy: int):
    """The n-th copy of an example (weights above 1) gets its own id, so ids stay unique."""
    if copy == 1:
        return item
    if isinstance(item, SftExample):
        return SftExample(id=f"{item.id}#copy{copy}", messages=item.messages, images=item.images)
    return item.model_copy(update={"id": f"{item.id}#copy{copy}"})


def load_mix(sources: Sequence[DataSource], base: Path | None, seed: int, image_dir: Path | None,
             converter=None) -> tuple[list, dict[str, dict[str, Any]]]:
    """Several sources, each weighted, concatenated in the order given; per-source reports keyed by name."""
    items: list = []
    reports: dict[str, dict[str, Any]] = {}
    for source in sources:
        label = source.label()
        if label in reports:
            raise CompassError(f"dataset name {label!r} appears twice in the mix; give each a distinct `name`")
        taken, reports[label] = load_source(source, base, seed, image_dir, converter)
        items.extend(taken)
    from collections import Counter

    repeated = [item_id for item_id, n in Counter(item.id for item in items).items() if n > 1]
    if repeated:
        duplicate = repeated[0]
        raise CompassError(f"example id {duplicate!r} appears in two datasets of the mix; give them distinct `name`s")
    return items, reports
