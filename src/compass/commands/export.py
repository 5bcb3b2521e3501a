"""`compass export RUN --out DIR`: the checkpoint a run produced, in the hub's layout, ready for upload.

DIR gets the checkpoint's files taken from the ledger's store (their sha256 checked on the way out: the bytes the
run recorded, not whatever its out dir holds now), the model card (README.md, `compass card`), and the processor /
tokenizer files with the chat template, which are checked to be there: what `from_pretrained` and the hub widget
need. `huggingface-cli upload REPO DIR` publishes it; `--push REPO` does that here when the hub is reachable, and
says so in one line when it is not (offline). DIR is written beside itself and renamed into place: never half-made.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from compass.commands.card import CardInputs, Ledger, build_card, checkpoint_files
from compass.errors import CompassError

EXAMPLE = "compass export 3f2a1b9c --out export/my-model --license apache-2.0 --push my-org/my-model"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def _chat_template_present(files: dict[str, str], ledger: Ledger) -> bool:
    if "chat_template.jinja" in files or "chat_template.json" in files:
        return True
    if "tokenizer_config.json" in files:
        return "chat_template" in json.loads(ledger.store.read_bytes(files["tokenizer_config.json"]))
    return False


def export_run(ledger: Ledger, inputs: CardInputs, out: Path) -> dict[str, object]:
    from compass.io import staged_dir, write_text_atomic

    run = ledger.run(inputs.run)
    folder, files = checkpoint_files(ledger, run)
    missing = []
    if not any(name in files for name in TOKENIZER_FILES):
        missing.append(f"a tokenizer ({' or '.join(TOKENIZER_FILES)})")
    if not _chat_template_present(files, ledger):
        missing.append("a chat template (chat_template.jinja or tokenizer_config.json's chat_template)")
    config = json.loads(ledger.store.read_bytes(files["config.json"]))
    vision = "vision_config" in config
    if vision and not any(name in files for name in PROCESSOR_FILES):
        missing.append(f"an image processor ({' or '.join(PROCESSOR_FILES)})")
    if not any(name.endswith(".safetensors") for name in files):
        missing.append("safetensors weights")
    if missing:
        raise CompassError(f"run {run.run_id[:12]}'s checkpoint {folder}/ lacks {', '.join(missing)}: not a complete hub model")
    if out.exists() and any(out.iterdir()):
        raise CompassError(f"{out} exists and is not empty; give a new --out directory")
    card = build_card(ledger, inputs)
    with staged_dir(out) as tmp:
        for name, sha in sorted(files.items()):
            ledger.store.materialize(sha, tmp / name)  # hash-checked copy of the recorded bytes
        write_text_atomic(tmp / "README.md", card)
    return {"run": run.run_id, "checkpoint": f"{folder}/", "files": len(files) + 1, "vision": vision}


def push(out: Path, repo: str) -> str:
    """Upload DIR to the hub; one line either way."""
    from compass.hub import offline

    if offline():
        raise CompassError(f"the hub is offline here (HF_HUB_OFFLINE=1): {out} is ready; upload it later with "
                           f"`huggingface-cli upload {repo} {out}`")
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", exist_ok=True)
        info = api.upload_folder(repo_id=repo, folder_path=str(out), repo_type="model",
                                 commit_message="compass export")
    except Exception as err:  # network, auth or hub errors: one line, the files stay ready for a manual upload
        raise CompassError(f"could not push to {repo} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                           f"{out} is ready: `huggingface-cli upload {repo} {out}`") from None
    return str(info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compass export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=f"example:\n  {EXAMPLE}")
    parser.add_argument("run", help="run id (or unique prefix) whose checkpoint to export")
    parser.add_argument("--out", type=Path, required=True, help="new directory for the hub-layout model")
    parser.add_argument("--push", metavar="REPO", help="also upload to this hub repo (needs the hub and a token)")
    parser.add_argument("--license", default="other", help="hub license id for the card (default: other)")
    parser.add_argument("--base-model", help="hub id of the model the chain started from (card front matter)")
    parser.add_argument("--title", help="card title")
    parser.add_argument("--home", type=Path, help="ledger workspace (default: $COMPASS_HOME, else the nearest .compass/)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    ledger = Ledger.open(args.home)
    done = export_run(ledger, CardInputs(args.run, args.license, args.base_model, args.title), args.out)
    print(f"exported {done['checkpoint']} of run {str(done['run'])[:12]} ({done['files']} files) -> {args.out}")
    if args.push:
        print(f"pushed: {push(args.out, args.push)}")
    return 0
