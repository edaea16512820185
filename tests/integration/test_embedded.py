"""`moderation up` on the embedded default: SQLite + filesystem broker, real worker, beat and Flower."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.images import picture
from tests.support.paths import REPO
from tests.support.processes import embedded_env, free_port, stop_session
from tests.support.waiting import wait_until


def test_make_up_moderates_on_the_embedded_default(tmp_path: Path) -> None:
    env = embedded_env(tmp_path / "var", REPO)
    api_port, flower_port = free_port(), free_port()
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "moderation.cli", "up", "--port", str(api_port), "--flower-port", str(flower_port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{api_port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 90, what="API ready")
        text = (tmp_path / "up.log").read_text()
        key = re.search(r"(mk_[0-9a-f]{12}_\S+)", text)
        assert key, text
        assert "embedded" in text and f"http://127.0.0.1:{flower_port}" in text
        headers = {"Authorization": f"Bearer {key.group(1)}"}
        r = httpx.post(f"{base}/v1/submissions", headers=headers, files={"file": ("a.png", picture(5, fmt="PNG"))})
        assert r.status_code == 202, r.text
        sid = r.json()["id"]

        def decided() -> dict | None:
            body = httpx.get(f"{base}/v1/submissions/{sid}", headers=headers, timeout=5).json()
            return body if body["status"] in ("decided", "in_review") else None

        final = wait_until(decided, 90, what="decided on the embedded broker")
        assert final["decision"]["action"] == "allow" and final["decision"]["policy"]["id"] == "default"
        verify = httpx.get(f"{base}/v1/audit/verify", headers=headers).json()
        assert verify["ok"] is True and verify["checked"] >= 4  # key_created, received, analyzed, decided
        assert (tmp_path / "var" / "moderation.db").exists()
        assert any((tmp_path / "var" / "blobs").rglob("*"))

        # The CLI against the running pipeline: submit --wait and scan.
        cli_env = {**env, "MODERATION_URL": base}
        one = tmp_path / "one.jpg"
        one.write_bytes(picture(6))
        sub = subprocess.run(
            [sys.executable, "-m", "moderation.cli", "submit", str(one), "--wait", "--key", key.group(1)],
            capture_output=True,
            text=True,
            env=cli_env,
            cwd=REPO,
            timeout=120,
        )
        assert sub.returncode == 0, sub.stdout + sub.stderr
        assert json.loads(sub.stdout)["status"] == "decided"
        folder = tmp_path / "scan"
        (folder / "nested").mkdir(parents=True)
        (folder / "a.png").write_bytes(picture(7, fmt="PNG"))
        (folder / "nested" / "b.jpg").write_bytes(picture(8))
        (folder / "fake.jpg").write_bytes(b"not an image at all")
        scan = subprocess.run(
            [sys.executable, "-m", "moderation.cli", "scan", str(folder), "--key", key.group(1)],
            capture_output=True,
            text=True,
            env={**cli_env, "COLUMNS": "200"},
            cwd=REPO,
            timeout=180,
        )
        assert scan.returncode == 0, scan.stdout + scan.stderr
        assert "3 images" in scan.stdout and "rejected:UNSUPPORTED_MEDIA_TYPE" in scan.stdout
        assert re.search(r"allow\s*│\s*2", scan.stdout), scan.stdout

        def flower_up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{flower_port}/healthcheck", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(flower_up, 60, what="Flower up")
    finally:
        rc = stop_session(proc, 60)
        log.close()
    assert rc == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert "stopped" in (tmp_path / "up.log").read_text()
