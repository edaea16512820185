"""Hash bank administration (API and CLI) and matching through the pipeline."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from typing import Any

import pytest
from PIL import Image

from tests.support.banks import bank_changes_applied
from tests.support.http import auth
from tests.support.images import picture
from tests.support.paths import REPO
from tests.support.waiting import wait_until

pytestmark = pytest.mark.services


def decide(client: Any, key: str, data: bytes) -> dict[str, Any]:
    r = client.post("/v1/submissions", headers=auth(key), files={"file": ("x.jpg", data)}, data={"policy": "hash-only"})
    assert r.status_code == 202, r.text
    sid = r.json()["id"]

    def done() -> dict[str, Any] | None:
        body = client.get(f"/v1/submissions/{sid}", headers=auth(key)).json()
        return body if body["status"] in ("decided", "in_review") else None

    return dict(wait_until(done, 60, what="decided"))


def settle(ctx: Any) -> None:
    """Wait until the bank changes of tenant acme (where `keys` live) reach the workers' indexes."""
    bank_changes_applied(ctx, "acme")


def reencoded(data: bytes, scale: float = 0.6, quality: int = 50) -> bytes:
    im = Image.open(io.BytesIO(data))
    im = im.resize((int(im.width * scale), int(im.height * scale)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_bank_admin_api(client, keys, ctx, worker) -> None:
    admin = auth(keys["admin"])
    assert (
        client.post("/v1/banks", headers=auth(keys["submitter"]), json={"name": "x", "kind": "bad"}).status_code == 403
    )
    r = client.post("/v1/banks", headers=admin, json={"name": "scams", "kind": "bad", "category": "scam_fraud"})
    assert r.status_code == 201
    dup = client.post("/v1/banks", headers=admin, json={"name": "scams", "kind": "bad"})
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "CONFLICT"
    bad = client.post("/v1/banks", headers=admin, json={"name": "x", "kind": "bad", "category": "nope"})
    assert bad.status_code == 422
    assert client.post("/v1/banks", headers=admin, json={"name": "fine", "kind": "good"}).status_code == 201

    scam, fine = picture(1201, size=(800, 600)), picture(1202, size=(800, 600))
    added = client.post("/v1/banks/scams/images", headers=admin, files=[("files", ("scam.jpg", scam))]).json()
    assert added["added"] == 1
    client.post("/v1/banks/fine/images", headers=admin, files=[("files", ("fine.png", fine))])
    missing = client.post("/v1/banks/nope/images", headers=admin, files=[("files", ("a.jpg", scam))])
    assert missing.status_code == 404
    settle(ctx)
    listed = {b["name"]: b for b in client.get("/v1/banks", headers=admin).json()["banks"]}
    assert listed["scams"]["entries"] == 1 and listed["fine"]["kind"] == "good"

    blocked = decide(client, keys["submitter"], reencoded(scam))
    assert blocked["decision"]["action"] == "block"
    assert blocked["decision"]["categories"] == {"scam_fraud": 1.0}
    reason = blocked["decision"]["reasons"][0]
    assert reason["bank"] == "scams" and reason["hash"] == "pdq" and reason["entry_id"] == added["entry_ids"][0]
    allowed = decide(client, keys["submitter"], reencoded(fine, 0.8, 70))
    assert allowed["decision"]["action"] == "allow" and allowed["decision"]["reasons"][0]["bank"] == "fine"
    unrelated = decide(client, keys["submitter"], picture(1203, size=(800, 600)))
    assert unrelated["decision"]["reasons"] == [{"code": "no_violation"}]

    # Removing the entry stops the match (within the index refresh interval).
    entry = added["entry_ids"][0]
    assert client.delete(f"/v1/banks/scams/entries/{entry}", headers=admin).status_code == 204
    assert client.delete(f"/v1/banks/scams/entries/{entry}", headers=admin).status_code == 404
    settle(ctx)
    assert decide(client, keys["submitter"], reencoded(scam))["decision"]["action"] == "allow"


def test_hash_list_import_and_cli(client, keys, ctx, worker, tmp_path) -> None:
    admin = auth(keys["admin"])
    client.post("/v1/banks", headers=admin, json={"name": "imported", "kind": "bad", "category": "extremism"})
    src = picture(1301, size=(700, 700))
    from moderation.intake.images import inspect_image

    info, _ = inspect_image(src, ctx.limits)
    csv_text = f"pdq,label\n{info.pdq},propaganda poster 12\n{'0' * 64},flat\n"
    r = client.post("/v1/banks/imported/hashes", headers=admin, files={"file": ("list.csv", csv_text.encode())})
    assert r.status_code == 201 and r.json() == {"added": 2}
    broken = client.post(
        "/v1/banks/imported/hashes", headers=admin, files={"file": ("l.tsv", b"pdq\tlabel\nnot-a-hash\tx\n")}
    )
    assert broken.status_code == 422 and "line 2" in broken.json()["error"]["message"]
    settle(ctx)
    d = decide(client, keys["submitter"], reencoded(src, 0.5, 60))
    assert d["status"] == "decided" and d["decision"]["action"] == "block", d
    assert d["decision"]["reasons"][0]["label"] == "propaganda poster 12"

    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "moderation.cli", "bank", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    assert cli("create", "cli-bank", "--tenant", "acme", "--kind", "bad", "--category", "hate").returncode == 0
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(picture(1400 + i))
    (folder / "junk.jpg").write_bytes(b"junk")
    added = cli("add", str(folder), "--tenant", "acme", "--bank", "cli-bank")
    assert added.returncode == 0 and "added 3 of 4" in added.stdout
    exported = cli("export", "--tenant", "acme", "--bank", "cli-bank")
    assert exported.returncode == 0 and len(exported.stdout.strip().splitlines()) == 4
    (tmp_path / "list.csv").write_text(exported.stdout)
    cli("create", "copy", "--tenant", "acme")
    imported = cli("import", str(tmp_path / "list.csv"), "--tenant", "acme", "--bank", "copy")
    assert imported.returncode == 0 and "imported 3" in imported.stdout
    listed = cli("list", "--tenant", "acme")
    assert "cli-bank" in listed.stdout and "copy" in listed.stdout
    assert cli("remove", "999999", "--tenant", "acme", "--bank", "copy").returncode == 2


def test_same_picture_other_caption_is_not_a_copy(client, keys, ctx, worker) -> None:
    from bench.meme_hashes import jpeg, meme, template

    admin = auth(keys["admin"])
    client.post("/v1/banks", headers=admin, json={"name": "threat-memes", "kind": "bad", "category": "harassment"})
    base = template(3)
    banked = meme(base, "MEET ME OUTSIDE", "YOU WILL REGRET IT")
    r = client.post("/v1/banks/threat-memes/images", headers=admin, files=[("files", ("m.jpg", jpeg(banked)))])
    assert r.status_code == 201
    settle(ctx)
    copy = decide(client, keys["submitter"], jpeg(banked.resize((700, 700)), 55))
    assert copy["decision"]["action"] == "block" and copy["decision"]["reasons"][0]["near"] is False
    other = decide(client, keys["submitter"], jpeg(meme(base, "ME AFTER ONE GYM SESSION", "EXPECTING ABS")))
    # Not blocked as a copy; if the hash is still close, a human looks (never an automatic allow of a near match).
    assert other["decision"]["action"] in ("review", "allow")
    codes = [r["code"] for r in other["decision"]["reasons"]]
    assert "bank_match" not in codes
    if other["decision"]["action"] == "review":
        assert codes[-1] == "bank_near_match"
