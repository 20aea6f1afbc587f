"""A loopback stand-in for the part of the Hugging Face Hub API that huggingface_hub and datasets use.

Tests point ``HF_ENDPOINT`` at it, so the *real* client code runs: repo creation, preupload, ndjson
commits (files inline as base64: every upload is told "regular", so no LFS/Xet storage is needed),
revision info, tree listing, paths-info, refs, tags and file resolve (HEAD/GET with Range). Storage is
in memory: each commit is a full snapshot {path: bytes}. Fault knobs for the failure tests:
``truncate`` (paths whose GET stops half way), ``stall`` (paths whose GET sends half and then waits),
``hold`` (API calls, by handler name such as ``commit_post`` or ``tag``, that are held unanswered until
``release`` and then dropped: a client killed while that request was in flight), ``token`` (require this
bearer token).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

_TYPES = "models|datasets|spaces"
SIZE_CATEGORIES = {"n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B", "1B<n<10B",
                   "10B<n<100B", "100B<n<1T", "n>1T"}


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> str | None:
        if rev in self.branches:
            return self.branches[rev]
        if rev in self.tags:
            return self.tags[rev]
        return rev if rev in self.commits else None


@dataclass
class HubState:
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)
    truncate: set[str] = field(default_factory=set)
    stall: set[str] = field(default_factory=set)  # send half, then hold the connection until ``release``
    hold: set[str] = field(default_factory=set)  # handler names whose requests never complete (see module doc)
    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    token: str | None = None
    requests: list[str] = field(default_factory=list)
    auth_headers: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _empty_commit() -> tuple[str, dict[str, bytes]]:
    files = {".gitattributes": b"*.tar filter=lfs diff=lfs merge=lfs -text\n"}
    return hashlib.sha1(b"init" + str(time.time_ns()).encode()).hexdigest(), files


class _Handler(BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- plumbing -------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", ctype: str = "application/json", headers: dict | None = None,
              head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers=headers)

    def _error(self, status: int, code: str | None, message: str, head: bool = False) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers=headers, head=head)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _authorised(self) -> bool:
        auth = self.headers.get("Authorization")
        if auth:
            self.state.auth_headers.append(auth)
        return self.state.token is None or auth == f"Bearer {self.state.token}"

    def _repo(self, rtype: str, repo_id: str, head: bool = False) -> Repo | None:
        repo = self.state.repos.get((rtype, repo_id))
        if repo is not None and repo.private:  # a private repo is invisible without a (the) token
            auth = self.headers.get("Authorization")
            if not auth or (self.state.token is not None and auth != f"Bearer {self.state.token}"):
                repo = None
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository not found: {repo_id}", head=head)
            return None
        return repo

    def _commit(self, repo: Repo, rev: str, head: bool = False) -> str | None:
        oid = repo.resolve(unquote(rev))
        if oid is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(rev)}", head=head)
        return oid

    def _at(self, rtype: str, repo_id: str, rev: str, head: bool = False) -> tuple[Repo, str] | None:
        """(repo, commit) of ``rev``, or None after answering 404 for the repo or the revision."""
        repo = self._repo(rtype, repo_id, head=head)
        oid = None if repo is None else self._commit(repo, rev, head=head)
        return None if oid is None else (repo, oid)

    # -- routes ---------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        self.state.requests.append(f"{method} {path}")
        if method == "POST" and not self._authorised():
            self._error(401, None, "Invalid credentials in Authorization header")
            return
        routes = [
            ("POST", r"/api/repos/create", self._create),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("POST", rf"/api/(?P<t>{_TYPES})/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", rf"/api/(?P<t>{_TYPES})/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)", self._commit_post),
            ("POST", rf"/api/(?P<t>{_TYPES})/(?P<repo>[^/]+/[^/]+)/tag/(?P<rev>[^/]+)", self._tag),
            ("POST", rf"/api/(?P<t>{_TYPES})/(?P<repo>[^/]+/[^/]+)/paths-info/(?P<rev>[^/]+)", self._paths_info),
            ("GET", rf"/api/(?P<t>{_TYPES})/(?P<repo>[^/]+/[^/]+)/refs", self._refs),
            ("GET", rf"/api/(?P<t>{_TYPES})/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", self._tree),
            ("GET", rf"/api/(?P<t>{_TYPES})/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>[^/]+)", self._info),
            ("GET", rf"/api/(?P<t>{_TYPES})/(?P<repo>[^/]+/[^/]+)", self._info),
            ("GET", r"/(?P<t>datasets|spaces)/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
            ("HEAD", r"/(?P<t>datasets|spaces)/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
            ("GET", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
            ("HEAD", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
        ]
        for m, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if m == method and match:
                if handler.__name__.strip("_") in self.state.hold:
                    self.state.stalled.set()  # the request is in flight; the test kills its client now
                    self.state.release.wait(120)
                    self.close_connection = True  # never applied: its sender is gone
                    return
                args = match.groupdict()
                args["t"] = (args.get("t") or "models").rstrip("s")
                with self.state.lock:
                    handler(query=query, head=method == "HEAD", **args)
                return
        self._error(404, None, f"no route for {method} {path}")

    def _create(self, query, head, t) -> None:
        payload = json.loads(self._body())
        rtype = payload.get("type") or "model"
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        url = f"http://{self.headers['Host']}/{rtype}s/{repo_id}"
        if (rtype, repo_id) in self.state.repos:
            self._json({"error": "You already created this repo", "url": url}, status=409)
            return
        oid, files = _empty_commit()
        private = payload.get("private") or payload.get("visibility") == "private"
        self.state.repos[(rtype, repo_id)] = Repo(private=bool(private), commits={oid: files}, branches={"main": oid})
        self._json({"url": url, "name": repo_id})

    def _validate_yaml(self, query, head, t) -> None:
        """The checks the Hub makes on a dataset card's metadata that matter here (a subset of its schema)."""
        content = json.loads(self._body())["content"]
        errors = []
        match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        meta = yaml.safe_load(match[1]) if match else None
        if not isinstance(meta, dict):
            errors.append("README.md has no YAML metadata block")
        else:
            for key in ("size_categories", "task_categories", "tags"):
                if key in meta and not isinstance(meta[key], list):
                    errors.append(f'"{key}" must be a list')
            for cat in meta.get("size_categories", []):
                if cat not in SIZE_CATEGORIES:
                    errors.append(f'"size_categories" has an unknown value {cat!r}')
            for cfg in meta.get("configs", []):
                if "config_name" not in cfg or "data_files" not in cfg:
                    errors.append('"configs" entries need config_name and data_files')
        self._json({"errors": [{"message": e} for e in errors], "warnings": []}, status=400 if errors else 200)

    def _preupload(self, query, head, t, repo, rev) -> None:
        r = self._repo(t, repo)
        if r is None:
            return
        oid = r.resolve(unquote(rev))
        files = r.commits[oid] if oid else {}
        out = []
        for f in json.loads(self._body())["files"]:
            existing = files.get(f["path"])
            out.append({"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                        "oid": git_oid(existing) if existing is not None else None})
        self._json({"files": out})

    def _commit_post(self, query, head, t, repo, rev) -> None:
        r = self._repo(t, repo)
        if r is None:
            return
        branch = unquote(rev)
        parent = r.branches.get(branch)
        if parent is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            return
        files = dict(r.commits[parent])
        summary = ""
        for line in self._body().splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(prefix)}
            else:
                self._error(400, None, f"unsupported commit operation {key!r} (the test Hub stores files inline)")
                return
        digest = hashlib.sha1(parent.encode() + summary.encode())
        for p in sorted(files):
            digest.update(p.encode() + git_oid(files[p]).encode())
        oid = digest.hexdigest()
        r.commits[oid] = files
        r.branches[branch] = oid
        host = self.headers["Host"]
        self._json({"commitUrl": f"http://{host}/{t}s/{repo}/commit/{oid}", "commitOid": oid, "success": True})

    def _tag(self, query, head, t, repo, rev) -> None:
        found = self._at(t, repo, rev)
        if found is None:
            return
        r, oid = found
        tag = json.loads(self._body())["tag"]
        if tag in r.tags:
            self._error(409, None, f"Tag {tag} already exists")
            return
        r.tags[tag] = oid
        self._json({"name": tag})

    def _refs(self, query, head, t, repo) -> None:
        r = self._repo(t, repo)
        if r is None:
            return
        def ref(kind, name, oid):
            return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": oid}
        self._json({"branches": [ref("heads", n, o) for n, o in r.branches.items()],
                    "tags": [ref("tags", n, o) for n, o in r.tags.items()], "converts": []})

    def _entries(self, files: dict[str, bytes], sub: str, recursive: bool) -> list[dict]:
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        out, folders = [], set()
        for p in sorted(files):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):]
            parts = rest.split("/")
            for i in range(1, len(parts) if recursive else min(2, len(parts))):
                folders.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                out.append({"type": "file", "oid": git_oid(files[p]), "size": len(files[p]), "path": p})
        out += [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f} for f in sorted(folders)]
        return out

    def _tree(self, query, head, t, repo, rev, sub=None) -> None:
        found = self._at(t, repo, rev)
        if found is None:
            return
        r, oid = found
        sub = unquote(sub or "")
        files = r.commits[oid]
        if sub and not any(p == sub or p.startswith(sub.rstrip("/") + "/") for p in files):
            self._error(404, "EntryNotFound", f"{sub} does not exist on {unquote(rev)}")
            return
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        self._json(self._entries(files, sub, recursive))

    def _paths_info(self, query, head, t, repo, rev) -> None:
        found = self._at(t, repo, rev)
        if found is None:
            return
        r, oid = found
        body = self._body().decode()
        form = parse_qs(body) if "json" not in (self.headers.get("Content-Type") or "") else json.loads(body)
        files = r.commits[oid]
        out = []
        for p in form.get("paths", []):
            p = p.strip("/")
            if p in files:
                out.append({"type": "file", "oid": git_oid(files[p]), "size": len(files[p]), "path": p})
            elif any(f.startswith(p + "/") for f in files):
                out.append({"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0, "path": p})
        self._json(out)

    def _info(self, query, head, t, repo, rev="main") -> None:
        found = self._at(t, repo, rev)
        if found is None:
            return
        r, oid = found
        self._json({"id": repo, "sha": oid, "private": r.private, "lastModified": "2026-11-22T00:00:00.000Z",
                    "siblings": [{"rfilename": p} for p in sorted(r.commits[oid])], "tags": [], "disabled": False,
                    "gated": False})

    def _resolve(self, query, head, t, repo, rev, file) -> None:
        found = self._at(t, repo, rev, head=head)
        if found is None:
            return
        r, oid = found
        file = unquote(file)
        data = r.commits[oid].get(file)
        if data is None:
            self._error(404, "EntryNotFound", f"{file} does not exist on {unquote(rev)}", head=head)
            return
        headers = {"X-Repo-Commit": oid, "ETag": f'"{git_oid(data)}"', "Accept-Ranges": "bytes"}
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        status, body = 200, data
        if rng:
            start = int(rng[1])
            end = int(rng[2]) if rng[2] else len(data) - 1
            body = data[start:end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(data)}"
        if not head and file in self.state.stall | self.state.truncate:
            # Promise the whole file, send half; then hang up (truncate: a download cut off half way) or hold
            # the connection until released (stall: a download in progress, for a test to kill its client).
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if file in self.state.stall:
                self.state.stalled.set()
                self.state.release.wait(120)
            self.close_connection = True
            return
        self._send(status, body, ctype="application/octet-stream", headers=headers, head=head)


class LoopbackHub:
    """Start/stop the server on 127.0.0.1 on a free port; ``endpoint`` is its base URL."""

    def __init__(self) -> None:
        self.state = HubState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
