"""`python -m tests.startup.boot.gcs_emulator PORT BUCKET`: gcp-storage-emulator on 127.0.0.1,
made to keep a simple media upload's body as bytes whatever its Content-Type, as real GCS does (the
emulator parses an `application/json` body and fails: the startup script uploads its status
document that way)."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler

from gcp_storage_emulator import server


def _keep_media_bodies() -> None:
    parse = server._read_data

    def read_data(request_handler: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> object:
        if query.get("uploadType") == ["media"]:
            raw = server._read_raw_data(request_handler)
            return server._decode_raw_data(raw, request_handler) or None
        return parse(request_handler, query)

    server._read_data = read_data


def main() -> None:
    port, bucket = int(sys.argv[1]), sys.argv[2]
    _keep_media_bodies()
    emulator = server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    emulator.start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
