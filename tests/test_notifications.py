"""--notify: the run's summary POSTed when it ends, as JSON or a Slack message; a receiver that
fails, hangs or answers garbage never changes the run's outcome or exit code."""

from __future__ import annotations

import json
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import sqlalchemy as sa

from tenantmig.observe import notify
from tenantmig.server.config import Settings
from tests.helpers import CONFIG, run_cli
from tests.test_engine import make_tenants


class _Receiver(socketserver.StreamRequestHandler):
    """A webhook receiver speaking just enough HTTP; each request takes the next behaviour
    from ``script`` (the last one repeats): ok, error (500), close, garbage, slow."""

    bodies: ClassVar[list[dict[str, object]]] = []
    script: ClassVar[list[str]] = ["ok"]

    def handle(self) -> None:
        headers = {}
        self.rfile.readline()  # the request line
        while (line := self.rfile.readline().decode().strip()) != "":
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
        body = self.rfile.read(int(headers.get("content-length", "0")))
        behaviour = type(self).script.pop(0) if len(type(self).script) > 1 else self.script[0]
        type(self).bodies.append(json.loads(body))
        if behaviour == "close":
            return  # no answer: the connection closes
        if behaviour == "garbage":
            self.wfile.write(b"\x00\xffnot http at all\r\n\r\n")
            return
        if behaviour == "slow":
            # Never answers within the client's timeout, however loaded the machine: the client
            # gives up on its own clock, and this thread is not waited for.
            time.sleep(notify.TIMEOUT_S * 4)
            return
        status = b"500 Internal Server Error" if behaviour == "error" else b"200 OK"
        self.wfile.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False  # a "slow" handler may still sleep when the test is done


@contextmanager
def _receiver(*script: str) -> Iterator[str]:
    _Receiver.bodies, _Receiver.script = [], list(script)
    server = _Server(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://hook:t0ken@127.0.0.1:{server.server_address[1]}/hooks/abc?token=t0ken"
    finally:
        server.shutdown()
        server.server_close()


def test_a_run_posts_its_summary_as_json_and_as_a_slack_message(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    make_tenants(settings, ["good", "bad"], "001_initial_schema")
    with engine.begin() as conn:
        conn.exec_driver_sql('CREATE TABLE "bad".locations (id int)')  # 003 fails there
    with _receiver("ok") as url:
        done = run_cli("upgrade", "--all-tenants", "--notify", url, "--json", url=database_url)
    assert done.returncode == 3, done.stderr
    (sent,) = _Receiver.bodies
    printed = json.loads(done.stdout)
    assert sent == {**printed, "exit_code": 3}  # the --json document, and the exit code
    assert sent["finish_command"] and "--only-failed" in str(sent["finish_command"])
    with _receiver("ok") as url:
        done = run_cli(
            "upgrade", "--all-tenants", "--only-failed", "--notify", url,
            "--notify-format", "slack", url=database_url,
        )  # fmt: skip
    assert done.returncode == 3, done.stderr
    ((text,),) = [list(body.values()) for body in _Receiver.bodies]
    assert "ended with exit code 3" in str(text) and "1 failed" in str(text)
    assert "• bad failed:" in str(text) and "finish it with: `" in str(text)


def test_a_failing_receiver_changes_nothing(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    make_tenants(settings, ["one"], "001_initial_schema")
    for script, posts, warned in (
        (("error", "ok"), 2, False),  # retried, then delivered
        (("slow", "ok"), 2, False),  # timed out once, then delivered
        (("close",), 3, True),
        (("garbage",), 3, True),
        (("error",), 3, True),
    ):
        with _receiver(*script) as url:
            done = run_cli(
                "upgrade", "--tenant", "one", "--notify", url, url=database_url
            )  # fmt: skip
        assert done.returncode == 0, (script, done.stderr)  # the run's code, not the hook's
        assert len(_Receiver.bodies) == posts, script
        assert ("tenantmig: warning: notification to" in done.stderr) is warned, done.stderr
        assert "t0ken" not in done.stderr + done.stdout, done.stderr
        down = run_cli("downgrade", "--tenant", "one", "001_initial_schema", "--yes",
                       url=database_url)  # fmt: skip
        assert down.returncode == 0, down.stderr


def test_notify_in_alembic_ini_and_bad_urls(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, ["one"], "001_initial_schema")
    config = tmp_path / "alembic.ini"
    text = CONFIG.read_text().replace("%(here)s", str(CONFIG.parent))
    with _receiver("ok") as url:
        config.write_text(
            text.replace("[shared]\n", f"[shared]\nnotify = {url}\nnotify_format = slack\n", 1)
        )
        done = run_cli("--config", str(config), "upgrade", "--tenant", "one", url=database_url)
    assert done.returncode == 0, done.stderr
    assert list(_Receiver.bodies[0]) == ["text"]  # slack, from the file
    done = run_cli("upgrade", "--tenant", "one", "--notify", "hooks.example/x", url=database_url)
    assert done.returncode == 1 and "give an http(s) URL" in done.stderr, done.stderr
