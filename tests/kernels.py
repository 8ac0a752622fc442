"""Code run in a kernel that a real Jupyter Server started, through the server's websocket as
JupyterLab runs a cell: the kernel then runs with the server's environment, as a notebook user's
would. (A kernel started through the REST API alone never reports idle: nothing asked it anything.)
"""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from typing import Any

import requests

REPLY_SECONDS = 90.0


def start_kernel(session: requests.Session, url: str) -> str:
    """A python3 kernel through the API, as opening a notebook does; its id."""
    answer = session.post(
        f"{url}/api/kernels",
        json={"name": "python3"},
        headers={"X-XSRFToken": session.cookies.get("_xsrf") or ""},
        timeout=60,
    )
    answer.raise_for_status()
    return str(answer.json()["id"])


def stop_kernel(session: requests.Session, url: str, kernel: str) -> None:
    headers = {"X-XSRFToken": session.cookies.get("_xsrf") or ""}
    session.delete(f"{url}/api/kernels/{kernel}", headers=headers, timeout=30)


def run_in_kernel(session: requests.Session, url: str, cert: str, kernel: str, code: str) -> str:
    """Runs `code` in the server's kernel `kernel` (TLS pinned to `cert`); returns what it
    printed. AssertionError with the traceback when the code raised."""
    return asyncio.run(_run(session, url, cert, kernel, code))


async def _run(session: requests.Session, url: str, cert: str, kernel: str, code: str) -> str:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    context = ssl.create_default_context(cafile=cert)
    context.check_hostname = False  # pinned to the very certificate instead
    cookies = "; ".join(f"{cookie.name}={cookie.value}" for cookie in session.cookies)
    channels = url.replace("https://", "wss://", 1) + f"/api/kernels/{kernel}/channels"
    socket = await websocket_connect(
        HTTPRequest(channels, headers={"Cookie": cookies}, ssl_options=context)
    )
    request = _execute_request(code)
    await socket.write_message(json.dumps(request))
    printed = []
    try:
        while True:
            raw = await asyncio.wait_for(socket.read_message(), REPLY_SECONDS)
            if raw is None:
                raise AssertionError(f"the kernel's websocket closed: {socket.close_reason}")
            message = json.loads(raw)
            if message.get("parent_header", {}).get("msg_id") != request["header"]["msg_id"]:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                printed.append(content["text"])
            elif kind == "error":
                raise AssertionError("\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(printed)
    finally:
        socket.close()


def _execute_request(code: str) -> dict[str, Any]:
    """A Jupyter messaging protocol execute_request for the shell channel."""
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": "execute_request",
            "session": uuid.uuid4().hex,
            "username": "test",
            "version": "5.3",
            "date": "",
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
        "channel": "shell",
        "buffers": [],
    }
