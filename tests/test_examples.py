"""The README's main job, ``examples/compare_optimizers.py``, with tiny settings (in-process, a few seconds)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "compare_optimizers.py"
TINY = ["--max_steps", "6", "--hidden_size", "32", "--num_layers", "1", "--num_heads", "2", "--vocab_size", "384",
        "--seq_len", "32", "--batch_size", "4", "--max_chars", "60000", "--logging_steps", "1", "--quiet",
        "--use_cpu"]


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare_optimizers", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_optimizers_tiny_run(compare, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    results = compare.main(TINY + ["--output_dir", str(tmp_path)])

    for name in ("results.md", "results.json", "compare.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "results.md").read_text()
    assert "| AdamW" in table and "| AlphaAdam" in table and "eval loss" in table
    printed = capsys.readouterr().out
    assert table.strip() in printed  # the table is printed too
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["header"] == results["header"] and len(saved["rows"]) == 2

    adamw, alpha = results["runs"]
    assert (adamw["optim"], alpha["optim"]) == ("adamw_torch", "alphaadam")
    assert alpha["optimizer_class"] == "AlphaAdam"
    for run in results["runs"]:
        assert math.isfinite(run["eval_loss"]) and run["train_seconds"] > 0
        steps, losses = compare.loss_curve(run["log_history"])
        assert steps == list(range(1, 7)) and all(math.isfinite(loss) for loss in losses)
    # Same seed, data order and first step (AlphaAdam's first step is unmasked, i.e. AdamW's): identical until
    # the masks start to differ at step 2.
    assert compare.loss_curve(adamw["log_history"])[1][:2] == pytest.approx(
        compare.loss_curve(alpha["log_history"])[1][:2], rel=1e-5)
    groups = compare.alpha_series(alpha["log_history"])
    assert set(groups) == {"decay", "no_decay"}
    assert all(value >= 1.0 - 1e-6 for series in groups.values() for value in series["mean"])
    assert compare.alpha_series(adamw["log_history"]) == {}


def test_compare_optimizers_text_file_and_arguments(compare, tmp_path):
    text_file = tmp_path / "corpus.txt"
    text_file.write_text("To be, or not to be, that is the question.\n" * 400, encoding="utf-8")
    text, source = compare.load_text(str(text_file), max_chars=5_000)
    assert source == str(text_file) and len(text) == 5_000
    args = compare.parse_args(["--text_file", str(text_file), "--max_steps", "7", "--learning_rate", "3e-4",
                               "--seed", "3"])
    assert (args.text_file, args.max_steps, args.learning_rate, args.seed) == (str(text_file), 7, 3e-4, 3)
    assert compare.parse_args([]).output_dir == "outputs/compare"
    with pytest.raises(SystemExit):
        compare.parse_args(["--max_steps", "0"])
    short = tmp_path / "short.txt"
    short.write_text("too short", encoding="utf-8")
    with pytest.raises(SystemExit):
        compare.load_text(str(short), max_chars=1_000)
