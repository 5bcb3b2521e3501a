"""Real preference data -> Pair records (strategy "preference"; source_id names the dataset and row).

Formats (the published datasets' own shapes):
  pair           compass Pair records (corruption pairs, or preference pairs written by `preference-sources`)
  preference     TRL preference: {"prompt", "chosen", "rejected"}; plain strings, or message lists. A chosen/rejected
                 list may repeat the prompt turns before its answer, as HuggingFaceH4/ultrafeedback_binarized and
                 argilla/OpenHermesPreferences do (`prompt` a string, `chosen` = [user, assistant]): the turns the two
                 share are the prompt, the last assistant turn of each is the answer
  implicit       TRL implicit prompt / Anthropic HH-RLHF: {"chosen", "rejected"} without a prompt, both full
                 conversations (strings or message lists): split at their common prefix. HH text
                 ("\\n\\nHuman: ...\\n\\nAssistant: ...") is cut back to the last "Assistant:" the two share and its
                 turns become messages
  ultrafeedback  openbmb/UltraFeedback: {"instruction", "completions": [{"response", "overall_score", ...}]}: the best
                 and the worst completion by rating (`rating_key`) become chosen and rejected; rows whose best and
                 worst rate the same (ties) or with fewer than two rated completions are dropped and counted

A row that fits no format fails with its position and what was expected. Pairs whose chosen equals rejected are
dropped and counted (`identical`).
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from compass.data.sft_formats import Row
from compass.errors import CompassError
from compass.records import Message, Pair

PREFERENCE_FORMATS: tuple[str, ...] = ("pair", "preference", "implicit", "ultrafeedback")
EXPECTED = {
    "pair": "a compass Pair record",
    "preference": "'prompt', 'chosen' and 'rejected' (strings or message lists; TRL preference)",
    "implicit": "'chosen' and 'rejected' full conversations with a common prompt (TRL implicit prompt, Anthropic HH-RLHF)",
    "ultrafeedback": "'instruction' and 'completions' [{response, overall_score}] (openbmb/UltraFeedback)",
}
DEFAULT_RATING_KEY = "overall_score"
HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
ROLES = ("system", "user", "assistant")


class Dropped(Exception):
    """A row that is well-formed but gives no pair (a tie, identical answers); counted by reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def detect_preference_format(row: dict[str, Any]) -> str | None:
    if "source_id" in row and "strategy" in row and "chosen" in row:
        return "pair"
    if "instruction" in row and "completions" in row:
        return "ultrafeedback"
    if "chosen" in row and "rejected" in row:
        return "preference" if "prompt" in row else "implicit"
    return None


def expected_any() -> str:
    return "; or ".join(EXPECTED[name] for name in PREFERENCE_FORMATS)


def _fail(row: Row, fmt: str, problem: str) -> CompassError:
    return CompassError(f"{row.where}: {problem}; expected {EXPECTED[fmt]}; found keys {sorted(row.data)}")


