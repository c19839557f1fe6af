"""Every recipe end to end on real data (the excerpts in data/) with a tiny local model, for a few steps: it finishes,
writes its metrics, logs alpha / mask-ratio keys, saves a checkpoint and resumes from it. The recipes run as
subprocesses with their CPU config + command-line overrides, exactly as documented in recipes/README.md."""

from __future__ import annotations

import json

import pytest

from _run import DATA, alpha_entries, assert_resumed, run_recipe, trainer_state

pytestmark = pytest.mark.slow

# Small everything: 2 steps, then a resumed run to step 3 from checkpoint-2.
COMMON = ("--max_steps", "2", "--save_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "2",
          "--per_device_eval_batch_size", "4", "--dataloader_num_workers", "0")


def run_and_resume(recipe, config, output_dir, *args, steps_after=3):
    """Train 2 steps (checkpoint-2), then resume to `steps_after`; returns the resumed run's final trainer state."""
    run_recipe(recipe, config, "--output_dir", output_dir, *COMMON, *args)
    checkpoint = output_dir / "checkpoint-2"
    assert (checkpoint / "trainer_state.json").is_file() and any(checkpoint.glob("optimizer.*"))
    first = trainer_state(checkpoint)
    assert first["global_step"] == 2
    assert alpha_entries(first["log_history"]), f"no alpha / mask_ratio keys in {first['log_history']}"

    resumed = run_recipe(recipe, config, "--output_dir", output_dir, *COMMON, *args, "--max_steps", str(steps_after),
                         "--resume_from_checkpoint", checkpoint)
    assert_resumed(resumed.stdout + resumed.stderr)
    final = trainer_state(output_dir / f"checkpoint-{steps_after}")
    assert final["global_step"] == steps_after
    assert any(e["step"] == steps_after for e in alpha_entries(final["log_history"]))
    return final


def test_sft_gsm8k(tiny_models, tmp_path):
    out = tmp_path / "sft"
    run_and_resume("sft.py", "sft_tiny_cpu.yaml", out, "--model_name_or_path", tiny_models["llama"],
                   "--dataset_name", DATA / "gsm8k", "--max_samples", "16", "--max_eval_samples", "4",
                   "--max_length", "160", "--max_new_tokens", "8")
    metrics = json.loads((out / "eval_results.json").read_text())
    assert 0.0 <= metrics["eval_gsm8k_accuracy"] <= 1.0 and metrics["eval_loss"] > 0
    assert (out / "runs").is_dir()  # TensorBoard


def test_dpo_hh_rlhf(tiny_models, tmp_path):
    out = tmp_path / "dpo"
    run_and_resume("dpo.py", "dpo_tiny_cpu.yaml", out, "--model_name_or_path", tiny_models["llama"],
                   "--dataset_name", DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz", "--eval_split_size", "8",
                   "--max_samples", "16", "--max_eval_samples", "4", "--max_length", "96", "--use_peft", "false",
                   "--optim", "cautious_adamw")  # the reference model is rebuilt from the local checkpoint
    metrics = json.loads((out / "eval_results.json").read_text())
    assert {"eval_rewards/accuracies", "eval_rewards/margins", "eval_loss"} <= metrics.keys()


def test_grpo_gsm8k(tiny_models, tmp_path):
    out = tmp_path / "grpo"
    run_and_resume("grpo.py", "grpo_tiny_cpu.yaml", out, "--model_name_or_path", tiny_models["llama"],
                   "--dataset_name", DATA / "gsm8k", "--max_samples", "16", "--max_eval_samples", "2",
                   "--num_generations", "2", "--max_completion_length", "8", "--lora_r", "4")  # LoRA (the config's)
    assert (out / "adapter_config.json").is_file()
    metrics = json.loads((out / "eval_results.json").read_text())
    assert "eval_rewards/correctness/mean" in metrics and "eval_reward" in metrics


def test_glue_lr_sweep(tiny_models, tmp_path):
    out = tmp_path / "glue"
    args = ("--model_name_or_path", tiny_models["bert"], "--dataset_name", DATA / "glue", "--max_samples", "32",
            "--max_eval_samples", "32", "--max_seq_length", "64")
    run_recipe("glue.py", "glue_tiny_cpu.yaml", "--output_dir", out, *COMMON, *args,
               "--task_name", "rte", "mrpc", "sst2", "stsb", "--lr_grid", "1e-4", "3e-4")
    results = json.loads((out / "glue_results.json").read_text())
    assert list(results) == ["rte", "mrpc", "sst2", "stsb"]
    assert {"accuracy", "f1"} <= results["mrpc"].keys() and {"pearson", "spearman"} <= results["stsb"].keys()
    for task, result in results.items():
        assert result["best_lr"] in (1e-4, 3e-4) and set(result["runs"]) == {"0.0001", "0.0003"}
        assert alpha_entries(trainer_state(out / task / "lr0.0001" / "checkpoint-2")["log_history"])
    assert "| score |" in (out / "glue_results.md").read_text()

    # --resume_from_checkpoint true: each run continues from the latest checkpoint in its own folder.
    resumed = run_recipe("glue.py", "glue_tiny_cpu.yaml", "--output_dir", out, *COMMON, *args, "--task_name", "stsb",
                         "--learning_rate", "1e-4", "--max_steps", "3", "--resume_from_checkpoint", "true")
    assert_resumed(resumed.stdout + resumed.stderr)
    assert trainer_state(out / "stsb" / "lr0.0001" / "checkpoint-3")["global_step"] == 3


def test_pretrain_gpt2_shakespeare(tiny_models, tmp_path):
    out = tmp_path / "gpt2"
    run_and_resume("pretrain_gpt2.py", "pretrain_gpt2_tiny_cpu.yaml", out, "--config_name", tiny_models["gpt2"],
                   "--tokenizer_name", tiny_models["gpt2"], "--config_overrides", "n_layer=2,n_positions=64",
                   "--block_size", "64", "--dataset_name", DATA / "tinyshakespeare" / "input.txt",
                   "--max_samples", "300", "--max_eval_samples", "30", steps_after=5)
    table = json.loads((out / "val_loss.json").read_text())
    # Fractions 0.2/0.4/0.6/1.0 of 5 steps: steps 1, 2, 3, 5 (the first two in the run before the resume).
    assert table["max_steps"] == 5 and list(table["val_loss"]) == ["0.2", "0.4", "0.6", "1.0"]
    assert all(loss > 0 for loss in table["val_loss"].values())
