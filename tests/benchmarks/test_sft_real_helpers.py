"""Pure helpers of benchmarks/sft_real.py and its _sft_real_results.py: encoding with the loss on the solution
only, padding, the tensor types of the alpha picture, best-lr choice, paired differences, verdicts and the README
rows, on made-up runs.

No model is loaded and nothing is trained (a tiny fake tokenizer stands in): the file takes about a second. The
benchmark's quick run itself is ``tests/benchmarks/test_suite.py::test_quick_run[sft_real]``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

# The repository root must come first (see test_toy.py): otherwise ``benchmarks`` resolves to tests/benchmarks.
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
if getattr(sys.modules.get("benchmarks"), "__file__", "") is None:  # a namespace package imported before
    del sys.modules["benchmarks"]

from benchmarks import _sft_real_results as results  # noqa: E402
from benchmarks import sft_real  # noqa: E402


class CharTokenizer:
    """One id per character (ord), eos 0: enough for encode()."""

    eos_token_id = 0

    def __call__(self, text):
        return {"input_ids": [ord(c) for c in text]}


def test_encode_puts_the_loss_on_the_solution_and_eos_only():
    row = {"question": "1+1?", "answer": "2 #### 2"}
    encoded = sft_real.encode(CharTokenizer(), row)
    prompt = "Question: 1+1?\nAnswer:"
    assert encoded["input_ids"] == [ord(c) for c in prompt + " 2 #### 2"] + [0]
    assert encoded["labels"][:len(prompt)] == [-100] * len(prompt)
    assert encoded["labels"][len(prompt):] == encoded["input_ids"][len(prompt):]


def test_collate_pads_right_without_loss_on_padding():
    batch = sft_real.collate(7, [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
                                 {"input_ids": [4], "labels": [4]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]


@pytest.mark.parametrize("name, expected", [
    ("model.embed_tokens.weight", "embed"), ("model.layers.3.self_attn.q_proj.weight", "q"),
    ("model.layers.3.self_attn.o_proj.weight", "o"), ("model.layers.0.mlp.down_proj.weight", "down"),
    ("model.layers.9.input_layernorm.weight", "attn norm"),
    ("model.layers.9.post_attention_layernorm.weight", "mlp norm"), ("model.norm.weight", "final norm"),
    ("lm_head.bias", None)])
def test_tensor_types(name, expected):
    assert sft_real.tensor_type(name) == expected


def _run(optimizer, lr, seed, losses, accuracy=None):
    run = {"optimizer": optimizer, "lr": lr, "seed": seed,
           "eval_loss": [[i + 1, loss] for i, loss in enumerate(losses)]}
    if accuracy is not None:
        run["gsm8k"] = {"accuracy": accuracy, "correct": round(accuracy * 32), "total": 32}
    return run


def _result(alphaadam_final_offsets):
    """AdamW best at lr 2e-3 (grid edge); AlphaAdam best at 1e-3 (inside), 3 seeds each."""
    runs = [_run("adamw", 1e-3, 0, [2.0, 1.8, 1.7, 1.6]), _run("adamw", 2e-3, 0, [1.9, 1.7, 1.6, 1.5], 0.1),
            _run("adamw", 5e-4, 0, [2.1, 2.0, 1.9, 1.8]),
            _run("alphaadam", 5e-4, 0, [2.1, 2.0, 1.9, 1.9]), _run("alphaadam", 2e-3, 0, [2.0, 1.9, 1.8, float("nan")]),
            _run("alphaadam", 1e-3, 0, [1.9, 1.7, 1.6, 1.5 + alphaadam_final_offsets[0]], 0.4)]
    for seed, offset in zip((1, 2), alphaadam_final_offsets[1:]):
        runs.append(_run("adamw", 2e-3, seed, [1.9, 1.7, 1.6, 1.5 + 0.01 * seed], 0.1))
        runs.append(_run("alphaadam", 1e-3, seed, [1.9, 1.7, 1.6, 1.5 + 0.01 * seed + offset], 0.4))
    result = {"settings": {"optimizers": ["adamw", "alphaadam"], "lrs": [5e-4, 1e-3, 2e-3], "steps": 12,
                           "batch_size": 4, "eval_size": 12, "accuracy_size": 32, "lora_r": 8},
              "runs": runs, "pretrained": {"eval_loss": 2.2, "gsm8k": {"accuracy": 1 / 32}}}
    result["table"] = results.aggregate(result)
    return result


def test_best_lr_edges_and_paired_differences():
    table = _result([-0.10, -0.11, -0.09])["table"]
    assert table["adamw"]["best_lr"] == 2e-3 and table["adamw"]["at_grid_edge"]
    assert table["alphaadam"]["best_lr"] == 1e-3 and not table["alphaadam"]["at_grid_edge"]  # NaN ranks last
    assert table["alphaadam"]["seeds"] == [0, 1, 2] and table["alphaadam"]["paired_seeds"] == [0, 1, 2]
    mean, std = table["alphaadam"]["loss_diff"][-1]
    assert mean == pytest.approx(-0.10) and std == pytest.approx(0.01)
    assert table["alphaadam"]["loss_diff"][0] == pytest.approx((0.0, 0.0))
    assert table["alphaadam"]["accuracy_diff"] == pytest.approx((0.3, 0.0))
    assert math.isclose(table["adamw"]["loss"][-1][0], 1.51)


def test_identical_to_adamw_is_named_not_called_noise():
    result = _result([0.0, 0.0, 0.0])
    for run in [r for r in result["runs"] if r["optimizer"] == "adamw"]:
        rounded = [[step, loss + 3e-7] for step, loss in run["eval_loss"]]  # another kernel's float32 rounding
        result["runs"].append(dict(run, optimizer="adapm", eval_loss=rounded))
    result["settings"]["optimizers"].append("adapm")
    table = results.aggregate(result)
    assert table["adapm"]["identical_to_adamw"] and not table["alphaadam"]["identical_to_adamw"]
    rows = [r for r in results.summary(result) if r["claim"].startswith("AdaPM")]
    assert len(rows) == 1 and rows[0]["verdict"] == "not shown (the same updates as AdamW)"
    assert "AdamW's run in every seed" in rows[0]["measured"] and "'other'" in rows[0]["measured"]


def test_best_lr_waits_for_the_whole_grid():
    runs = [_run("adamw", 1e-3, 0, [1.0, 1.0, 1.0, 1.0])]
    assert results.best_lr(runs, "adamw", [1e-3, 2e-3]) is None


def test_verdicts():
    assert results.verdict((-0.10, 0.01), 3) == "better than AdamW"
    assert results.verdict((0.10, 0.01), 3) == "worse than AdamW"
    assert results.verdict((-0.01, 0.05), 3) == "not shown (within noise)"
    assert results.verdict((-0.006, 0.003), 3) == "not shown (within noise)"  # 2 standard errors, not 4.3
    assert results.verdict((-0.006, 0.003), 11) == "better than AdamW"
    assert results.verdict((0.1, 0.0), 1).startswith("not shown (fewer than 2")
    assert results.verdict((0.1, 0.01), 3, lower_is_better=False) == "better than AdamW"
    assert results.verdict((0.1, 0.0), 3, lower_is_better=False, floor=0.15) == "not shown (within noise)"
    # 1 more right answer of 32 in each of 3 seeds (3.1 % +- 0) is within the binomial noise of 96 answers
    assert results.verdict((1 / 32, 0.0), 3, lower_is_better=False,
                            floor=results.accuracy_noise([0.05, 0.08], 32, 3)) == "not shown (within noise)"


def test_summary_rows():
    rows = results.summary(_result([0.2, -0.3, 0.1]))  # loss: mean difference 0; accuracy +30 % in every seed
    assert [r["verdict"] for r in rows] == ["noted", "not shown (within noise)", "better than AdamW"]
    assert "(grid edge)" in rows[0]["measured"] and "best lr 0.001" in rows[1]["measured"]
    assert "+0.000 / +0.000 / +0.000 / +0.000" in rows[1]["measured"]
    with pytest.raises(ValueError, match="no AdamW baseline"):
        results.summary({"settings": {"optimizers": [], "lrs": []}, "runs": []})
