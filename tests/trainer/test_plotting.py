"""plot_alpha / read_alpha_logs: figures from a log_history list, a trainer_state.json and a TensorBoard run."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("matplotlib")

from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from hf_alphaadam import plot_alpha  # noqa: E402
from hf_alphaadam.trainer.plotting import read_alpha_logs  # noqa: E402

STEPS = [10, 20, 30, 40]
TENSORS = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight", "model.norm.weight"]


def synthetic_history() -> list[dict]:
    """A log_history as the Trainer + AlphaMonitorCallback(per_tensor=True) write it, with an eval log and the
    end-of-training summary in between (they carry no alpha keys)."""
    history = []
    for i, step in enumerate(STEPS):
        entry = {"loss": 3.0 - 0.1 * i, "learning_rate": 1e-3, "epoch": i / 4, "step": step}
        for offset, group in enumerate(("decay", "no_decay")):
            mean = 1.2 + 0.05 * i + 0.1 * offset
            entry.update({f"alpha/{group}/mean": mean, f"alpha/{group}/min": mean - 0.1,
                          f"alpha/{group}/max": mean + 0.3, f"mask_ratio/{group}": 0.5 + 0.02 * i})
        for k, name in enumerate(TENSORS):
            entry[f"alpha_tensor/{name}"] = 1.1 + 0.1 * k + 0.01 * i
            entry[f"mask_ratio_tensor/{name}"] = 0.5
        history.append(entry)
        if step == 20:
            history.append({"eval_loss": 2.9, "epoch": 0.25, "step": step})
    history.append({"train_runtime": 1.0, "train_loss": 2.85, "epoch": 1.0, "step": STEPS[-1]})
    return history


def lines_by_label(axis) -> dict:
    return {line.get_label(): line for line in axis.get_lines()}


def assert_png(path) -> None:
    import matplotlib.image

    assert path.is_file() and path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(str(path)).shape[:2]
    assert width > 800 and height > 600


def test_plot_from_log_history(tmp_path):
    import matplotlib.pyplot as plt

    figures_before = plt.get_fignums()
    path = tmp_path / "plots" / "alpha.png"
    figure = plot_alpha(synthetic_history(), path)

    assert isinstance(figure, Figure)
    assert plt.get_fignums() == figures_before  # a bare Figure: nothing left in pyplot's global state
    alpha_axis, mask_axis = figure.axes
    assert alpha_axis.get_ylabel() == "alpha" and mask_axis.get_ylabel() == "mask ratio"
    assert mask_axis.get_xlabel() == "step"

    alpha_lines = lines_by_label(alpha_axis)
    assert {"decay", "no_decay"} <= set(alpha_lines)
    assert list(alpha_lines["decay"].get_xdata()) == STEPS
    assert list(alpha_lines["no_decay"].get_ydata()) == pytest.approx([1.3, 1.35, 1.4, 1.45])
    # the alpha = 1 reference line (plain AdamW) is drawn and visible
    assert any(list(line.get_ydata()) == [1.0, 1.0] for line in alpha_axis.get_lines())
    assert alpha_axis.get_ylim()[0] < 1.0
    # one min-max band per group, spanning min..max
    bands = [c for c in alpha_axis.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    vertices = bands[0].get_paths()[0].vertices
    assert vertices[:, 1].min() == pytest.approx(1.1) and vertices[:, 1].max() == pytest.approx(1.65)

    mask_lines = lines_by_label(mask_axis)
    assert set(mask_lines) == {"decay", "no_decay"}
    assert list(mask_lines["decay"].get_ydata()) == pytest.approx([0.5, 0.52, 0.54, 0.56])
    assert_png(path)


def test_groups_and_per_tensor_panels(tmp_path):
    figure = plot_alpha(synthetic_history(), groups=["no_decay"], per_tensor=True, title="run 1")
    assert len(figure.axes) == 3
    assert set(lines_by_label(figure.axes[1])) == {"no_decay"}
    tensor_lines = [line for line in figure.axes[2].get_lines() if not line.get_label().startswith("_")]
    assert [line.get_label() for line in tensor_lines] == TENSORS
    assert figure.get_suptitle() == "run 1"

    only_layers = plot_alpha(synthetic_history(), per_tensor=r"layers\.")
    labels = [line.get_label() for line in only_layers.axes[2].get_lines() if not line.get_label().startswith("_")]
    assert labels == TENSORS[:2]


def test_read_alpha_logs_keeps_only_alpha_entries():
    entries = read_alpha_logs(synthetic_history())
    assert [entry["step"] for entry in entries] == STEPS
    assert all("loss" not in entry and "alpha/decay/mean" in entry for entry in entries)


def test_plot_from_trainer_state_json(tmp_path):
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 40, "log_history": synthetic_history()}))
    for source in (tmp_path / "trainer_state.json", tmp_path):  # the file, or the checkpoint folder holding it
        figure = plot_alpha(str(source))
        assert list(lines_by_label(figure.axes[0])["decay"].get_xdata()) == STEPS


def test_plot_from_tensorboard_run(tmp_path, monkeypatch):
    """End to end: a Trainer run with report_to=tensorboard, plotted from its event files and from log_history."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    from hf_alphaadam import AlphaAdam, AlphaMonitorCallback

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb" / "run1"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    tokens = torch.randint(0, 128, (32, 16), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": row, "labels": row} for row in tokens]
    named = list(model.named_parameters())
    optimizer = AlphaAdam([
        {"name": "decay", "params": [p for _, p in named if p.ndim >= 2],
         "param_names": [n for n, p in named if p.ndim >= 2]},
        {"name": "no_decay", "params": [p for _, p in named if p.ndim < 2],
         "param_names": [n for n, p in named if p.ndim < 2], "weight_decay": 0.0},
    ], lr=1e-3)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, logging_steps=2, max_steps=6,
                             per_device_train_batch_size=4, report_to=["tensorboard"], save_strategy="no",
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None),
                      callbacks=[AlphaMonitorCallback(per_tensor=True)])
    trainer.train()

    from_history = plot_alpha(trainer.state.log_history)
    path = tmp_path / "from_tb.png"
    from_tb = plot_alpha(tmp_path / "tb", path, per_tensor=True)  # the parent folder: event files are found below
    assert_png(path)
    assert len(from_tb.axes) == 3
    for axis_history, axis_tb in zip(from_history.axes, from_tb.axes[:2]):
        history_lines, tb_lines = lines_by_label(axis_history), lines_by_label(axis_tb)
        assert {"decay", "no_decay"} <= set(tb_lines)
        for group in ("decay", "no_decay"):
            assert list(tb_lines[group].get_xdata()) == [2, 4, 6]
            # TensorBoard stores float32
            assert list(tb_lines[group].get_ydata()) == pytest.approx(list(history_lines[group].get_ydata()),
                                                                      rel=1e-6)
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    entries = read_alpha_logs(tmp_path / "tb")
    assert {key.removeprefix("alpha_tensor/") for key in entries[0] if key.startswith("alpha_tensor/")} == names


