"""A loopback Hugging Face hub: just enough of huggingface.co for `datasets` + `huggingface_hub`
to resolve a dataset config and for data_prep to range-read its parquet files.

    with FakeHub({"README.md": card, "sample/10BT/000_00000.parquet": data}) as hub:
        env["HF_ENDPOINT"] = hub.url          # the only thing that points the stage here
        hub.fail(500, times=3)                # then inject faults (see Fault)

It serves one dataset repo at one commit. The endpoints are the ones the installed clients
call (huggingface_hub 2.x, datasets 5.x; every request is logged in `hub.log`):

  HEAD/GET /datasets/{repo}/resolve/{rev}/{path}      file bytes; X-Repo-Commit, ETag,
           Content-Length, Accept-Ranges; `Range: bytes=a-b` -> 206 with exactly those bytes
  GET /api/datasets/{repo}[/revision/{rev}]           {"id", "sha", "siblings", ...}
  GET /api/datasets/{repo}/tree/{rev}[/{path}]        entries {type, oid, size, path};
           ?recursive=true; pages of PAGE entries linked with `Link: <...>; rel="next"`
  POST /api/datasets/{repo}/paths-info/{rev}          entries for the posted paths

An unknown repo is 401 + X-Error-Code: RepoNotFound (what the hub answers anonymous
clients), an unknown revision 404 + RevisionNotFound, a missing file 404 + EntryNotFound;
anything else is 404 and is logged, so a client that starts calling a new endpoint shows up
in `hub.log`. `rev` may be the commit sha or "main".
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

REPO_ID = "HuggingFaceFW/fineweb-edu"
SHA = "3c4f1a5e9b2d7c6f8e0a1b2c3d4e5f60718293a4"
PAGE = 3  # tree entries per page: small, so paging is exercised


@dataclass
class Fault:
    """What to do to the requests whose path contains `match` (and method, if given).

    kind: "status" (answer `status` with `headers`), "reset" (close the connection without an
    answer), "cut" (announce the full length, send half the body, close), "stall" (sleep
    `seconds` before answering normally), "corrupt" (serve `body` instead of the file's bytes).
    It skips the first `after` matching requests, then applies to the next `times` (None = all)
    while `until` (a time.monotonic() deadline, None = forever) has not passed.
    """
    kind: str
    match: str = ""
    method: str | None = None
    after: int = 0
    times: int | None = 1
    until: float | None = None
    status: int = 500
    headers: dict = field(default_factory=dict)
    seconds: float = 0.0
    body: bytes | None = None
    seen: int = 0
    applied: int = 0

    def take(self, method: str, path: str) -> bool:
        if self.match not in path or (self.method and self.method != method):
            return False
        self.seen += 1
        if self.seen <= self.after or (self.times is not None and self.applied >= self.times):
            return False
        if self.until is not None and time.monotonic() > self.until:
            return False
        self.applied += 1
        return True


class FakeHub:
    def __init__(self, files: dict[str, bytes], repo_id: str = REPO_ID, sha: str = SHA):
        self.files = dict(files)
        self.repo_id = repo_id
        self.sha = sha
        self.old_shas: set[str] = set()  # earlier commits still served (after a test "pushes")
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, int]] = []  # (method, path with query, status), once answered
        self.arrivals: list[tuple[str, str]] = []  # (method, path with query), as they come in
        self.closing = threading.Event()  # ends injected stalls when the hub shuts down
        self.bytes_sent = 0  # response body bytes, for benchmarks
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-hub", daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()

    # --- faults -----------------------------------------------------------------------------
    def inject(self, kind: str, match: str = "", *, after: int = 0, times: int | None = 1,
               for_seconds: float | None = None, **kw) -> Fault:
        fault = Fault(kind, match, after=after, times=times,
                      until=None if for_seconds is None else time.monotonic() + for_seconds, **kw)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def requests(self, contains: str = "") -> list[tuple[str, str, int]]:
        with self.lock:
            return [r for r in self.log if contains in r[1]]

    def arrived(self, contains: str = "") -> list[tuple[str, str]]:
        """Requests received so far, answered or not (a stalled one is not in `requests` yet)."""
        with self.lock:
            return [r for r in self.arrivals if contains in r[1]]

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.take(method, path):
                    return fault
        return None

    # --- the hub's answers --------------------------------------------------------------------
    def entries(self, directory: str, recursive: bool) -> list[dict] | None:
        """Tree entries under `directory` ("" = root), or None if no such directory."""
        prefix = directory.strip("/") + "/" if directory.strip("/") else ""
        if prefix and prefix.rstrip("/") in self.files:
            return None
        paths = sorted(p for p in self.files if p.startswith(prefix))
        if prefix and not paths:
            return None
        out, dirs = [], set()
        for path in paths:
            rest = path[len(prefix):].split("/")
            for depth in range(1, len(rest)):
                sub = prefix + "/".join(rest[:depth])
                if sub not in dirs and (recursive or depth == 1):
                    dirs.add(sub)
                    out.append({"type": "directory", "oid": _oid(sub.encode()), "size": 0, "path": sub})
            if recursive or len(rest) == 1:
                out.append(self.file_entry(path))
        return out

    def file_entry(self, path: str) -> dict:
        data = self.files[path]
        entry = {"type": "file", "oid": _oid(data), "size": len(data), "path": path}
        if path.endswith(".parquet"):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def info(self) -> dict:
        return {"id": self.repo_id, "author": self.repo_id.split("/")[0], "sha": self.sha, "private": False,
                "gated": False, "disabled": False, "lastModified": "2025-01-01T00:00:00.000Z",
                "tags": [], "siblings": [{"rfilename": p} for p in sorted(self.files)]}


def _oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _posted_paths(body: bytes) -> set[str]:
    text = body.decode("utf-8", "replace")
    try:
        return set(json.loads(text).get("paths", []))
    except (ValueError, AttributeError):
        return set(parse_qs(text).get("paths", []))


def _handler(hub: FakeHub):
    repo = re.escape(hub.repo_id)
    resolve_re = re.compile(rf"^/datasets/{repo}/resolve/([^/]+)/(.+)$")
    api_re = re.compile(rf"^/api/datasets/{repo}(?:/revision/([^/]+))?$")
    tree_re = re.compile(rf"^/api/datasets/{repo}/tree/([^/]+)(?:/(.*))?$")
    paths_info_re = re.compile(rf"^/api/datasets/{repo}/paths-info/([^/]+)$")
    any_repo_re = re.compile(r"^/(?:api/)?datasets/")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real hub; every answer has a length

        def log_message(self, *args) -> None:  # quiet: the log list is the record
            pass

        def do_HEAD(self) -> None:
            self.answer("HEAD")

        def do_GET(self) -> None:
            self.answer("GET")

        def do_POST(self) -> None:
            self.answer("POST")

        def answer(self, method: str) -> None:
            status = 0
            with hub.lock:
                hub.arrivals.append((method, self.path))
            try:
                fault = hub._fault_for(method, self.path)
                if fault is not None and fault.kind == "stall":
                    hub.closing.wait(fault.seconds)
                    fault = None
                if fault is not None and fault.kind == "reset":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    status = -1
                    return
                if fault is not None and fault.kind == "status":
                    status = fault.status
                    self.send(status, b'{"error": "injected"}', {"Content-Type": "application/json", **fault.headers},
                              method)
                    return
                status = self.route(method, fault)
            except (BrokenPipeError, ConnectionResetError):
                status = status or -2
            finally:
                with hub.lock:
                    hub.log.append((method, self.path, status))

        def route(self, method: str, fault: Fault | None) -> int:
            url = urlsplit(self.path)
            path, query = unquote(url.path), parse_qs(url.query)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
            if m := resolve_re.match(path):
                return self.resolve(method, m.group(1), m.group(2), fault)
            if (m := api_re.match(path)) and method == "GET":
                if not self.known_revision(m.group(1) or "main"):
                    return self.error(404, "RevisionNotFound", method)
                return self.json(hub.info(), method)
            if (m := tree_re.match(path)) and method == "GET":
                if not self.known_revision(m.group(1)):
                    return self.error(404, "RevisionNotFound", method)
                return self.tree(m.group(2) or "", query, method)
            if (m := paths_info_re.match(path)) and method == "POST":
                asked = _posted_paths(body)
                return self.json([hub.file_entry(p) for p in sorted(hub.files) if p in asked], method)
            if any_repo_re.match(path):
                return self.error(401, "RepoNotFound", method)
            return self.error(404, None, method)

        def known_revision(self, rev: str) -> bool:
            return unquote(rev) in (hub.sha, "main") or unquote(rev) in hub.old_shas

        def resolve(self, method: str, rev: str, name: str, fault: Fault | None) -> int:
            if not self.known_revision(rev):
                return self.error(404, "RevisionNotFound", method)
            if name not in hub.files:
                return self.error(404, "EntryNotFound", method)
            data = hub.files[name]
            if fault is not None and fault.kind == "corrupt" and fault.body is not None:
                data = fault.body
            headers = {"X-Repo-Commit": hub.sha, "ETag": f'"{_oid(hub.files[name])}"', "Accept-Ranges": "bytes",
                       "Content-Type": "application/octet-stream"}
            status = 200
            if m := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")):
                start = int(m.group(1))
                end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
                if start >= len(data):
                    headers["Content-Range"] = f"bytes */{len(data)}"
                    return self.send(416, b"", headers, method)
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                data, status = data[start:end + 1], 206
            if fault is not None and fault.kind == "cut" and method == "GET":
                headers["Content-Length"] = str(len(data))
                self.send_head(status, headers)
                self.wfile.write(data[:len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return -status
            return self.send(status, data, headers, method)

        def tree(self, directory: str, query: dict, method: str) -> int:
            entries = hub.entries(directory, query.get("recursive", ["false"])[0] == "true")
            if entries is None:
                return self.error(404, "EntryNotFound", method)
            cursor = int(query.get("cursor", ["0"])[0])
            page = entries[cursor:cursor + PAGE]
            headers = {}
            if cursor + PAGE < len(entries):
                base = f"{hub.url}{urlsplit(self.path).path}"
                params = "&".join(f"{k}={quote(v[0])}" for k, v in query.items() if k != "cursor")
                headers["Link"] = f'<{base}?{params}&cursor={cursor + PAGE}>; rel="next"'
            return self.json(page, method, headers)

        def json(self, obj, method: str, headers: dict | None = None) -> int:
            return self.send(200, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})},
                             method)

        def error(self, status: int, code: str | None, method: str) -> int:
            headers = {"Content-Type": "application/json"}
            if code:
                headers["X-Error-Code"] = code
            return self.send(status, json.dumps({"error": code or "not found"}).encode(), headers, method)

        def send_head(self, status: int, headers: dict) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()

        def send(self, status: int, body: bytes, headers: dict, method: str) -> int:
            self.send_head(status, {**headers, "Content-Length": str(len(body))})
            if method != "HEAD":
                self.wfile.write(body)
                with hub.lock:
                    hub.bytes_sent += len(body)
            return status

    return Handler
