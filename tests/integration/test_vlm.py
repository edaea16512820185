"""The VLM stage end to end on the CPU: API -> ingest worker -> `analyze.gpu` worker started by
`moderation worker --device cpu` -> micro-batched model call -> parsed findings -> policy -> audit,
on the real PostgreSQL and Redis, with tiny GLM-4.6V-architecture checkpoints (no download).

Items are queued on `analyze.gpu` before the VLM worker starts, so that they are in flight
together; grouping is then read from the engine's own batch records (stored on each finding
and logged per model call), never from timings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from moderation.db.tables import findings, submissions
from tests.support.http import auth, submit, wait_final
from tests.support.images import picture
from tests.support.processes import free_port, http_ok
from tests.support.vlm import SCRIPTED_ANSWER
from tests.support.waiting import wait_until

pytestmark = pytest.mark.services

VLM_ENV = {
    "MODERATION_VLM": "true",
    "MODERATION_VLM_IMAGE_SIDE": "112",  # 64 patches: the tiny model runs in milliseconds
    "MODERATION_VLM_MAX_NEW_TOKENS": "8",
    "MODERATION_VLM_BATCH_MAX": "16",
    "MODERATION_VLM_BATCH_WAIT_MS": "1500",
}
# The node name `moderation worker --device cpu` gives its worker: ready when it answers ping,
# which it does only once its model is loaded (the thread pool warms up before consuming).
VLM_NODE = "cpu-vlm@%h"


@pytest.fixture(autouse=True)
def _no_leftover_gpu_messages(broker: Any) -> Any:
    """A stopped VLM worker puts its unfinished messages back on analyze.gpu: drop them, so the
    next test (or module) starts from empty queues."""
    yield
    broker.drop("analyze.gpu")


def submit_and_queue(client: Any, keys: dict[str, str], ctx: Any, broker: Any, seeds: range) -> list[str]:
    """Submit images under the test-vlm policy and wait until all sit on the GPU queue."""
    ids = [submit(client, keys["submitter"], picture(s), policy="test-vlm", caption=f"post {s}")["id"] for s in seeds]

    def routed() -> bool:
        with ctx.engine.connect() as conn:
            rows = conn.execute(select(findings.c.submission_id).where(findings.c.submission_id.in_(ids))).all()
        return len({r.submission_id for r in rows}) == len(ids) and broker.queued("analyze.gpu") >= len(ids)

    wait_until(routed, 60, what="all items routed to analyze.gpu")
    return ids


def vlm_findings(ctx: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            select(findings.c.submission_id, findings.c.body).where(
                findings.c.submission_id.in_(ids), findings.c.stage == "vlm"
            )
        ).all()
    return {r.submission_id: (r.body if isinstance(r.body, dict) else json.loads(r.body)) for r in rows}


def batch_members(ctx: Any, batch_id: str) -> list[str]:
    """The submissions whose VLM finding came from model call `batch_id`."""
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(findings.c.submission_id, findings.c.body).where(findings.c.stage == "vlm")).all()
    bodies = [(r.submission_id, r.body if isinstance(r.body, dict) else json.loads(r.body)) for r in rows]
    return [sid for sid, body in bodies if (body.get("model") or {}).get("batch_id") == batch_id]


def start_vlm_worker(procs: Any, **env: str) -> Any:
    """The VLM worker exactly as an operator starts it for development."""
    return procs.command(
        "vlm-worker",
        ["-m", "moderation.cli", "worker", "--device", "cpu", "--loglevel", "info"],
        ready=procs.ping(VLM_NODE),
        **{**VLM_ENV, "MODERATION_WARMUP": "true", **env},
    )


def start_openai_server(procs: Any, model: Path) -> str:
    """An OpenAI-compatible HTTP server (vLLM's API) serving `model`, once it lists its model
    (the model loads before the server listens); returns its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    procs.command(
        "openai-server",
        ["-m", "tests.support.openai_server", "--model", str(model), "--port", str(port)],
        ready=http_ok(f"{base}/models"),
    )
    return base


@pytest.fixture
def openai_server(procs: Any, tiny_vlm: dict[str, Path]) -> str:
    """An OpenAI-compatible HTTP server (vLLM's API) serving the scripted tiny model."""
    return start_openai_server(procs, tiny_vlm["scripted"])


@pytest.mark.parametrize("engine", ["transformers", "openai"])
def test_vlm_batches_concurrent_items_and_decides(engine, client, keys, ctx, procs, broker, tiny_vlm, request) -> None:
    procs.worker(**VLM_ENV)  # ingest + decide, routing to analyze.gpu
    seeds = range(700, 706) if engine == "transformers" else range(720, 726)
    ids = submit_and_queue(client, keys, ctx, broker, seeds)
    env = {"MODERATION_VLM_MODEL": str(tiny_vlm["scripted"])}
    if engine == "openai":
        env |= {"MODERATION_VLM_ENGINE": "openai", "MODERATION_VLM_BASE_URL": request.getfixturevalue("openai_server")}
    gpu = start_vlm_worker(procs, **env)
    assert "ready: warmed" in gpu.text()  # the model loaded before the first task was taken

    finals = [wait_final(client, keys["submitter"], sid, timeout=120) for sid in ids]
    for final in finals:
        assert final["status"] == "decided"
        assert final["decision"]["action"] == "block"
        assert final["decision"]["categories"]["harassment"] == pytest.approx(0.97)
        assert "threshold" in [r["code"] for r in final["decision"]["reasons"]]

    found = vlm_findings(ctx, ids)
    assert set(found) == set(ids)
    for f in found.values():
        assert f["error"] is None
        assert f["flags"]["meme"] is True and f["flags"]["text_in_image"] is True
        assert f["ocr_text"] == SCRIPTED_ANSWER["ocr_text"]
        assert f["rationale"]["harassment"] == "threat to meet outside"
        assert f["model"]["prompt_version"].startswith("risk-v1+")
        assert f["model"]["score_method"] == "generated"
    # Grouping, from the engine's own batch records: fewer model calls than items, and every
    # item's record says how many images shared its call.
    batches = {f["model"]["batch_id"]: int(f["model"]["batch_size"]) for f in found.values()}
    assert len(batches) < len(ids), batches
    assert max(batches.values()) >= 2
    # Each call's size counts exactly the items in it (an item of an earlier test that the
    # reconciler re-queued may share a call with ours: count every finding of those calls).
    assert all(size == len(batch_members(ctx, bid)) for bid, size in batches.items()), batches
    assert f"vlm engine={engine} batch=" in gpu.text()

    events = client.get("/v1/audit/events", params={"submission_id": ids[0]}, headers=auth(keys["auditor"]))
    actions = [(e["action"], e["facts"].get("stage")) for e in events.json()["events"]]
    assert ("analyzed", "vlm") in actions and actions[-1][0] == "decided"
    decided = events.json()["events"][-1]["facts"]
    assert decided["automated_decision"] == "AUTOMATED_DECISION_FULLY"
    assert any(m.get("prompt_version", "").startswith("risk-v1+") for m in decided.get("models", []))
    assert set(decided["score_methods"]["vlm"].values()) == {"generated"}
    assert client.get("/v1/audit/verify", headers=auth(keys["auditor"])).json()["ok"] is True


def test_malformed_model_output_goes_to_review_never_allow(client, keys, ctx, procs, broker, tiny_vlm) -> None:
    procs.worker(**VLM_ENV)
    ids = submit_and_queue(client, keys, ctx, broker, range(740, 743))
    start_vlm_worker(procs, MODERATION_VLM_MODEL=str(tiny_vlm["random"]))
    for sid in ids:
        final = wait_final(client, keys["submitter"], sid, timeout=120)
        assert final["status"] == "in_review"
        assert final["decision"]["action"] == "review"
        assert "analyzer_error" in [r["code"] for r in final["decision"]["reasons"]]
    for f in vlm_findings(ctx, ids).values():
        assert f["error"].startswith("unparseable model output")


def test_vlm_server_down_is_retried_not_decided(client, keys, ctx, procs, broker, tiny_vlm) -> None:
    """The openai engine with no server: a transient fault, retried; nothing is decided on it."""
    procs.worker(**VLM_ENV)
    ids = submit_and_queue(client, keys, ctx, broker, range(760, 762))
    dead = f"http://127.0.0.1:{free_port()}/v1"
    gpu = procs.command(
        "vlm-worker",
        ["-m", "moderation.cli", "worker", "--device", "cpu", "--loglevel", "info"],
        ready=procs.ping(VLM_NODE),
        **{
            **VLM_ENV,
            "MODERATION_VLM_ENGINE": "openai",
            "MODERATION_VLM_BASE_URL": dead,
            "MODERATION_VLM_RETRIES": "0",
        },
        MODERATION_VLM_MODEL=str(tiny_vlm["scripted"]),
    )
    wait_until(lambda: gpu.text().count("Retry in") >= 2 * len(ids), 90, what="two retries of each VLM task")
    for sid in ids:
        body = client.get(f"/v1/submissions/{sid}", headers=auth(keys["submitter"])).json()
        assert body["status"] == "analyzing" and body["decision"] is None
    assert vlm_findings(ctx, ids) == {}
    # An unreachable server is not the item's fault: its deliveries are given back, so an outage
    # does not use up the budget and send the items to people.
    with ctx.engine.connect() as conn:
        attempts = conn.execute(select(submissions.c.attempts).where(submissions.c.id.in_(ids))).scalars().all()
    assert all(a <= 2 for a in attempts), attempts


def test_openai_engine_reads_token_logprobs_over_http(procs, tiny_vlm) -> None:
    """The openai engine asks for `logprobs` / `top_logprobs` and reads them back per token."""
    from PIL import Image

    from moderation.analyzers.vlm.engines import Request
    from moderation.analyzers.vlm.openai_engine import OpenAIEngine
    from moderation.analyzers.vlm.prompts import load_prompt, render

    base = start_openai_server(procs, tiny_vlm["random"])
    engine = OpenAIEngine(base, model=str(tiny_vlm["random"]), retries=5)
    engine.warmup(wait_s=60)
    spec = load_prompt(Path(__file__).resolve().parents[2] / "policies", "risk-v1")
    req = Request("k", Image.new("RGB", (90, 60), "gray"), render(spec, ["hate"], None))
    (g,) = engine.generate([req], 5, logprobs=4)
    assert not isinstance(g, BaseException), g
    assert g.steps is not None and 1 <= len(g.steps) <= 5 and g.tokens_out == len(g.steps)
    assert all(len(alts) == 4 and token in alts for token, alts in g.steps)


def test_worker_gpus_without_gpus_fails_clearly(procs) -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "moderation.cli", "worker", "--gpus", "0,1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert "no NVIDIA GPU" in message and "--device cpu" in message