def _messages(row: Row, fmt: str, value: Any, what: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise _fail(row, fmt, f"{what} must be a non-empty list of messages or a string, got {type(value).__name__}")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise _fail(row, fmt, f"{what}[{i}] must be {{role: system|user|assistant, content: string}}, got {message!r}"[:300])
        out.append(Message(role=message["role"], content=message["content"]))
    return out


def _answer_split(row: Row, fmt: str, chosen: list[Message], rejected: list[Message]) -> tuple[list[Message], str, str]:
    """Shared leading turns = prompt; each side must then be exactly one assistant turn."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    tails = chosen[shared:], rejected[shared:]
    for name, tail in zip(("chosen", "rejected"), tails):
        if len(tail) != 1 or tail[0].role != "assistant":
            raise _fail(row, fmt, f"after the turns chosen and rejected share, {name} must be one assistant turn, "
                                  f"got {[m.role for m in tail]}")
    return chosen[:shared], tails[0][0].content, tails[1][0].content


def _hh_messages(row: Row, text: str) -> list[Message]:
    """'\\n\\nHuman: a\\n\\nAssistant: b...' -> messages (text before the first marker, if any, is a system turn)."""
    parts = HH_TURN.split(text)
    head, rest = parts[0], parts[1:]
    messages = [Message(role="system", content=head.strip())] if head.strip() else []
    for speaker, content in zip(rest[0::2], rest[1::2]):
        messages.append(Message(role=HH_ROLES[speaker], content=content.strip()))
    if not messages:
        raise _fail(row, "implicit", "no Human:/Assistant: turns in the prompt")
    return messages


def _implicit_strings(row: Row, chosen: str, rejected: str) -> tuple[list[Message], str, str]:
    common = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        common += 1
    prefix = chosen[:common]
    marker = prefix.rfind("\n\nAssistant:")
    if marker >= 0:  # HH-RLHF: the prompt ends with the last Assistant marker the two share
        cut = marker + len("\n\nAssistant:")
        prompt = _hh_messages(row, chosen[:marker])
        answers = chosen[cut:], rejected[cut:]
        if HH_TURN.search(answers[0]) or HH_TURN.search(answers[1]):
            raise Dropped("differ_before_last_turn")  # HH has such rows: no single answer to compare
        if not prompt or prompt[-1].role != "user":
            raise _fail(row, "implicit", "the shared prompt does not end with a Human turn")
        return prompt, answers[0].strip(), answers[1].strip()
    # plain text: cut back to a word boundary so no word is split between prompt and answer
    while common and not chosen[common - 1].isspace():
        common -= 1
    if not chosen[:common].strip():
        raise _fail(row, "implicit", "chosen and rejected share no prompt")
    return [Message(role="user", content=chosen[:common].strip())], chosen[common:].strip(), rejected[common:].strip()


def _ultrafeedback(row: Row, rating_key: str) -> tuple[list[Message], str, str, dict]:
    data = row.data
    if not isinstance(data["instruction"], str):
        raise _fail(row, "ultrafeedback", "'instruction' must be a string")
    completions = data["completions"]
    if not isinstance(completions, list):
        raise _fail(row, "ultrafeedback", "'completions' must be a list")
    rated = []
    for i, completion in enumerate(completions):
        if not isinstance(completion, dict) or "response" not in completion or rating_key not in completion:
            raise _fail(row, "ultrafeedback", f"completions[{i}] must have 'response' and {rating_key!r}")
        score = completion[rating_key]
        if score is None:
            continue  # unrated (the annotator gave 'N/A'); not a preference
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise _fail(row, "ultrafeedback", f"completions[{i}].{rating_key} must be a number, got {score!r}")
        rated.append((float(score), i, completion["response"]))
    if len(rated) < 2:
        raise Dropped("fewer_than_two_rated")
    best = max(rated, key=lambda r: (r[0], -r[1]))  # the first of equal bests
    worst = min(rated, key=lambda r: (r[0], r[1]))
    if best[0] == worst[0]:
        raise Dropped("tie")
    return ([Message(role="user", content=data["instruction"])], best[2], worst[2],
            {"score_chosen": best[0], "score_rejected": worst[0]})


def convert_preference_row(row: Row, fmt: str, origin: str, rating_key: str = DEFAULT_RATING_KEY) -> Pair:
    """One row -> Pair; raises Dropped for a well-formed row that gives no pair."""
    data = row.data
    if fmt == "pair":
        from pydantic import ValidationError

        try:
            return Pair.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "<record>"
            raise CompassError(f"{row.where}: field '{where}': {first['msg']} (expected a Pair record)") from None
    if fmt == "ultrafeedback":
        prompt, chosen, rejected, _ = _ultrafeedback(row, rating_key)
    elif fmt in ("preference", "implicit"):
        for key in ("chosen", "rejected") + (("prompt",) if fmt == "preference" else ()):
            if key not in data:
                raise _fail(row, fmt, f"missing '{key}'")
        c, r = data["chosen"], data["rejected"]
        if isinstance(c, str) and isinstance(r, str):
            if fmt == "implicit":
                prompt, chosen, rejected = _implicit_strings(row, c, r)
            else:
                if not isinstance(data["prompt"], str):
                    raise _fail(row, fmt, "with string answers 'prompt' must be a string")
                prompt, chosen, rejected = [Message(role="user", content=data["prompt"])], c, r
        elif isinstance(c, list) and isinstance(r, list):
            chosen_msgs, rejected_msgs = _messages(row, fmt, c, "chosen"), _messages(row, fmt, r, "rejected")
            head, chosen, rejected = _answer_split(row, fmt, chosen_msgs, rejected_msgs)
            if fmt == "implicit" or head:
                prompt = head  # the prompt turns are repeated inside chosen/rejected
            else:
                given = data["prompt"]
                prompt = [Message(role="user", content=given)] if isinstance(given, str) else _messages(row, fmt, given, "prompt")
            if not prompt:
                raise _fail(row, fmt, "no prompt turns (chosen and rejected share none and no prompt is given)")
        else:
            raise _fail(row, fmt, f"chosen ({type(c).__name__}) and rejected ({type(r).__name__}) must both be strings "
                                  "or both message lists")
    else:
        raise CompassError(f"unknown preference format {fmt!r}; known: {', '.join(PREFERENCE_FORMATS)}")
    if prompt[-1].role != "user":
        raise _fail(row, fmt, f"the prompt must end with a user turn, got {prompt[-1].role}")
    if chosen.strip() == rejected.strip():
        raise Dropped("identical")
    source_id = f"{origin}#{row.index}"
    return Pair(id=f"{source_id}/pair", source_id=source_id, prompt=prompt, chosen=chosen, rejected=rejected,
                strategy="preference")


def convert_preference_rows(rows: Sequence[Row], fmt: str, origin: str,
                            rating_key: str = DEFAULT_RATING_KEY) -> tuple[list[Pair], str, dict[str, Any]]:
    """Every row in one format (detected from the first unless given) -> (pairs, format, {"dropped": {reason: n}})."""
    if not rows:
        raise CompassError(f"{origin}: no rows")
    if fmt == "auto":
        detected = detect_preference_format(rows[0].data)
        if detected is None:
            raise CompassError(f"{rows[0].where}: the row fits no preference format; expected {expected_any()}; "
                               f"found keys {sorted(rows[0].data)}")
        fmt = detected
    elif fmt not in PREFERENCE_FORMATS:
        raise CompassError(f"unknown preference format {fmt!r}; known: auto, {', '.join(PREFERENCE_FORMATS)}")
    pairs: list[Pair] = []
    dropped: Counter[str] = Counter()
    for row in rows:
        try:
            pairs.append(convert_preference_row(row, fmt, origin, rating_key))
        except Dropped as drop:
            dropped[drop.reason] += 1
    return pairs, fmt, {"dropped": dict(sorted(dropped.items()))}


def preference_converter(rating_key: str = DEFAULT_RATING_KEY):
    """A converter for sft_formats.load_source/load_mix: rows -> (pairs, format, report)."""
    def convert(rows: Sequence[Row], fmt: str, label: str):
        return convert_preference_rows(rows, fmt, label, rating_key)
    return convert


def take_for_ratio(corruption_pairs: int, available: int, ratio: float) -> int:
    """How many preference pairs make them `ratio` of all pairs beside `corruption_pairs` corruption pairs."""
    if not 0 <= ratio < 1:
        raise CompassError(f"preference_ratio must be in [0, 1), got {ratio}")
    needed = round(corruption_pairs * ratio / (1 - ratio))
    if needed > available:
        most = available / (available + corruption_pairs) if available + corruption_pairs else 0.0
        raise CompassError(f"preference_ratio {ratio} beside {corruption_pairs} corruption pairs needs {needed} preference "
                           f"pairs, but the input has {available}; at most {most:.4f} is possible")
    return needed


def read_preference_pairs(path) -> tuple[list[Pair], dict[str, Any]]:
    """Pairs of a file or shard directory: Pair records, or preference rows of any format (converted; rows that
    give no pair are counted in the report under 'dropped'). Source ids name each file and row."""
    from pathlib import Path

    from compass.data.sft_formats import data_files, load_rows

    path = Path(path)
    pairs: list[Pair] = []
    fmt = "auto"
    dropped: Counter[str] = Counter()
    for file in data_files(path):
        rows = load_rows(file).rows
        if rows:
            converted, fmt, report = convert_preference_rows(rows, fmt, file.name)
            pairs.extend(converted)
            dropped.update(report["dropped"])
    return pairs, {"format": fmt, "dropped": dict(sorted(dropped.items()))}


def write_preference_share(fh, path, corruption_pairs: int, ratio: float, seed: int) -> dict[str, Any]:
    """Append a seeded sample of the preference pairs at `path` to the open pairs file `fh`, so that they are
    `ratio` of all pairs; returns the metrics ({} when nothing is mixed in)."""
    import random

    from compass.io import dumps_record

    if path is None:
        if ratio:
            raise CompassError(f"preference_ratio {ratio} needs the `preference` input (real preference pairs)")
        return {}
    if not ratio:
        raise CompassError(f"a `preference` input ({path}) was given with preference_ratio 0; set the share it should have")
    pairs, report = read_preference_pairs(path)
    needed = take_for_ratio(corruption_pairs, len(pairs), ratio)
    chosen = sorted(random.Random(f"{seed}:preference").sample(range(len(pairs)), needed))
    for index in chosen:
        pair = pairs[index]
        if pair.strategy != "preference":
            raise CompassError(f"{path}: pair {pair.id!r} has strategy {pair.strategy!r}: the `preference` input takes real "
                               "preference pairs, not corruption pairs")
        fh.write(dumps_record(pair) + "\n")
    total = corruption_pairs + needed
    return {"preference_pairs": needed, "preference_available": len(pairs), "preference_format": report["format"],
            "preference_dropped": report["dropped"], "preference_share": round(needed / total, 4) if total else 0.0}
