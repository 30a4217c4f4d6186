"""Hub models: the commit a hub id at its revision resolves to, from the hub or offline from its cache.
Cached states of a hub model are keyed on that commit, so another revision, or the repository moving on,
never reuses them."""

from __future__ import annotations

import functools
from pathlib import Path

from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.loading.specs import ModelSpec


def hub_commit(spec: ModelSpec) -> str | None:
    """The commit a hub id at its revision resolves to now (from the hub, or offline from its cache).
    A repository or revision that is not there is a ConTransError naming the argument; None where
    the commit cannot be told (loading the model will then say why)."""
    return _hub_commit(spec.pretrained, spec.revision, spec.argument) if spec.on_hub and spec.gguf_file is None else None


@functools.lru_cache(maxsize=32)
def _hub_commit(repo: str, revision: str | None, argument: str) -> str | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    named = f"{repo}@{revision}" if revision else repo
    offline = False
    for file in ("config.json", "adapter_config.json", "tokenizer_config.json"):  # a model, peft adapter or tokenizer
        try:  # the snapshot folder a file is read from is named by its commit
            return Path(hf_hub_download(repo, file, revision=revision)).parent.name
        except RevisionNotFoundError:
            raise ConTransError(argument, f"{repo} has no revision {revision!r} on the hub (a branch, tag or commit)") from None
        except RepositoryNotFoundError:
            raise ConTransError(argument, f"{named}: no such local folder, and no such model on the hub (a private or gated "
                                          "one needs `hf auth login` first)") from None
        except HFValidationError:
            raise ConTransError(argument, f"{named}: no such local folder (nor a hub id: owner/name)") from None
        except LocalEntryNotFoundError:  # offline, or the hub did not answer, and the file is not in the cache
            offline = True
        except Exception:  # noqa: BLE001 - e.g. the file is not in this repository: try the next one
            continue
    if offline:
        refs, commits = _cached_revisions(repo)
        if not refs | commits:
            raise ConTransError(argument, f"{named}: no such local folder, and the hub cannot be reached (HF_HUB_OFFLINE, or no "
                                          "network) with nothing of it in the local hub cache")
        if revision is not None and revision not in refs | commits:
            raise ConTransError(argument, f"{named}: the hub cannot be reached, and the local hub cache holds {repo} at "
                                          f"{', '.join(sorted(refs)) or 'commits only'}, not at {revision!r}")
    return None


def _cached_revisions(repo: str) -> tuple[set[str], set[str]]:
    """The refs and the commits of `repo` in the local hub cache (empty when nothing of it is there)."""
    from huggingface_hub import constants

    root = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    refs = {str(ref.relative_to(root / "refs")) for ref in (root / "refs").rglob("*") if ref.is_file()} if (root / "refs").is_dir() else set()
    commits = {snapshot.name for snapshot in (root / "snapshots").iterdir()} if (root / "snapshots").is_dir() else set()
    return refs, commits
