"""The pure helpers of ``benchmarks/ablation.py`` (Table 3 ablation): checkpoints, averages, lr choice, summary."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

ablation = pytest.importorskip("benchmarks.ablation")


def fake_run(variant: str, lr: float, seed: int, losses: tuple[float, float, float, float], steps: int = 10):
    """A run whose validation loss at 20/40/60/100 % of ``steps`` is ``losses`` (other points in between)."""
    at = dict(zip((2, 4, 6, 10), losses))
    curve = [[0, 4.0]] + [[s, at.get(s, losses[0])] for s in range(1, steps + 1)]
    return {"variant": variant, "lr": lr, "seed": seed, "curve": curve,
            "at_fraction": {str(f): v for f, v in zip(ablation.FRACTIONS, losses)}}


def test_eval_steps_hit_table3_fractions():
    steps = ablation.eval_steps(400, 10)
    assert steps[0] == 0 and steps[-1] == 400 and len(steps) == 11
    assert {round(f * 400) for f in ablation.FRACTIONS} <= set(steps)
    assert ablation.eval_steps(7, 5) == [0, 1, 3, 4, 6, 7]


def test_at_fraction_and_averages():
    run = fake_run("adamw", 1e-3, 0, (3.8, 3.4, 3.3, 3.2))
    assert ablation.at_fraction(run["curve"], 10, 0.4) == 3.4
    with pytest.raises(KeyError):
        ablation.at_fraction([[0, 4.0], [5, 3.0]], 10, 0.2)
    early, late = ablation.early_late(run["at_fraction"])
    assert early == pytest.approx(3.6) and late == pytest.approx(3.25)


def test_best_lr_is_lowest_final_loss():
    sweep = [fake_run("adamw", 1e-3, 0, (3.0, 3.0, 3.0, 2.5)), fake_run("adamw", 3e-3, 0, (2.0, 2.0, 2.0, 2.6)),
             fake_run("sync", 1e-3, 0, (3.0, 3.0, 3.0, 2.9)), fake_run("sync", 3e-3, 0, (3.0, 3.0, 3.0, 2.8))]
    assert ablation.best_lrs(sweep) == {"adamw": 1e-3, "sync": 3e-3}


def test_table_pairs_seeds_and_summary_reports_honestly():
    runs = []
    for seed, shift in ((1, 0.0), (2, 0.1), (3, -0.1)):
        runs.append(fake_run("adamw", 1e-3, seed, tuple(v + shift for v in (3.8, 3.4, 3.3, 3.2))))
        runs.append(fake_run("alphaadam", 2e-3, seed, tuple(v + shift for v in (3.7, 3.35, 3.31, 3.21))))
    rows = ablation.table(runs)
    assert rows["alphaadam"]["lr"] == 2e-3 and rows["alphaadam"]["seeds"] == [1, 2, 3]
    assert rows["adamw"]["early"]["mean"] == pytest.approx(3.6)
    assert rows["adamw"]["early"]["std"] == pytest.approx(0.1)
    paired = rows["alphaadam"]["vs_adamw_pct"]
    assert paired["early"]["lower_in_all_seeds"] and paired["early"]["mean"] < 0
    assert not paired["late"]["lower_in_all_seeds"] and paired["late"]["mean"] > 0
    sweep = [fake_run(v, lr, 0, (3.0, 3.0, 3.0, 3.0)) for v in ("adamw", "alphaadam") for lr in (1e-3, 2e-3, 4e-3)]
    result = {"table": rows, "model_parameters": 1e5, "settings": {"steps": 10, "lrs": [1e-3, 2e-3, 4e-3]},
              "best_lr": {"adamw": 1e-3, "alphaadam": 2e-3}, "sweep": sweep}
    summary = ablation.summary(result)
    assert all(set(row) == {"claim", "measured", "verdict"} for row in summary)
    assert summary[0]["verdict"].startswith("reproduced")
    assert summary[1]["verdict"] == "AlphaAdam higher in every seed"
    assert summary[-1]["verdict"] == "best lr at the edge of the grid for adamw"

    # the other way round: AlphaAdam behind AdamW early is reported as not reproduced
    for run in runs:
        if run["variant"] == "alphaadam":
            run["at_fraction"] = {k: v + 0.2 for k, v in run["at_fraction"].items()}
    result["table"] = ablation.table(runs)
    assert ablation.summary(result)[0]["verdict"].startswith("not reproduced")


def test_sweep_extends_past_an_edge_only():
    sweep = [fake_run("adamw", 1e-3, 0, (3.0, 3.0, 3.0, 2.9)), fake_run("adamw", 2e-3, 0, (3.0, 3.0, 3.0, 2.5)),
             fake_run("sync", 1e-3, 0, (3.0, 3.0, 3.0, 2.4)), fake_run("sync", 2e-3, 0, (3.0, 3.0, 3.0, 2.8)),
             fake_run("async", 1e-3, 0, (3.0, 3.0, 3.0, 2.9)), fake_run("async", 2e-3, 0, (3.0, 3.0, 3.0, 2.5)),
             fake_run("async", 4e-3, 0, (3.0, 3.0, 3.0, 2.6))]
    assert ablation.edge_extensions(sweep, 2.0) == [("adamw", 4e-3), ("sync", 5e-4)]
    assert ablation.tried_lrs(sweep)["async"] == [1e-3, 2e-3, 4e-3]