def test_errors_name_the_problem(tmp_path, monkeypatch):
    no_alpha = [{"loss": 1.0, "step": 1}]
    with pytest.raises(ValueError, match="AlphaMonitorCallback"):
        plot_alpha(no_alpha)
    with pytest.raises(ValueError, match="groups found"):
        plot_alpha(synthetic_history(), groups=["embeddings"])
    group_only = [{k: v for k, v in e.items() if "_tensor/" not in k} for e in synthetic_history()]
    with pytest.raises(ValueError, match="per_tensor=True"):
        plot_alpha(group_only, per_tensor=True)
    with pytest.raises(FileNotFoundError):
        plot_alpha(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="event files"):
        plot_alpha(tmp_path / "empty")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    with pytest.raises(ImportError, match=r"hf-alphaadam\[plot\]"):
        plot_alpha(synthetic_history())


def test_matplotlib_is_imported_lazily():
    """matplotlib is an optional extra: no module-level import of it in the package (only inside functions)."""
    import ast
    import pathlib

    import hf_alphaadam

    for path in pathlib.Path(hf_alphaadam.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        modules = [alias.name for node in top_level if isinstance(node, ast.Import) for alias in node.names]
        modules += [node.module or "" for node in top_level if isinstance(node, ast.ImportFrom)]
        assert not any(name.split(".")[0] == "matplotlib" for name in modules), path
