"""The helpers of ``benchmarks/adapm_ablation.py``: the Pareto front, the better-default rule, the tuned lrs read
from a convergence result, the per-variant rows, and the quick run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import adapm_ablation  # noqa: E402


def test_pareto_front_keeps_only_undominated_points():
    points = {"a": (10, 2.0), "b": (20, 1.9), "c": (20, 2.1), "d": (30, 1.9), "e": (5, 2.5), "f": (15, math.inf),
              "g": (10, 2.0)}
    # c is dominated by b; d by b (same loss, more bytes); f diverged; a and g tie (neither strictly better)
    assert adapm_ablation.pareto_front(points) == ["e", "a", "g", "b"]
    assert adapm_ablation.pareto_front({"x": (1, 1.0)}) == ["x"]


def row(loss: float, gap: float, momentum: int, total: int) -> dict:
    return {"final_loss": loss, "gap_pct": gap, "momentum_bytes": momentum, "total_bytes": total}


def test_recommend_needs_the_target_and_no_more_memory():
    rows = {"adamw": row(2.00, 0.0, 100, 200), "default": row(2.04, 2.0, 40, 140),
            "rank32": row(2.01, 0.5, 60, 160),  # within 1 % but more memory: not eligible
            "rank8": row(2.05, 2.5, 30, 130),  # less memory, but worse and not within 1 %
            "mini": row(2.03, 1.5, 40, 60)}  # better on both loss and total, but the same momentum
    assert adapm_ablation.recommend(rows)["variant"] is None
    rows["mini"]["momentum_bytes"] = 39  # now strictly better on loss and both memories
    pick = adapm_ablation.recommend(rows)
    assert pick["variant"] == "mini" and pick["options"] == {"second_moment": "mini"}
    rows["rank4"] = row(2.025, 0.75, 20, 120)  # within 1 % at less memory: the least momentum wins
    pick = adapm_ablation.recommend(rows)
    assert pick["variant"] == "rank4" and pick["qualified"] == ["mini", "rank4"]
    rows["rank4"]["final_loss"] = math.inf  # a diverged variant never qualifies
    assert adapm_ablation.recommend(rows)["variant"] == "mini"
    rows["refit2"] = row(2.001, 0.05, 40, 140)  # within 1 % at the default's memory: lower loss alone is no reason
    rows["default"]["gap_pct"] = 0.9
    assert adapm_ablation.recommend(rows)["variant"] == "mini"
    del rows["mini"]
    assert adapm_ablation.recommend(rows)["variant"] == "default"  # tie on memory: the lower loss, here the default


def test_recommend_keeps_a_default_that_already_meets():
    rows = {"adamw": row(2.0, 0.0, 100, 200), "default": row(2.01, 0.5, 40, 140), "rank32": row(2.0, 0.0, 60, 160)}
    assert adapm_ablation.recommend(rows)["variant"] == "default"


def test_tuned_lrs_take_adapm_best_and_its_better_neighbour(tmp_path):
    """The lr check goes to the side of AdaPM's best lr where the sweep's loss was lower."""
    sweep = [{"variant": "adapm", "lr": lr, "at_fraction": {"1.0": loss}}
             for lr, loss in ((2.5e-3, 1.95), (5e-3, 1.90), (1e-2, 1.93), (2e-2, 2.1))]
    sweep += [{"variant": "adamw", "lr": 2.5e-3, "at_fraction": {"1.0": 1.9}}]
    path = tmp_path / "adapm_convergence.json"
    path.write_text(json.dumps({"corpora": {"shakespeare": {"best_lr": {"adamw": 2.5e-3, "adapm": 5e-3},
                                                            "sweep": sweep}}}))
    tuned = adapm_ablation.tuned_lrs(path)
    assert tuned["adamw"] == 2.5e-3 and tuned["adapm"] == 5e-3 and tuned["neighbour"] == 1e-2
    with pytest.raises(FileNotFoundError, match="run `python -m benchmarks run adapm_convergence` first"):
        adapm_ablation.tuned_lrs(tmp_path / "missing.json")
    with pytest.raises(SystemExit):
        adapm_ablation.parse_args(["--quick", "--seeds", "0"])


def fake_run(variant: str, seed: int, final: float, momentum: int) -> dict:
    values = {"0.2": final + 0.3, "0.4": final + 0.2, "0.6": final + 0.1, "1.0": final}
    return {"variant": variant, "lr": 5e-3, "seed": seed, "at_fraction": values,
            "state_bytes": {"momentum": momentum, "second_moment": 100, "total": momentum + 100}}


def test_variant_rows_pair_against_adamw_and_the_default():
    runs = []
    for seed in (0, 1):
        base = 2.0 + 0.1 * seed
        runs += [fake_run("adamw", seed, base, 100), fake_run("default", seed, base * 1.02, 40),
                 fake_run("rank4", seed, base * 1.03, 10)]
    checks = [dict(fake_run("rank4", 0, 2.0 * 1.03 * 0.99, 10), lr=1e-2)]  # 1 % better at the other lr
    rows = adapm_ablation.variant_rows(runs, checks)
    assert rows["rank4"]["lr_check"]["lr"] == 1e-2
    assert rows["rank4"]["lr_check"]["vs_lr_pct"] == pytest.approx(-1.0)
    assert "lr_check" not in rows["default"]
    assert rows["rank4"]["gap_pct"] == pytest.approx(3.0)
    assert rows["rank4"]["vs_default_pct"]["1.0"]["mean"] == pytest.approx(100 * (1.03 / 1.02 - 1))
    assert rows["rank4"]["momentum_bytes"] == 10 and rows["rank4"]["group"] == "rank"
    result = {"rows": rows, "model_parameters": 350_000, "settings": {"steps": 10, "seeds": [0, 1]},
              "pareto_front": adapm_ablation.pareto_front({k: (r["momentum_bytes"], r["final_loss"])
                                                           for k, r in rows.items()}),
              "recommendation": adapm_ablation.recommend(rows)}
    summary = adapm_ablation.summary(result)
    assert all(set(r) == {"claim", "measured", "verdict"} for r in summary)
    rank4 = next(r for r in summary if "rank 4" in r["claim"])
    assert rank4["verdict"] == "worse than the default"  # +0.98 % in both seeds: no spread
    assert "at lr 0.01 (seed 0) -1.00 % (better there" in rank4["measured"]
    assert summary[-1]["verdict"] == "keep default" and "no variant" in summary[-1]["measured"]
    rows["rank4"]["gap_pct"] = 0.5  # now within 1 % of AdamW, with less momentum than the default
    last = adapm_ablation.summary(result)[-1]
    assert last["verdict"] == "candidate default: rank4 (less memory, within 1 % on the mean of 2 seeds)"
    assert '{"rank": 4}' in last["measured"] and "qualified: rank4" in last["measured"]


@pytest.mark.slow
def test_quick_run_writes_its_json(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ALPHAADAM_DATA", str(REPO_ROOT / "data"))
    adapm_ablation.main(["--quick", "--output-dir", str(tmp_path), "--steps", "5"])
    stored = json.loads((tmp_path / "adapm_ablation_quick.json").read_text())
    assert (tmp_path / "adapm_ablation_quick.png").is_file() and stored["quick"] is True and stored["complete"]
    assert set(stored["rows"]) == set(adapm_ablation.QUICK_VARIANTS)
    assert stored["rows"]["rank4"]["momentum_bytes"] < stored["rows"]["default"]["momentum_bytes"]
    assert stored["rows"]["default"]["seeds"] == [0, 1]
    assert len(stored["runs"]) == 2 * 4 and len(stored["lr_check"]) == 3  # 2 seeds x 4; AdaPM variants at lr 2
    assert all("lr_check" in row for name, row in stored["rows"].items() if name != "adamw")
    assert stored["pareto_front"] and adapm_ablation.summary(stored)
