"""One parquet file of a hub dataset, opened as a seekable file read by HTTP range requests,
each retried (data_prep/retry.py) until it returns exactly the bytes asked for.

    with HubFile("hf://datasets/HuggingFaceFW/fineweb-edu@<sha>/sample/10BT/000_00000.parquet",
                 policy, log) as f:
        pq.ParquetFile(f, pre_buffer=False)   # footer, then the column chunks asked for

Why not fsspec's `hf://` file: its reads go through the hub client's own retry loop (5 tries,
~23 s, then an error that pyarrow reports as a corrupt file, or a transport error that escapes
as a traceback), with no way to set the timeout or tell a 404 from a reset. Here pyarrow
asks for the footer and the text column's chunks; each request fetches at least
MIN_REQUEST bytes from there (so a small row group costs no extra round trip), is retried
under our policy, and its errors keep their HTTP status. The URL, auth
headers and HTTP client are huggingface_hub's (`hf_hub_url`, `build_hf_headers`,
`get_session`), so HF_ENDPOINT, HF_TOKEN and proxies work as for every other hub call.
"""

from __future__ import annotations

import io
import re
from typing import Callable
from urllib.parse import unquote

from data_prep import DataPrepError
from data_prep.retry import RetryPolicy, TruncatedRead, with_retries

# Each request asks for at least this much (what fsspec's hf:// read-ahead used): per-request
# latency, not bandwidth, bounds a hub stream, and a FineWeb-Edu row group's text chunk is
# only a few MB. Set to 0 to fetch exactly the text column (bench/hub_read.py compares both).
MIN_REQUEST = 8 << 20
_HF_URL_RE = re.compile(r"^hf://datasets/([^@]+)@([^/]+)/(.+)$")


def parse_hf_url(url: str) -> tuple[str, str, str]:
    """(repo id, revision, path in repo) of an hf://datasets/REPO@REV/PATH url."""
    match = _HF_URL_RE.match(url)
    if not match:
        raise DataPrepError(f"{url}: not a hub file url (expected hf://datasets/REPO@REVISION/PATH)")
    repo_id, revision, path = match.groups()
    return repo_id, unquote(revision), path


class HubFile(io.RawIOBase):
    """Read-only, seekable; size from a HEAD request, bytes from ranged GETs."""

    def __init__(self, url: str, policy: RetryPolicy, log: Callable[[str], None],
                 min_request: int | None = None):
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        super().__init__()
        self.name = url
        repo_id, revision, path = parse_hf_url(url)
        self.http_url = hf_hub_url(repo_id, path, repo_type="dataset", revision=revision)
        self.headers = build_hf_headers()
        self.policy, self.log = policy, log
        meta = with_retries(lambda: get_hf_file_metadata(self.http_url, timeout=policy.timeout),
                            f"{url}: HEAD", policy, log)
        if meta.size is None:
            raise DataPrepError(f"{url}: the hub did not say how large the file is (no Content-Length)")
        self.size = meta.size
        self.pos = 0
        self.min_request = MIN_REQUEST if min_request is None else min_request
        self.block, self.block_start = b"", 0  # the last response: small reads after it come from memory

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        if end <= self.pos:
            return b""
        if not (self.block_start <= self.pos and end <= self.block_start + len(self.block)):
            start, stop = self.pos, min(self.size, max(end, self.pos + self.min_request))
            self.block = with_retries(lambda: self._get(start, stop), f"{self.name}: bytes {start}-{stop - 1}",
                                      self.policy, self.log)
            self.block_start = start
        data = self.block[self.pos - self.block_start:end - self.block_start]
        self.pos = end
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def _get(self, start: int, end: int) -> bytes:
        from huggingface_hub.utils import get_session, hf_raise_for_status

        response = get_session().get(self.http_url, headers={**self.headers, "Range": f"bytes={start}-{end - 1}"},
                                     timeout=self.policy.timeout)
        hf_raise_for_status(response)
        data = response.content
        if response.status_code == 200 and len(data) == self.size:  # a server that ignores Range
            data = data[start:end]
        if len(data) != end - start:
            raise TruncatedRead(f"got {len(data)} of {end - start} bytes (HTTP {response.status_code})")
        return data
