"""A Hugging Face hub dataset config as an ordered list of parquet files at a pinned commit.

`datasets` resolves the config (e.g. HuggingFaceFW/fineweb-edu, sample-10BT, split train) to
its data files exactly as `load_dataset` would, in the same order, so the document order is
build-nanogpt's. We then stream those parquet files ourselves (fsspec `hf://` URLs, ranged
reads) instead of iterating `load_dataset(streaming=True)`, for two reasons:
  - a resumed run must restart at (file, row): with our own reader it skips whole row groups
    using the parquet footer, where an IterableDataset can only re-stream and drop documents;
  - the manifest records the commit and the file list, so a resume (even days later, after the
    dataset was updated on the hub) reads exactly the same documents.
"""

from __future__ import annotations

import re

from data_prep import DataPrepError
from data_prep.sources import SourceFile

DEFAULT_DATASET = "HuggingFaceFW/fineweb-edu"
DEFAULT_NAME = "sample-10BT"
DEFAULT_SPLIT = "train"
_COMMIT_RE = re.compile(r"@([0-9a-f]{40})/")


def resolve_hub_files(dataset: str, name: str | None, split: str,
                      revision: str | None) -> tuple[str, list[SourceFile]]:
    """(commit sha, parquet files in load_dataset order) for one config split of a hub dataset."""
    import datasets  # a dependency; imported here because it takes seconds and --files does not need it
    try:
        builder = datasets.load_dataset_builder(dataset, name=name, revision=revision)
    except Exception as err:  # network, auth, unknown dataset/config: all end the same way for the user
        sample = re.fullmatch(r"sample-(\w+)", name or "")  # FineWeb's sample-10BT lives in sample/10BT/
        include = f" --include 'sample/{sample.group(1)}/*'" if sample else ""
        raise DataPrepError(
            f"cannot resolve hub dataset {dataset!r} (config {name!r}): {type(err).__name__}: {err}. "
            "Without internet access, download its parquet files on a machine that has it "
            f"(`huggingface-cli download --repo-type dataset {dataset}{include}`) "
            "and pass them in order with --files 'DIR/*.parquet'") from None
    data_files = builder.config.data_files or {}
    if split not in data_files:
        raise DataPrepError(f"hub dataset {dataset!r} (config {name!r}) has no split {split!r} "
                            f"(splits: {', '.join(data_files) or 'none'})")
    urls = [str(url) for url in data_files[split]]
    if not urls:
        raise DataPrepError(f"hub dataset {dataset!r} (config {name!r}, split {split!r}) lists no data files")
    not_parquet = [u for u in urls if not u.lower().endswith(".parquet")]
    if not_parquet:
        raise DataPrepError(f"hub dataset {dataset!r}: only parquet data files are supported, "
                            f"found {not_parquet[0]}")
    match = _COMMIT_RE.search(urls[0])
    commit = match.group(1) if match else (revision or "unknown")
    return commit, [SourceFile(url, "parquet") for url in urls]
