"""A Hugging Face hub dataset config as an ordered list of parquet files at a pinned commit.

`datasets` resolves the config (e.g. HuggingFaceFW/fineweb-edu, sample-10BT, split train) to
its data files exactly as `load_dataset` would, in the same order, so the document order is
build-nanogpt's. We then stream those parquet files ourselves (data_prep/hub_file.py: ranged
reads of the text column) instead of iterating `load_dataset(streaming=True)`, for two reasons:
  - a resumed run must restart at (file, row): with our own reader it skips whole row groups
    using the parquet footer, where an IterableDataset can only re-stream and drop documents;
  - the manifest records the commit and the file list, so a resume (even days later, after the
    dataset was updated on the hub) reads exactly the same documents.

The requested revision (a branch, tag or None = main) is first resolved to a commit sha with
one API call, which also tells a missing repo / revision / gated access apart cleanly; the
config is then resolved *at that sha*, so the file list and the commit always agree (and
`datasets` skips its datasets-server query). Both calls retry transient failures.
"""

from __future__ import annotations

import re
from typing import Callable

from data_prep import DataPrepError
from data_prep.retry import RetriesExhausted, RetryPolicy, describe, is_transient, status_of, with_retries
from data_prep.sources import SourceFile

DEFAULT_DATASET = "HuggingFaceFW/fineweb-edu"
DEFAULT_NAME = "sample-10BT"
DEFAULT_SPLIT = "train"
_COMMIT_RE = re.compile(r"@([0-9a-f]{40})/")


def offline_advice(dataset: str, name: str | None) -> str:
    sample = re.fullmatch(r"sample-(\w+)", name or "")  # FineWeb's sample-10BT lives in sample/10BT/
    include = f" --include 'sample/{sample.group(1)}/*'" if sample else ""
    return ("Without internet access, download its parquet files on a machine that has it "
            f"(`hf download {dataset} --repo-type dataset{include} --local-dir DIR`) "
            f"and pass them in order with --files 'DIR/{'sample/' + sample.group(1) + '/' if sample else ''}*.parquet'")


