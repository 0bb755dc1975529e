"""A local HTTP stub of the Roboflow API endpoints the SDK calls (shared/DESIGN.md
section 5).

It records every request, answers like the real API, and can be told to fail chosen
calls (HTTP 429/5xx, or a dropped connection) a number of times, so tests can drive the
real ``roboflow`` SDK through retries.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes


@dataclass
class RoboflowStub:
    workspace: str = "acme"
    project: str = "cans"
    requests: list[Recorded] = field(default_factory=list)
    images: dict[str, dict] = field(default_factory=dict)  # roboflow id -> fields
    annotations: dict[str, list[dict]] = field(
        default_factory=lambda: defaultdict(list)
    )
    failures: dict[str, list[object]] = field(default_factory=lambda: defaultdict(list))
    hosted: dict[str, tuple[str, bytes]] = field(
        default_factory=dict
    )  # id -> (name, bytes)
    versions: dict[str, dict[str, bytes]] = field(
        default_factory=dict
    )  # version number -> export format -> zip bytes
    generating: set[str] = field(default_factory=set)  # versions still generating

    def host_image(self, image_id: str, name: str, data: bytes) -> None:
        """Make an image part of the project, listed by search and downloadable."""
        self.hosted[image_id] = (name, data)

    def add_version(
        self, number: int, export_zip: bytes, *, model_format: str = "coco"
    ) -> None:
        """Make version ``number`` of the project downloadable as ``export_zip`` (the
        zip Roboflow builds for ``model_format``)."""
        self.versions.setdefault(str(number), {})[model_format] = export_zip

    def fail_next(self, route: str, *answers: object) -> None:
        """Answer the next calls of ``route`` ('upload', 'annotate', 'search', 'file',
        'export': a version's zip) with these: an HTTP status (int) or 'drop' (close
        without answering)."""
        self.failures[route].extend(answers)

    def start(self) -> str:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):  # noqa: N802
                stub._handle(self, "POST")

            def do_GET(self):  # noqa: N802
                stub._handle(self, "GET")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        host, port = self._server.server_address
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        self.requests.append(Recorded(method, url.path, parse_qs(url.query), body))
        parts = url.path.strip("/").split("/")
        route = {"upload": "upload", "search": "search"}.get(parts[-1], "other")
        if "annotate" in parts:
            route = "annotate"
        elif parts[0] == "files":
            route = "file"
        elif parts[0] == "exports":
            route = "export"
        if self.failures[route]:
            answer = self.failures[route].pop(0)
            if answer == "drop":
                handler.close_connection = True
                handler.connection.shutdown(2)
                return
            return self._reply(
                handler, int(answer), {"error": {"message": "try later"}}
            )
        if method == "POST" and url.path == "/":
            return self._reply(handler, 200, {"workspace": self.workspace})
        if method == "GET" and parts == [self.workspace, self.project]:
            return self._reply(
                handler,
                200,
                {"project": self._project_info(), "versions": self._version_list()},
            )
        if method == "GET" and parts[:2] == [self.workspace, self.project]:
            return self._version_route(handler, parts[2:])
        if method == "GET" and route == "export" and len(parts) == 3:
            return self._send_bytes(handler, self.versions[parts[1]][parts[2]])
        if method == "POST" and parts == [self.workspace, self.project, "search"]:
            return self._reply(
                handler, 200, {"results": self._search(json.loads(body))}
            )
        if method == "GET" and parts[0] == "files" and parts[1] in self.hosted:
            return self._send_bytes(handler, self.hosted[parts[1]][1])
        if route == "upload":
            return self._reply(handler, 200, self._upload(handler, body))
        if route == "annotate":
            image_id = parts[parts.index("annotate") + 1]
            self.annotations[image_id].append(json.loads(body))
            return self._reply(handler, 200, {"success": True})
        return self._reply(handler, 404, {"error": f"no route {url.path}"})

    def _version_list(self) -> list[dict]:
        return [self._version_info(number) for number in sorted(self.versions)]

    def _version_info(self, number: str) -> dict:
        return {
            "id": f"{self.workspace}/{self.project}/{number}",
            "name": self.project,
            "augmentation": {},
            "preprocessing": {},
            "created": 1700000000,
            "images": 0 if number in self.generating else 3,
            "generating": number in self.generating,
            "splits": {"train": 3},
            "exports": sorted(self.versions[number]),
        }

    def _version_route(self, handler: BaseHTTPRequestHandler, rest: list[str]):
        """GET /ws/project/N (the version) and /ws/project/N/FORMAT (its export)."""
        if not rest or rest[0] not in self.versions:
            return self._reply(handler, 404, {"error": "no such version"})
        number = rest[0]
        if len(rest) == 1:
            return self._reply(handler, 200, {"version": self._version_info(number)})
        if len(rest) == 2 and rest[1] in self.versions[number]:
            link = f"{self.url}/exports/{number}/{rest[1]}"
            return self._reply(handler, 200, {"export": {"link": link}})
        return self._reply(handler, 404, {"error": f"no export {rest[1:]}"})

    @staticmethod
    def _send_bytes(handler: BaseHTTPRequestHandler, data: bytes) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _search(self, query: dict) -> list[dict]:
        hits = [
            {"id": image_id, "name": name, "url": f"{self.url}/files/{image_id}"}
            for image_id, (name, _) in sorted(self.hosted.items())
        ]
        offset, limit = query.get("offset", 0), query.get("limit", 100)
        return hits[offset : offset + limit]

    def _upload(self, handler: BaseHTTPRequestHandler, body: bytes) -> dict:
        message = BytesParser(policy=email_policy).parsebytes(
            b"Content-Type: "
            + handler.headers["Content-Type"].encode()
            + b"\r\n\r\n"
            + body
        )
        fields = {
            part.get_param("name", header="content-disposition"): part.get_payload(
                decode=True
            )
            for part in message.iter_parts()
        }
        for roboflow_id, known in self.images.items():
            if known["file"] == fields["file"]:
                return {"duplicate": True, "id": roboflow_id}
        roboflow_id = f"img{len(self.images) + 1}"
        self.images[roboflow_id] = fields
        return {"success": True, "id": roboflow_id}

    def _project_info(self) -> dict:
        return {
            "id": f"{self.workspace}/{self.project}",
            "name": self.project,
            "type": "object-detection",
            "annotation": "cans",
            "classes": {},
            "colors": {},
            "created": 1700000000,
            "updated": 1700000000,
            "images": len(self.images),
            "public": False,
            "splits": {},
            "unannotated": 0,
        }

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
