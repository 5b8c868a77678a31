"""`make test-data`: download the real files the real-data tests use, sha256-checked.

    python tests/download_real_data.py [--out .test-data/real] [--timeout 60]

Writes OUT/hellaswag/hellaswag_val.jsonl (the 10,042-row validation set, through
data_prep.hellaswag: verified, atomic) and OUT/text/tinyshakespeare.txt -- the layout of
../shared/data, so tests/conftest.py finds OUT by default (or point GPT2_PIPELINE_TEST_DATA
at it). A file lands under its name only after its sha256 matched; a present, verified file
is kept. Needs internet; without it, one `error:` line says what to copy where.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_prep import DataPrepError  # noqa: E402 - after the path set-up
from data_prep.hellaswag import download, install as install_hellaswag  # noqa: E402
from pipeline.atomic import fsync_dir, sha256_file  # noqa: E402

# The classic char-rnn file (public domain); hash as in ../shared/data/README.md.
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
DEFAULT_OUT = REPO / ".test-data" / "real"


def fetch(url: str, sha256: str, target: Path, timeout: float) -> str:
    """Download url to target unless a verified copy is there; returns what was done."""
    if target.is_file() and sha256_file(target) == sha256:
        return f"{target}: already there and verified; nothing to do"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as dst:
            digest = download(url, dst, timeout, what=target.name, offline=(
                f"without internet, copy {target.name} (sha256 {sha256}) to {target} from a machine that has it"))
            dst.flush()
            os.fsync(dst.fileno())
        if digest != sha256:
            raise DataPrepError(f"{url}: sha256 {digest} is not the expected {sha256}; nothing written to {target}")
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return f"{target}: downloaded from {url} (sha256 verified)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tests/download_real_data.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to put the files (default %(default)s)")
    p.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default %(default)s)")
    args = p.parse_args(argv)
    try:
        try:
            install_hellaswag(args.out / "hellaswag", timeout=args.timeout)
        except DataPrepError as err:  # offline, it ends with the install command: point that at OUT
            message = str(err)
            raise DataPrepError(message + f" --out {args.out / 'hellaswag'}"
                                if message.endswith("--from PATH/hellaswag_val.jsonl") else message) from None
        print(fetch(TINYSHAKESPEARE_URL, TINYSHAKESPEARE_SHA256, args.out / "text" / "tinyshakespeare.txt",
                    args.timeout))
    except DataPrepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {getattr(err, 'filename', None) or args.out}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(f"real test data in {args.out}: the real-data tests now run "
          f"(tests/conftest.py looks there unless GPT2_PIPELINE_TEST_DATA or ../shared/data says otherwise)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
