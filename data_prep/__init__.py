"""Data preparation: FineWeb (hub or local files) -> uint16 token shards, and the HellaSwag eval set.

    python -m data_prep.fineweb     tokenize documents into build-nanogpt compatible shards
    python -m data_prep.verify DIR  re-check shards against their manifest
    python -m data_prep.hellaswag   download (or install) the verified HellaSwag val set
"""


class DataPrepError(RuntimeError):
    """A problem the user can fix (bad input file, foreign output dir, full disk...).

    The message names the file (and row/line/byte where known) and what to do; the CLIs
    print it as one `error: ...` line and exit 2.
    """
