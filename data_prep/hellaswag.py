"""Install the HellaSwag validation set (10,042 rows), sha256-verified, for offline eval.

    python -m data_prep.hellaswag                      # download from the canonical URL
    python -m data_prep.hellaswag --from PATH          # install a copy you already have
    python -m data_prep.hellaswag --out DIR            # default data/hellaswag/

The file lands at OUT/hellaswag_val.jsonl only after its sha256 matched (written to a temp
name, fsynced, renamed), so eval never sees a partial or wrong file. A present, verified
file makes the command a no-op.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from data_prep import DataPrepError
from pipeline.atomic import fsync_dir, sha256_file
from pipeline.cli import OneLineParser
from pipeline.hellaswag import DEFAULT_HELLASWAG, HELLASWAG_VAL_SHA256 as SHA256

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
FILENAME = DEFAULT_HELLASWAG.name
DEFAULT_OUT = str(DEFAULT_HELLASWAG.parent)


def install(out: Path, source: Path | None = None, url: str = URL, timeout: float = 60.0, log=print) -> Path:
    """Put a verified hellaswag_val.jsonl in `out` (from `source` if given, else `url`)."""
    target = out / FILENAME
    if target.is_file() and sha256_file(target) == SHA256:
        log(f"{target}: already installed and verified (sha256 {SHA256[:12]}...); nothing to do")
        return target
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{FILENAME}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as dst:
            digest = _copy_local(source, dst) if source else _download(url, dst, timeout)
            dst.flush()
            os.fsync(dst.fileno())
        where = source or url
        if digest != SHA256:
            raise DataPrepError(f"{where}: sha256 {digest} is not the HellaSwag val set's ({SHA256}); "
                                "the file is corrupt, truncated or a different file")
        os.replace(tmp, target)
        fsync_dir(out)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"{target}: installed from {source or url} (sha256 verified)")
    return target


def _copy_local(source: Path, dst) -> str:
    if not source.is_file():
        raise DataPrepError(f"{source}: no such file (expected a copy of {FILENAME})")
    digest = hashlib.sha256()
    with open(source, "rb") as src:
        while block := src.read(1 << 20):
            digest.update(block)
            dst.write(block)
    return digest.hexdigest()


def _download(url: str, dst, timeout: float) -> str:
    return download(url, dst, timeout, what="HellaSwag", offline=(
        f"without internet access, copy {FILENAME} (sha256 {SHA256}) from a machine that has it and run: "
        f"python -m data_prep.hellaswag --from PATH/{FILENAME}"))


def download(url: str, dst, timeout: float, what: str, offline: str) -> str:
    """Stream url into the open file dst; returns the sha256 of what was written. A network
    failure is one DataPrepError: what could not be downloaded, why, and `offline` advice."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            while block := response.read(1 << 20):
                digest.update(block)
                dst.write(block)
    except (urllib.error.URLError, OSError) as err:  # offline, DNS, timeout, HTTP errors
        reason = getattr(err, "reason", None) or err
        raise DataPrepError(f"cannot download {what} from {url} ({reason}); {offline}") from None
    return digest.hexdigest()


def main(argv=None) -> int:
    p = OneLineParser(prog="python -m data_prep.hellaswag", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="install directory (default %(default)s)")
    p.add_argument("--from", dest="source", type=Path, default=None,
                   help=f"install this local copy of {FILENAME} instead of downloading")
    p.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default %(default)s)")
    args = p.parse_args(argv)
    try:
        install(args.out, args.source, timeout=args.timeout)
    except DataPrepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {getattr(err, 'filename', None) or args.out}: {err.strerror or err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
