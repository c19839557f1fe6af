"""The notebooks run top to bottom (small settings through their environment-variable parameters) and are kept
without outputs in the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SHAKESPEARE = NOTEBOOKS.parent / "data" / "tinyshakespeare" / "input.txt"  # the in-repository excerpt
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def execute(name: str, monkeypatch, **env: str):
    """Run notebooks/<name> in its own folder with `env` set for the kernel; the executed notebook."""
    for key, value in {**OFFLINE, **env}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend displays the figures
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return notebook


def outputs_of(notebook, kind: str) -> list:
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
            if o.get("output_type") == kind or kind in o.get("data", {})]


@pytest.mark.parametrize("name", ["quickstart.ipynb", "alpha_analysis.ipynb"])
def test_outputs_are_stripped(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs not stripped"


@pytest.mark.slow
def test_quickstart(tmp_path, monkeypatch):
    notebook = execute("quickstart.ipynb", monkeypatch, QUICKSTART_MAX_STEPS="12",
                       QUICKSTART_OUTPUT_DIR=str(tmp_path / "quickstart"), QUICKSTART_TEXT_FILE=str(SHAKESPEARE))
    assert outputs_of(notebook, "image/png"), "the alpha plot was not displayed"
    assert (tmp_path / "quickstart" / "alpha.png").is_file()


@pytest.mark.slow
def test_alpha_analysis(tmp_path, monkeypatch):
    notebook = execute("alpha_analysis.ipynb", monkeypatch, ALPHA_ANALYSIS_MAX_STEPS="6",
                       ALPHA_ANALYSIS_MAX_EVAL_SAMPLES="16", ALPHA_ANALYSIS_DIR=str(tmp_path / "analysis"),
                       ALPHA_ANALYSIS_TEXT_FILE=str(SHAKESPEARE))
    assert len(outputs_of(notebook, "image/png")) >= 4  # group plot, AlphaAdam vs Cautious, per type, loss
    for optim in ("adamw_torch", "cautious_adamw", "alphaadam"):
        assert (tmp_path / "analysis" / optim / "trainer_state.json").is_file()
