"""contrans_toxicity's default data: the ToxiGen files fetched by name into the cache.

No network here, so `urlopen` is replaced by a stand-in that serves the public repository's layout
(the paths below are those of github.com/microsoft/TOXIGEN for the groups the task uses) with
placeholder sentences: what is checked is which files are asked for and what is done with them.
"""

from __future__ import annotations

import importlib.util
import io
import urllib.error
from pathlib import Path

import pytest

TASK_UTILS = Path(__file__).resolve().parents[1] / "tasks" / "contrans_toxicity" / "utils.py"
GROUPS = {
    "race": ["asian", "black", "latino", "native_american"],
    "nationality": ["chinese", "immigrant", "mexican", "middle_east"],
    "sexual_orientation": ["lgbtq", "bisexual"],
    "disability": ["physical_disability"],
}
# the repository names most demonstration files <kind>_<group>_sentences.txt, the
# sexual-orientation ones <kind>_<group>.txt
REMOTE_FILES = {f"prompts/{kind}_{group}_1k.txt" for groups in GROUPS.values() for group in groups
                for kind in ("hate", "neutral")}
REMOTE_FILES |= {f"demonstrations/{category}/{kind}_{group}{'' if category == 'sexual_orientation' else '_sentences'}.txt"
                 for category, groups in GROUPS.items() for group in groups for kind in ("hate", "neutral")}


@pytest.fixture()
def toxicity_utils(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path / "cache"))
    spec = importlib.util.spec_from_file_location("contrans_toxicity_utils", TASK_UTILS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serve(monkeypatch, module, missing: set[str] = frozenset()) -> list[str]:
    requested = []

    def urlopen(url, timeout=None):
        requested.append(url)
        relative = url.removeprefix(module.REMOTE + "/")
        if relative not in REMOTE_FILES or relative in missing:
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        kind = "hate" if "/hate_" in url else "neutral"
        if relative.startswith("prompts/"):
            return io.BytesIO(b"".join(f"- {kind} p{i}\\n- {kind} q{i}\\n-\n".encode() for i in range(30)))
        return io.BytesIO("".join(f"{kind} d{i}\n" for i in range(12)).encode())

    monkeypatch.setattr(module.urllib.request, "urlopen", urlopen)
    return requested


def test_toxigen_is_fetched_once_from_the_public_repository(toxicity_utils, tmp_path, monkeypatch):
    requested = serve(monkeypatch, toxicity_utils)
    docs = toxicity_utils.load()["test"]
    fetched = {url.removeprefix(toxicity_utils.REMOTE + "/") for url in requested}
    assert REMOTE_FILES <= fetched  # every file the task uses, at the repository's own paths
    assert all(url.startswith("https://raw.githubusercontent.com/microsoft/TOXIGEN/") for url in requested)
    root = tmp_path / "cache" / "data" / "toxigen"
    assert (root / "COMPLETE").is_file()
    assert len(docs) == 11 * 2 * toxicity_utils.PROMPTS_PER_FILE
    assert {doc["group"] for doc in docs} == {group for groups in GROUPS.values() for group in groups}
    assert all(doc["neutral"].startswith("neutral d") and doc["hateful"].startswith("hate d") for doc in docs)

    requested.clear()
    assert len(toxicity_utils.load()["test"]) == len(docs)
    assert requested == []  # the second run reads the cache


def test_a_failed_prompt_download_raises_and_is_retried(toxicity_utils, tmp_path, monkeypatch):
    serve(monkeypatch, toxicity_utils, missing={"prompts/neutral_lgbtq_1k.txt"})
    with pytest.raises(urllib.error.HTTPError):
        toxicity_utils.load()
    root = tmp_path / "cache" / "data" / "toxigen"
    assert not (root / "COMPLETE").exists()  # a half-fetched copy is never taken as complete
    kept = {str(path.relative_to(root)) for path in root.rglob("*.txt")}
    assert "prompts/hate_asian_1k.txt" in kept and "prompts/neutral_lgbtq_1k.txt" not in kept

    requested = serve(monkeypatch, toxicity_utils)
    toxicity_utils.load()
    retried = {url.removeprefix(toxicity_utils.REMOTE + "/") for url in requested}
    assert "prompts/neutral_lgbtq_1k.txt" in retried and not retried & kept  # only what is missing
    assert (root / "COMPLETE").is_file()
