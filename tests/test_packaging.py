"""What `pip install lm-eval-contrans` puts on a user's machine: the wheel built from this checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.cli
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    folder = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder), str(REPO)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = folder.glob("lm_eval_contrans-*.whl")
    return zipfile.ZipFile(path)


def shipped(folder: str) -> list[str]:
    return [path.relative_to(REPO).as_posix() for path in sorted((REPO / folder).rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts]


def test_the_wheel_carries_every_task_concept_set_and_data_file_where_the_package_looks(wheel):
    """Tasks and concept sets live beside the package in a checkout and inside it in a wheel
    (`tasks_path.shipped_dir`); a file left out works in every test run from a checkout and fails
    only for users who pip-installed."""
    files = set(wheel.namelist())
    expected = {f"lm_eval_contrans/{name}" for name in shipped("tasks") + shipped("concept_sets")}
    expected |= set(shipped("lm_eval_contrans"))
    assert len(expected) >= 70 and not expected - files, sorted(expected - files)
    assert "lm_eval_contrans_plugin.pth" in files  # `--model contrans` on lm-eval 0.4.13
    assert "lm_eval_contrans/data/neutral_anchors.txt" in files
    entry_points = wheel.read(next(name for name in files if name.endswith(".dist-info/entry_points.txt"))).decode()
    assert "contrans = lm_eval_contrans.hf.lm_eval_model:ConTransLM" in entry_points  # lm-eval > 0.4.13 finds it here
    assert "contrans-vllm = lm_eval_contrans.vllm.lm_eval_model:ConTransVLLM" in entry_points
    assert "contrans = lm_eval_contrans.cli:main" in entry_points


# the experiments package as it ships: what `contrans compare` runs on; the modules only the experiments in
# bench/experiments use live there (bench/README.md)
PRODUCT_EXPERIMENTS = {"__init__.py", "compare.py", "controls.py", "grid.py", "paired.py", "prompt_baseline.py", "report.py"}
LAB_MODULES = ("experiment_data", "emotion_steering", "states", "map_levers", "contrast_rows", "_timing")


def test_the_wheel_holds_the_product_and_none_of_the_lab(wheel):
    """The wheel's file list: the package, its tasks and concept sets, the .pth and the metadata; no
    experiment-only module, nothing of bench/, tests/, scripts/ or docs/, and no shipped module that
    imports one of them."""
    import re

    files = set(wheel.namelist())
    assert {name.split("/")[0] for name in files if ".dist-info/" not in name} == {"lm_eval_contrans", "lm_eval_contrans_plugin.pth"}
    experiments = {name.removeprefix("lm_eval_contrans/experiments/") for name in files if name.startswith("lm_eval_contrans/experiments/")}
    assert experiments == PRODUCT_EXPERIMENTS, f"not the product's: {sorted(experiments - PRODUCT_EXPERIMENTS)}"
    checkout = {f"lm_eval_contrans/{name}" for name in shipped("tasks") + shipped("concept_sets")} | set(shipped("lm_eval_contrans"))
    python, checkout_python = ({name for name in names if name.endswith(".py")} for names in (files, checkout))
    assert python == checkout_python, sorted(python ^ checkout_python)  # the package's modules and the tasks' utils, no others
    lab_import = re.compile(r"^\s*(?:from|import)\s+(?:" + "|".join(LAB_MODULES) + r")\b"
                            r"|lm_eval_contrans\.experiments\.(?:data|emotion_steering|states|map_levers|contrast_rows)\b", re.MULTILINE)
    importing = [name for name in sorted(python) if lab_import.search(wheel.read(name).decode())]
    assert not importing, f"shipped modules that import experiment-only code: {importing}"
