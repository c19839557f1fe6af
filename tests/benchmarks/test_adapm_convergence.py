"""The helpers of ``benchmarks/adapm_convergence.py`` and ``_adapm_runs.py``: the t interval, paired differences,
verdicts against the 1 % target, the lr sweep's edge extension, the README rows, and the quick run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import _adapm_runs, _common, adapm_convergence  # noqa: E402


def fake_run(variant: str, lr: float, seed: int, final: float, early: float | None = None,
             corpus: str = "shakespeare") -> dict:
    early = final + 0.3 if early is None else early
    values = {"0.2": early, "0.4": early - 0.1, "0.6": final + 0.05, "1.0": final}
    curve = [[0, 4.0], [2, values["0.2"]], [4, values["0.4"]], [6, values["0.6"]], [10, final]]
    return {"corpus": corpus, "variant": variant, "lr": lr, "seed": seed, "phase": "final", "curve": curve,
            "at_fraction": values, "state_bytes": {"momentum": 100 if variant == "adamw" else 20,
                                                   "second_moment": 100, "total": 200 if variant == "adamw" else 120},
            "seconds": 0.0}


def test_t_interval_uses_student_quantiles():
    entry = _common.t_interval([1.0, 2.0, 3.0])
    assert entry["mean"] == pytest.approx(2.0) and entry["std"] == pytest.approx(1.0)
    assert entry["half_width_95"] == pytest.approx(4.303 / math.sqrt(3))
    assert math.isnan(_common.t_interval([5.0])["half_width_95"])
    assert _common.t_interval([1.0, 3.0])["half_width_95"] == pytest.approx(12.71 * math.sqrt(2) / math.sqrt(2))


def test_paired_differences_pair_by_seed():
    runs = [fake_run("adamw", 1e-3, s, 2.0 + 0.1 * s) for s in (1, 2, 3)]
    runs += [fake_run("adapm", 2e-3, s, (2.0 + 0.1 * s) * 1.02) for s in (1, 2, 3)]
    table = _adapm_runs.paired_differences(runs)
    gap = table["adapm"]["vs_adamw_pct"]["1.0"]
    # the seeds differ by 0.1 in loss, but the paired gap is exactly +2 % in each: no spread
    assert gap["mean"] == pytest.approx(2.0) and gap["std"] == pytest.approx(0.0, abs=1e-9)
    assert table["adamw"]["loss"]["1.0"]["std"] == pytest.approx(0.1)
    assert table["adapm"]["seeds"] == [1, 2, 3]


@pytest.mark.parametrize(("values", "target", "expected"), [
    ([0.2, 0.3, 0.4], 1.0, "meets"),
    ([3.0, 3.2, 3.1], 1.0, "misses"),
    ([0.5, 1.5, 1.0], 1.0, "not shown (95 % interval covers +1 %)"),
    ([2.0, 2.1, 1.9], None, "higher than AdamW"),
    ([-2.0, -2.1, -1.9], None, "lower than AdamW"),
    ([-1.0, 1.0, 0.2], None, "not shown (95 % interval covers 0)"),
    ([0.1], 1.0, "not shown (one seed)"),
])
def test_interval_verdict(values, target, expected):
    assert _adapm_runs.interval_verdict(_common.t_interval(values), target).startswith(expected)


def test_sweep_extends_past_the_edge_then_runs_fresh_seeds(monkeypatch):
    """A fake loss whose minimum is at lr 4e-3 (beyond the grid 1e-3 .. 2e-3): the sweep adds 4e-3, then 8e-3
    (4e-3 is again the edge), and stops there; the fresh seeds run at 4e-3."""
    calls = []

    def fake_train(job):
        calls.append((job["variant"], job["lr"], job["seed"], job["phase"]))
        return fake_run(job["variant"], job["lr"], job["seed"], 2.0 + abs(math.log2(job["lr"] / 4e-3)))

    monkeypatch.setattr(_adapm_runs, "train_run", fake_train)
    sweep, finals = _adapm_runs.sweep_then_seeds({"adamw": None}, {"adamw": [1e-3, 2e-3]}, "shakespeare", {},
                                                 seeds=[1, 2], sweep_seed=0, extend=3, factor=2.0)
    assert sorted(r["lr"] for r in sweep) == [1e-3, 2e-3, 4e-3, 8e-3]
    assert _common.best_lrs(sweep) == {"adamw": 4e-3} and _common.at_edge(sweep) == []
    assert [(r["lr"], r["seed"]) for r in finals] == [(4e-3, 1), (4e-3, 2)]
    assert all(phase == "final" for *_, phase in calls[-2:])


def test_at_edge_reports_unbracketed_best():
    sweep = [fake_run("adamw", lr, 0, loss) for lr, loss in ((1e-3, 2.0), (2e-3, 2.1))]
    sweep += [fake_run("adapm", lr, 0, loss) for lr, loss in ((1e-3, 2.2), (2e-3, 2.0), (4e-3, 2.1))]
    assert _common.at_edge(sweep) == ["adamw"]


def fake_result(gap: float) -> dict:
    """A convergence result on one corpus where AdaPM's loss is AdamW's times (1 + gap) in every seed, plus
    a small seed-dependent wobble."""
    runs, sweep = [], []
    for seed in (1, 2, 3):
        base = 2.0 + 0.05 * seed
        runs.append(fake_run("adamw", 5e-3, seed, base))
        runs.append(fake_run("adapm", 1e-2, seed, base * (1 + gap) + 0.001 * seed))
    for variant in ("adamw", "adapm"):
        for lr, offset in ((2.5e-3, 0.1), (5e-3, 0.0 if variant == "adamw" else 0.05), (1e-2, 0.0), (2e-2, 0.2)):
            sweep.append(fake_run(variant, lr, 0, 2.0 + offset))
    settings = {"steps": 10, "batch_size": 8, "context": 128, "seeds": [1, 2, 3], "sweep_seed": 0}
    table = _adapm_runs.paired_differences(runs)
    data = {"corpus": "shakespeare", "model_parameters": 350_000, "best_lr": _common.best_lrs(sweep),
            "tried_lrs": _common.tried_lrs(sweep), "best_lr_at_edge": _common.at_edge(sweep), "table": table,
            "state_bytes": {r["variant"]: r["state_bytes"] for r in runs}, "curves": {}, "sweep": sweep,
            "runs": runs}
    return {"settings": settings, "corpora": {"shakespeare": data}, "quick": False}


def test_summary_verdicts_follow_the_interval():
    rows = adapm_convergence.summary(fake_result(0.03))
    assert all(set(row) == {"claim", "measured", "verdict"} for row in rows)
    target = next(r for r in rows if "within 1 %" in r["claim"])
    assert target["verdict"].startswith("misses") and "lr 0.01 vs AdamW 0.005" in target["measured"]
    state = next(r for r in rows if "optimizer state" in r["claim"])
    assert "momentum 20.0%" in state["measured"] and "total 60.0%" in state["measured"]
    assert rows[-1]["verdict"] == "yes"  # 5e-3 / 1e-2 are inside the grid 2.5e-3 .. 2e-2
    assert adapm_convergence.summary(fake_result(0.001))[0]["verdict"].startswith("meets")
    with pytest.raises(ValueError, match="no AdamW baseline"):
        result = fake_result(0.0)
        del result["corpora"]["shakespeare"]["table"]["adamw"]
        adapm_convergence.summary(result)


def test_bad_eval_points_is_refused():
    with pytest.raises(SystemExit):
        adapm_convergence.parse_args(["--eval-points", "7"])


@pytest.mark.slow
def test_quick_run_writes_its_json(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ALPHAADAM_DATA", str(REPO_ROOT / "data"))
    result = adapm_convergence.main(["--quick", "--output-dir", str(tmp_path), "--corpora", "shakespeare", "gsm8k",
                                     "--lrs", "5e-3", "1e-2", "--extend", "0", "--steps", "5"])
    path = tmp_path / "adapm_convergence_quick.json"
    stored = json.loads(path.read_text())
    assert (tmp_path / "adapm_convergence_quick.png").is_file() and stored["quick"] is True
    assert set(stored["corpora"]) == {"shakespeare", "gsm8k"}
    for data in stored["corpora"].values():
        assert len(data["sweep"]) == 6 and len(data["runs"]) == 6  # 3 optimizers x (2 lrs | 2 seeds)
        assert data["state_bytes"]["adapm"]["momentum"] < data["state_bytes"]["adamw"]["momentum"]
        assert data["state_bytes"]["adapm_mini"]["second_moment"] < data["state_bytes"]["adapm"]["second_moment"]
    assert "load average" in stored["uptime"]["start"]
    assert adapm_convergence.summary(stored) == adapm_convergence.summary(result)

    # one ablation variant added to the stored result: its own sweep and seeds, paired with the stored runs
    added = adapm_convergence.main(["--quick", "--output-dir", str(tmp_path), "--add-variant", "rank4"])
    for corpus, data in added["corpora"].items():
        mine = [r for r in data["runs"] if r["variant"] == "adapm_rank4"]
        assert [r["seed"] for r in mine] == [1, 2] and {r["lr"] for r in mine} == {data["best_lr"]["adapm_rank4"]}
        assert data["tried_lrs"]["adapm_rank4"][:2] == [5e-3, 1e-2]  # AdaPM's grid, then any edge extension
        assert data["table"]["adapm_rank4"]["vs_adamw_pct"]["1.0"]["n"] == 2
        assert data["runs"][:6] == stored["corpora"][corpus]["runs"]  # the stored runs are kept as they were
        assert data["sweep"][:6] == stored["corpora"][corpus]["sweep"]
    rows = adapm_convergence.summary(json.loads(path.read_text()))
    assert any("rank 4 (adapm_ablation's rank4" in row["claim"] for row in rows)
    with pytest.raises(SystemExit, match="not an AdaPM variant"):
        adapm_convergence.main(["--quick", "--output-dir", str(tmp_path), "--add-variant", "adamw"])