def resolve_commit(dataset: str, revision: str | None, policy: RetryPolicy, log: Callable[[str], None]) -> str:
    """The commit sha `revision` (None = main) points to now."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    what = f"hub dataset {dataset!r}"
    try:
        info = with_retries(lambda: HfApi().dataset_info(dataset, revision=revision, timeout=policy.timeout),
                            f"{what}: revision {revision or 'main'}", policy, log)
    except GatedRepoError:
        raise DataPrepError(f"{what} is gated: accept its terms on the hub page and log in "
                            "(`hf auth login`, or set HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise DataPrepError(f"{what} does not exist, or is private and this machine is not logged in "
                            "(`hf auth login`, or set HF_TOKEN); check --dataset") from None
    except RevisionNotFoundError:
        raise DataPrepError(f"{what} has no revision {revision!r} (a branch, tag or commit sha); "
                            "check --revision") from None
    except RetriesExhausted as err:
        raise DataPrepError(f"cannot resolve {err}. {offline_advice(dataset, None)}") from None
    except Exception as err:  # noqa: BLE001 - offline mode, a permanent failure (4xx), a client error
        raise DataPrepError(f"cannot resolve {what}: {describe(err)}. {offline_advice(dataset, None)}") from None
    if not info.sha:
        raise DataPrepError(f"{what}: the hub did not return a commit for revision {revision or 'main'!r}")
    return info.sha


def resolve_hub_files(dataset: str, name: str | None, split: str, revision: str | None,
                      policy: RetryPolicy | None = None,
                      log: Callable[[str], None] = print) -> tuple[str, list[SourceFile]]:
    """(commit sha, parquet files in load_dataset order) for one config split of a hub dataset."""
    policy = policy or RetryPolicy()
    import datasets  # a dependency; imported here because it takes seconds and --files does not need it
    commit = resolve_commit(dataset, revision, policy, log)
    what = f"hub dataset {dataset!r} (config {name!r})"

    def load():
        try:
            return datasets.load_dataset_builder(dataset, name=name, revision=commit)
        except KeyError as err:
            # A failed hub request makes `datasets` fall back to a cached copy of the dataset's
            # module, which can be older than the card and then fails on a missing key: the
            # real cause is the hub failure (transient or not), not the key.
            raise _StaleCache(f"{err!r} from a stale `datasets` cache entry after a failed hub request "
                              f"(delete {datasets.config.HF_MODULES_CACHE} and "
                              f"{datasets.config.HF_DATASETS_CACHE} to rule it out)") from err

    try:
        builder = with_retries(load, f"cannot resolve {what}", policy, log, transient=_transient_or_stale)
    except RetriesExhausted as err:
        stale = f" ({err.last})" if isinstance(err.last, _StaleCache) else ""
        raise DataPrepError(f"{err}{stale}. {offline_advice(dataset, name)}") from None
    except Exception as err:  # noqa: BLE001 - unknown config, no parquet, auth: one line, at once
        raise DataPrepError(f"cannot resolve {what}: {describe(err)}") from None
    data_files = builder.config.data_files or {}
    if split not in data_files:
        raise DataPrepError(f"{what} has no split {split!r} (splits: {', '.join(data_files) or 'none'})")
    urls = [str(url) for url in data_files[split]]
    if not urls:
        raise DataPrepError(f"{what}, split {split!r}, lists no data files")
    not_parquet = [u for u in urls if not u.lower().endswith(".parquet")]
    if not_parquet:
        raise DataPrepError(f"{what}: only parquet data files are supported, found {not_parquet[0]}")
    match = _COMMIT_RE.search(urls[0])
    if match and match.group(1) != commit:
        raise DataPrepError(f"{what}: files resolved at commit {match.group(1)}, expected {commit}")
    return commit, [SourceFile(url, "parquet") for url in urls]


class _StaleCache(Exception):
    pass


def _transient_or_stale(err: BaseException) -> bool:
    # The stale-cache KeyError is retried like the failure that caused it (it cannot be told
    # apart from inside `datasets`); a 4xx anywhere in the chain is still permanent.
    if isinstance(err, _StaleCache):
        status = status_of(err)
        return status is None or is_transient(err)
    return is_transient(err)


def check_pinned_revision(out, manifest: dict, revision: str | None, allow_change: bool, policy: RetryPolicy,
                          log: Callable[[str], None]) -> None:
    """Before resuming a hub run: the revision asked for must still be the commit the manifest
    pinned, else the documents after the last shard would come from other data. With
    allow_change the manifest is re-pointed at the new commit (and remembers the old one)."""
    from pipeline.shards import write_manifest

    source = manifest["source"]
    resolved = source.get("resolved") or {}
    pinned = resolved.get("commit")
    if revision is not None and revision == pinned:
        return  # the pinned sha itself: nothing to ask the hub
    now = resolve_commit(source["dataset"], revision, policy, log)
    if now == pinned:
        return
    asked = revision or "main"
    if not allow_change:
        raise DataPrepError(
            f"{out}: its {len(manifest['shards'])} shards were read from {source['dataset']} at commit {pinned}, "
            f"but revision {asked!r} is now commit {now}; re-run with --revision {pinned} to finish from the "
            "pinned data, --allow-revision-change to continue from the new commit, or --overwrite to start over")
    commit, files = resolve_hub_files(source["dataset"], source["name"], source["split"], now, policy, log)
    history = resolved.get("previous", []) + [{"commit": pinned, "shards": len(manifest["shards"])}]
    source["resolved"] = {"commit": commit, "files": [f.path for f in files], "previous": history}
    source["revision"] = revision
    write_manifest(out, manifest)
    log(f"warning: {out}: continuing from commit {commit} (revision {asked!r}); shards 0-"
        f"{len(manifest['shards']) - 1} came from {pinned} (recorded in the manifest)")
