"""Recipes under 2-process launches on CPU (gloo), with the repository's launch configs unchanged:
`accelerate launch --config_file recipes/accelerate/ddp.yaml` (DDP; the recipe's CPU config sets use_cpu) and
`accelerate launch --config_file recipes/accelerate/deepspeed_zero2.yaml` (DeepSpeed ZeRO-2, DS_ACCELERATOR=cpu;
the first run JIT-builds DeepSpeed's small shared-memory comm op, about 30 s)."""

from __future__ import annotations

import json
import sys

import pytest

from _run import DATA, ROOT, alpha_entries, assert_resumed, free_port, run_recipe, trainer_state

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def accelerate_launch(config: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "recipes" / "accelerate" / config), "--num_processes", "2", "--main_process_port",
            str(free_port())]


def test_sft_ddp_two_processes(tiny_models, tmp_path):
    out = tmp_path / "sft-ddp"
    result = run_recipe("sft.py", "sft_tiny_cpu.yaml", "--output_dir", out, "--model_name_or_path",
                        tiny_models["llama"], "--dataset_name", DATA / "gsm8k", "--max_samples", "16",
                        "--max_eval_samples", "5", "--max_length", "160", "--max_new_tokens", "8", "--max_steps", "2",
                        "--save_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "2",
                        launcher=accelerate_launch("ddp.yaml"))
    output = result.stdout + result.stderr
    assert "Total train batch size (w. parallel, distributed & accumulation) = 4" in output  # 2 processes x 2
    assert alpha_entries(trainer_state(out / "checkpoint-2")["log_history"])
    metrics = json.loads((out / "eval_results.json").read_text())
    assert 0.0 <= metrics["eval_gsm8k_accuracy"] <= 1.0  # 5 questions split 3 + 3 (padded) over the processes


def test_pretrain_deepspeed_zero2_and_resume(tiny_models, tmp_path):
    pytest.importorskip("deepspeed")
    out = tmp_path / "gpt2-zero2"
    args = ("--output_dir", out, "--config_name", tiny_models["gpt2"], "--tokenizer_name", tiny_models["gpt2"],
            "--config_overrides", "n_layer=2,n_positions=64", "--block_size", "64",
            "--dataset_name", DATA / "tinyshakespeare" / "input.txt", "--max_samples", "300",
            "--max_eval_samples", "30",
            "--save_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "2")
    launcher, env = accelerate_launch("deepspeed_zero2.yaml"), {"DS_ACCELERATOR": "cpu"}
    first = run_recipe("pretrain_gpt2.py", "pretrain_gpt2_tiny_cpu.yaml", *args, "--max_steps", "2",
                       launcher=launcher, env=env)
    assert "ZeRO" in first.stdout + first.stderr  # "You are using ZeRO with an untested optimizer"
    assert (out / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's own checkpoint format
    assert alpha_entries(trainer_state(out / "checkpoint-2")["log_history"])

    resumed = run_recipe("pretrain_gpt2.py", "pretrain_gpt2_tiny_cpu.yaml", *args, "--max_steps", "3",
                         "--resume_from_checkpoint", out / "checkpoint-2", launcher=launcher, env=env)
    assert_resumed(resumed.stdout + resumed.stderr)
    final = trainer_state(out / "checkpoint-3")
    assert final["global_step"] == 3 and any(e["step"] == 3 for e in alpha_entries(final["log_history"]))
    assert (out / "val_loss.json").is_file()


def test_pretrain_deepspeed_zero3_with_zero_init_logs_real_alpha(tiny_models, tmp_path):
    """deepspeed_zero3.yaml sets zero3_init_flag: the model is partitioned as it is created, so the optimizer
    sees empty placeholders; the plugin must take each tensor's true size (ds_numel) for alpha and mask ratios."""
    pytest.importorskip("deepspeed")
    out = tmp_path / "gpt2-zero3"
    run_recipe("pretrain_gpt2.py", "pretrain_gpt2_tiny_cpu.yaml", "--output_dir", out, "--config_name",
               tiny_models["gpt2"], "--tokenizer_name", tiny_models["gpt2"], "--config_overrides",
               "n_layer=2,n_positions=64", "--block_size", "64", "--dataset_name",
               DATA / "tinyshakespeare" / "input.txt", "--max_samples", "300", "--max_eval_samples", "30",
               "--save_steps", "3", "--logging_steps", "1", "--per_device_train_batch_size", "2", "--max_steps", "3",
               launcher=accelerate_launch("deepspeed_zero3.yaml"), env={"DS_ACCELERATOR": "cpu"})
    entries = alpha_entries(trainer_state(out / "checkpoint-3")["log_history"])
    later = [entry for entry in entries if entry["step"] > 1]
    assert later
    for entry in later:
        assert 0.0 < entry["mask_ratio/decay"] < 1.0  # nan when the placeholder's size 0 was used
        assert entry["alpha/decay/max"] > 1.0
