"""`moderation eval DIR`: a policy's cascade measured on a folder of labelled images.

Thin: reading the folder, running the cascade and the figures are `moderation.pipeline.evaluation`;
the report is `moderation.pipeline.eval_report`. This module picks the settings per run (the
base model, an adapter, or both to compare) and prints.
"""

from __future__ import annotations

import gc
import inspect
import json
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from moderation.cli.common import err, out, settings
from moderation.errors import ModerationError


def evaluate_folder(
    directory: Annotated[
        Path, typer.Argument(help="labels.csv + images, or one sub-folder per label (none/ = harmless)")
    ],
    policy: Annotated[str, typer.Option(help="policy id (policies/<id>.yaml)")] = "default",
    engine: Annotated[
        str | None, typer.Option(help="run the VLM stage too: transformers (in process) or openai (a vLLM server)")
    ] = None,
    model: Annotated[str | None, typer.Option(help="VLM checkpoint (path or hub id in the local cache)")] = None,
    adapter: Annotated[
        str | None, typer.Option(help="a PEFT adapter folder (transformers) or a served adapter name (openai)")
    ] = None,
    compare: Annotated[bool, typer.Option(help="with --adapter: also run the base model, and compare")] = False,
    report: Annotated[Path | None, typer.Option(help="write the report: .md (Markdown) or .html")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the figures as JSON")] = None,
    jobs: Annotated[int, typer.Option(help="images in flight (the VLM batches them)")] = 0,
    limit: Annotated[int, typer.Option(help="only the first N images")] = 0,
) -> None:
    """Measure POLICY's cascade on labelled images: per-category precision/recall/F1, the confusion of
    actions, calibration, cost per image and the images that went wrong."""
    from moderation.analyzers.base import analyzer_class, load_analyzer
    from moderation.pipeline import eval_report
    from moderation.pipeline.evaluation import read_labelled, run, summarise
    from moderation.policy import Stage, load_policies

    base = settings()
    update: dict[str, Any] = {}
    if engine:
        if engine not in ("transformers", "openai"):
            err.print(f"[red]--engine must be transformers or openai, not {engine!r}[/]")
            raise typer.Exit(2)
        update |= {"vlm": True, "vlm_engine": engine}
    if model:
        update["vlm_model"] = model
    if (adapter or compare) and not (engine or base.vlm):
        err.print("[red]--adapter and --compare need the VLM stage (--engine)[/]")
        raise typer.Exit(2)
    for target in (report, json_out):
        if target is not None and not target.parent.is_dir():
            err.print(f"[red]no folder {escape(str(target.parent))} for {escape(str(target))}[/]")
            raise typer.Exit(2)
    # Without --adapter a run measures what the deployment runs: its MODERATION_VLM_ADAPTER, if any.
    deployed = base.vlm_adapter if (engine or base.vlm) else None
    variants: list[tuple[str, str | None]] = (
        [("base" if adapter else "run", None if adapter else deployed)] if not adapter or compare else []
    )
    if adapter:
        variants.append((f"adapter {Path(adapter).name}", adapter))
    runs: list[tuple[str, dict[str, Any]]] = []
    for name, adapter_ in variants:
        s = base.model_copy(update={**update, "vlm_adapter": adapter_})
        policies = load_policies(s.policies_dir, s.features)
        if policy not in policies:
            err.print(f"[red]no policy {escape(repr(policy))} in {escape(str(s.policies_dir))}[/]")
            raise typer.Exit(2)
        pol = policies[policy]
        try:
            items = read_labelled(directory, list(pol.categories))
        except ModerationError as exc:
            err.print(f"[red]{escape(exc.message)}[/]")
            raise typer.Exit(2) from exc
        items = items[:limit] if limit else items
        built: dict[str, Any] = {}
        lock = threading.Lock()

        def analyzer(stage: Stage, s: Any = s, built: dict[str, Any] = built, lock: Any = lock) -> Any:
            with lock:  # one model per stage, however many images are in flight
                if stage.stage not in built:
                    assert stage.analyzer is not None
                    options = dict(stage.options)
                    if "settings" in inspect.signature(analyzer_class(stage.analyzer)).parameters:
                        options["settings"] = s
                    built[stage.stage] = load_analyzer(stage.analyzer, options)
                return built[stage.stage]

        n_jobs = jobs or (s.vlm_batch_max if s.vlm else 1)
        started = time.perf_counter()
        with Progress(
            TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
        ) as progress:
            bar = progress.add_task(name, total=len(items))

            def advance(_n: int, bar: Any = bar, progress: Progress = progress) -> None:
                progress.advance(bar)

            results = run(items, pol, analyzer, n_jobs, advance)
        runs.append((name, summarise(results, pol, time.perf_counter() - started)))
        for a in built.values():  # free this run's models before the next variant loads its own
            if hasattr(a, "close"):
                a.close()
        built.clear()
        gc.collect()
    _print(runs)
    title = f"moderation eval: {directory} with policy {policy}"
    if report:
        text = (
            eval_report.html_page(title, runs)
            if report.suffix.lower() in (".html", ".htm")
            else eval_report.markdown(title, runs)
        )
        report.write_text(text, encoding="utf-8")
        err.print(f"report: {report}")
    if json_out:
        json_out.write_text(json.dumps(dict(runs), indent=2, ensure_ascii=False), encoding="utf-8")


def _print(runs: list[tuple[str, dict[str, Any]]]) -> None:
    for name, s in runs:
        t = Table(title=f"{name}: {s['images']} images, policy {s['policy']}")
        for col in ("category", "labelled", "precision", "recall", "F1", "review at", "ECE"):
            t.add_column(col)
        for c, v in s["categories"].items():
            if v["n"] or v["flagged"]:
                t.add_row(
                    c,
                    str(v["n"]),
                    *(
                        f"{v[k]:.2f}" if v[k] is not None else "-"
                        for k in ("precision", "recall", "f1", "review_at", "ece")
                    ),
                )
        out.print(t)
        ha, hh = s["harmful_allowed"], s["harmless_held"]
        out.print(
            f"harmful allowed {ha['rate']} {ha['ci95']} · harmless held {hh['rate']} {hh['ci95']} · "
            f"{s['images_per_s']} images/s · ms/image {s['ms_per_image']} · errors {s['errors']} · "
            f"wrong {len(s['wrong'])}"
        )
