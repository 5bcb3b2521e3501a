"""Rows in the exact schemas of published SFT and preference datasets (our own texts, their column layout).

Schemas followed: TRL's dataset formats (trl-internal-testing/zen configs: conversational_language_modeling,
conversational_prompt_completion, standard_prompt_completion, standard/conversational preference, implicit prompt),
ShareGPT as teknium/OpenHermes-2.5 ships it (conversations of {from, value, weight}), tatsu-lab/alpaca
(instruction, input, output, text), HuggingFaceH4/ultrafeedback_binarized (prompt, prompt_id, chosen, rejected,
messages, score_chosen, score_rejected), openbmb/UltraFeedback (source, instruction, models, completions with
annotations / overall_score / fine-grained_score, correct_answers, incorrect_answers), Anthropic/hh-rlhf
(chosen, rejected strings of '\\n\\nHuman: ...\\n\\nAssistant: ...').
"""
from __future__ import annotations

import json
from pathlib import Path


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def messages_rows(n: int = 4) -> list[dict]:
    return [{"messages": [{"role": "system", "content": "Answer briefly."},
                          {"role": "user", "content": f"What is {i} + {i}?"},
                          {"role": "assistant", "content": f"{i} + {i} = {2 * i}."}]} for i in range(n)]


def prompt_completion_rows(n: int = 3) -> list[dict]:
    return [{"prompt": f"Count to {i + 1}:", "completion": " " + " ".join(str(k) for k in range(1, i + 2))} for i in range(n)]


def conversational_prompt_completion_rows(n: int = 3) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"Double {i}."}],
             "completion": [{"role": "assistant", "content": f"It is {2 * i}."}]} for i in range(n)]


def sharegpt_rows(n: int = 3) -> list[dict]:
    return [{"conversations": [{"from": "system", "value": "You are a careful assistant.", "weight": None},
                               {"from": "human", "value": f"Is {i} even?", "weight": None},
                               {"from": "gpt", "value": "yes" if i % 2 == 0 else "no", "weight": None}],
             "source": "compass-fixture", "category": "math"} for i in range(n)]


def alpaca_rows() -> list[dict]:
    # tatsu-lab/alpaca: most rows leave `input` empty; `text` is the rendered prompt (not read by compass)
    return [
        {"instruction": "Give three colours.", "input": "", "output": "Red, green, blue.",
         "text": "Below is an instruction...\n\n### Instruction:\nGive three colours.\n\n### Response:\nRed, green, blue."},
        {"instruction": "Translate to French.", "input": "good morning", "output": "bonjour",
         "text": "Below is an instruction...\n\n### Input:\ngood morning\n\n### Response:\nbonjour"},
    ]


def vlm_messages_rows(image_names: list[str]) -> list[dict]:
    """TRL vision-language rows: images beside messages whose user content has {"type": "image"} parts."""
    return [{"images": [name],
             "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is this?"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": f"Colour {k}."}]}]}
            for k, name in enumerate(image_names)]


# --- preference -------------------------------------------------------------------------------------------


def preference_rows(n: int = 3) -> list[dict]:
    return [{"prompt": f"{i} + 1 =", "chosen": f" {i + 1}", "rejected": f" {i + 2}"} for i in range(n)]


def conversational_preference_rows(n: int = 3) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"What is {i} times 3?"}],
             "chosen": [{"role": "assistant", "content": f"{3 * i}"}],
             "rejected": [{"role": "assistant", "content": f"{3 * i + 1}"}]} for i in range(n)]


def ultrafeedback_binarized_rows(n: int = 3) -> list[dict]:
    rows = []
    for i in range(n):
        prompt = f"Name a prime larger than {10 * i}."
        chosen = [{"role": "user", "content": prompt}, {"role": "assistant", "content": f"{_next_prime(10 * i)} is prime."}]
        rejected = [{"role": "user", "content": prompt}, {"role": "assistant", "content": f"{10 * i + 4} is prime."}]
        rows.append({"prompt": prompt, "prompt_id": f"{i:064x}", "chosen": chosen, "rejected": rejected,
                     "messages": chosen, "score_chosen": 8.0, "score_rejected": 3.5})
    return rows


def _next_prime(n: int) -> int:
    k = n + 1
    while any(k % d == 0 for d in range(2, int(k ** 0.5) + 1)) or k < 2:
        k += 1
    return k


def _uf_completion(model: str, response: str, score: float | None) -> dict:
    rating = "N/A" if score is None else str(int(score // 2.5) + 1)
    aspect = {"Rating": rating, "Rationale": "fixture"}
    return {"annotations": {"helpfulness": {**aspect, "Rationale For Rating": "fixture", "Type": ["1"]},
                            "honesty": aspect, "instruction_following": aspect,
                            "truthfulness": {**aspect, "Rationale For Rating": "fixture", "Type": ["0"]}},
            "critique": "fixture critique", "custom_system_prompt": "", "fine-grained_score": score,
            "model": model, "overall_score": score, "principle": "helpfulness", "response": response}


def ultrafeedback_rows() -> list[dict]:
    """openbmb/UltraFeedback rows: 4 completions each; row 1 is a tie (all equal), row 2 has one rated completion."""
    models = ["gpt-4", "llama-2-13b-chat", "wizardlm-7b", "alpaca-7b"]

    def row(instruction: str, scored: list[tuple[str, float | None]]) -> dict:
        return {"source": "evol_instruct", "instruction": instruction, "models": models[:len(scored)],
                "completions": [_uf_completion(m, text, score) for m, (text, score) in zip(models, scored)],
                "correct_answers": ["None"], "incorrect_answers": ["None"]}

    return [
        row("What is 7 * 6?", [("42", 9.0), ("48", 2.0), ("It is 42.", 7.5), ("13", 1.0)]),
        row("Say hi.", [("hi", 6.0), ("hello", 6.0), ("hey", 6.0), ("yo", 6.0)]),
        row("Spell cat.", [("c-a-t", 8.0), ("k-a-t", None), ("", None), ("cat", None)]),
        row("Is 9 prime?", [("No, 9 = 3 x 3.", 8.5), ("Yes.", 1.5), ("No.", 7.0), ("Maybe.", 3.0)]),
    ]


def hh_rows() -> list[dict]:
    prompt = "\n\nHuman: What is the capital of Japan?\n\nAssistant: Tokyo.\n\nHuman: And its population?\n\nAssistant:"
    return [
        {"chosen": prompt + " About 14 million in the city proper.", "rejected": prompt + " About 2 people."},
        {"chosen": "\n\nHuman: Add 2 and 3.\n\nAssistant: 5", "rejected": "\n\nHuman: Add 2 and 3.\n\nAssistant: 6"},
    ]
