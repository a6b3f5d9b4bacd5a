"""Stand-ins at the HTTP boundary for what cannot run here: a Kubernetes API server holding InferenceServices, and
Prometheus's query API. Real HTTP on loopback; the platform talks to them through its real clients."""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

ISVC_PATH = re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices(?:/([^/]+))?$")
LEASE_PATH = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/]+))?$")


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class _Server:
    def __init__(self, handler_factory):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_factory(self))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeKubernetes(_Server):
    """Create, get and merge-patch InferenceServices, every one reported Ready at once; create, get and replace Leases
    with the API server's optimistic concurrency (a replace with a stale resourceVersion is a 409 Conflict)."""

    def __init__(self):
        self.objects: dict[tuple[str, str], dict] = {}
        self.leases: dict[tuple[str, str], dict] = {}
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        super().__init__(lambda server: type("Handler", (_KubeHandler,), {"server_state": server}))

    def next_version(self) -> int:
        self._version = getattr(self, "_version", 0) + 1
        return self._version

    def kubeconfig(self, path) -> str:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "models"}}],
        }))
        return str(path)


class _KubeHandler(BaseHTTPRequestHandler):
    server_state: FakeKubernetes

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        state = self.server_state
        match = ISVC_PATH.match(urlparse(self.path).path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        with state.lock:
            state.requests.append({"method": method, "path": self.path, "content_type": self.headers.get("Content-Type"),
                                   "body": body})
            lease = LEASE_PATH.match(urlparse(self.path).path)
            if lease:
                return self._lease(method, *lease.groups(), body)
            if not match:
                return self._send(404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404})
            namespace, name = match.groups()
            if method == "POST":
                name = body["metadata"]["name"]
                if (namespace, name) in state.objects:
                    return self._send(409, {"kind": "Status", "reason": "AlreadyExists", "code": 409})
                state.objects[(namespace, name)] = _ready(body, namespace, generation=1)
                return self._send(201, state.objects[(namespace, name)])
            current = state.objects.get((namespace, name))
            if current is None:
                return self._send(404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404,
                                        "message": f'inferenceservices.serving.kserve.io "{name}" not found'})
            if method == "GET":
                return self._send(200, current)
            if method == "PATCH":
                merged = merge_patch({k: v for k, v in current.items() if k != "status"}, body)
                state.objects[(namespace, name)] = _ready(merged, namespace, current["metadata"]["generation"] + 1)
                return self._send(200, state.objects[(namespace, name)])
        self._send(405, {"code": 405})

    def _lease(self, method: str, namespace: str, name: str | None, body: dict | None) -> None:
        leases = self.server_state.leases
        key = (namespace, name or (body or {}).get("metadata", {}).get("name"))
        current = leases.get(key)
        if method == "GET":
            return self._send(200, current) if current else self._send(404, {"kind": "Status", "reason": "NotFound", "code": 404})
        if method == "POST":
            if current:
                return self._send(409, {"kind": "Status", "reason": "AlreadyExists", "code": 409})
        elif method == "PUT":
            if current is None:
                return self._send(404, {"kind": "Status", "reason": "NotFound", "code": 404})
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                return self._send(409, {"kind": "Status", "reason": "Conflict", "code": 409})
        else:
            return self._send(405, {"code": 405})
        stored = copy.deepcopy(body)
        stored.setdefault("apiVersion", "coordination.k8s.io/v1")
        stored.setdefault("kind", "Lease")
        stored["metadata"].update(namespace=namespace, resourceVersion=str(self.server_state.next_version()))
        leases[key] = stored
        return self._send(201 if method == "POST" else 200, stored)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_PUT(self):
        self._handle("PUT")


def _ready(obj: dict, namespace: str, generation: int) -> dict:
    obj = copy.deepcopy(obj)
    obj["metadata"]["generation"] = generation
    name = obj["metadata"]["name"]
    obj["status"] = {"observedGeneration": generation, "url": f"http://{name}.{namespace}.example.com",
                     "conditions": [{"type": "Ready", "status": "True"}]}
    return obj


class FakePrometheus(_Server):
    """`/api/v1/query` answering with whatever vector `respond(query)` returns."""

    def __init__(self, respond: Callable[[str], list[dict]]):
        self.respond, self.queries = respond, []
        super().__init__(lambda server: type("Handler", (_PromHandler,), {"server_state": server}))


class _PromHandler(BaseHTTPRequestHandler):
    server_state: FakePrometheus

    def log_message(self, *args):
        pass

    def do_GET(self):
        query = parse_qs(urlparse(self.path).query)["query"][0]
        self.server_state.queries.append(query)
        data = json.dumps({"status": "success", "data": {"resultType": "vector",
                                                         "result": self.server_state.respond(query)}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
