"""A merge whose result is broken is a failed run, not a recorded success: tensors that come out NaN or inf
are found before the manifest is written, and nothing model-looking is left."""
from __future__ import annotations

import torch
from cli_cases import assert_one_line_error, ledger_run_count, run_cli
from safetensors.torch import save_file


def write_model(path, tensors):
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "toy"}')
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def test_a_merge_that_overflows_to_inf_is_refused_before_its_manifest(tmp_path, capsys):
    base = write_model(tmp_path / "base", {"w": torch.tensor([1.0, 2.0], dtype=torch.float16)})
    ft = write_model(tmp_path / "ft", {"w": torch.tensor([60000.0, 2.0], dtype=torch.float16)})
    runs = ledger_run_count()
    result = run_cli(["merge", "--base", base, "--finetuned", ft, "--weights", "[2.0]", "--out", tmp_path / "merged"], capsys)
    assert_one_line_error(result, "tensor w of the merged model is not finite")
    assert not (tmp_path / "merged").exists() and ledger_run_count() == runs
    ok = run_cli(["merge", "--base", base, "--finetuned", ft, "--weights", "[0.5]", "--out", tmp_path / "merged"], capsys)
    assert ok.code == 0, ok.err
    assert (tmp_path / "merged" / "manifest.json").is_file()
