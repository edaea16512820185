"""The composition root: what every process builds once from Settings (engine, blob store,
publisher, policies, bank index, verdict cache, key cache) and the analyzers it loads."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Engine

from moderation.access.auth import KeyCache
from moderation.access.ratelimit import Limiter, build_limiter
from moderation.analyzers.base import Analyzer, analyzer_class, load_analyzer
from moderation.banks import BankIndex
from moderation.cache import VerdictCache, build_store
from moderation.db.engine import make_engine
from moderation.intake.blobs import BlobStore, open_blob_store
from moderation.intake.images import DecodeBudget, Limits, return_large_blocks_to_the_os
from moderation.policy import Policy, Stage, load_policies
from moderation.queue import IngestBatcher, Publisher
from moderation.settings import Settings

_ANALYZER_LOCK = threading.Lock()


@dataclass
class Context:
    settings: Settings
    engine: Engine
    blobs: BlobStore
    publisher: Publisher
    policies: dict[str, Policy]
    banks: BankIndex
    limits: Limits
    _analyzers: dict[str, Analyzer] = field(default_factory=dict)
    _keys: KeyCache | None = None
    _limiter: Limiter | None = None
    _batcher: IngestBatcher | None = None
    _verdicts: VerdictCache | None = None

    @property
    def verdicts(self) -> VerdictCache:
        if self._verdicts is None:
            store, mac_key = build_store(self.settings)
            self._verdicts = VerdictCache(store, self.settings, mac_key)
        return self._verdicts

    @property
    def batcher(self) -> IngestBatcher:
        if self._batcher is None:
            s = self.settings
            self._batcher = IngestBatcher(
                self.publisher, s.ingest_batch_max, s.ingest_batch_linger_s, s.ingest_batch_min_rate
            )
        return self._batcher

    @property
    def limiter(self) -> Limiter:
        if self._limiter is None:
            s = self.settings
            self._limiter = build_limiter(s.ratelimit_url or s.redis_url)
        return self._limiter

    @property
    def keys(self) -> KeyCache:
        if self._keys is None:
            s = self.settings
            self._keys = KeyCache(self.engine, s.key_cache_ttl_s, s.key_revocation_poll_s, s.key_last_used_every_s)
        return self._keys

    @classmethod
    def build(cls, settings: Settings, publisher: Publisher | None = None) -> Context:
        return_large_blocks_to_the_os()  # decoded frames' memory goes back when freed (see there)
        engine = make_engine(settings)
        return cls(
            settings=settings,
            engine=engine,
            blobs=open_blob_store(settings),
            publisher=publisher or Publisher(settings),
            policies=load_policies(settings.policies_dir, settings.features),
            banks=BankIndex(
                engine, settings.bank_cache_ttl_s, settings.bank_max_distance, settings.bank_decisive_distance
            ),
            limits=Limits(
                max_bytes=settings.max_upload_bytes,
                max_pixels=settings.max_pixels,
                max_frames=settings.max_frames,
                max_total_pixels=settings.max_total_pixels,
                hash_side=settings.hash_side,
                max_decode_bytes=settings.max_decode_bytes,
                budget=DecodeBudget(settings.decode_memory_budget, settings.decode_wait_s),
            ),
        )

    def analyzer(self, stage: Stage) -> Analyzer:
        """The stage's analyzer, built once per process (a model loads once, shared by the
        policies whose stages have the same analyzer and options). Thread-safe."""
        assert stage.analyzer is not None
        key = f"{stage.analyzer}|{sorted(stage.options.items())}"
        if key not in self._analyzers:
            with _ANALYZER_LOCK:
                if key not in self._analyzers:
                    options = dict(stage.options)
                    if "settings" in inspect.signature(analyzer_class(stage.analyzer)).parameters:
                        options["settings"] = self.settings
                    self._analyzers[key] = load_analyzer(stage.analyzer, options)
        return self._analyzers[key]

    def warm_up(self, queues: Iterable[str]) -> list[str]:
        """Load (and warm) every analyzer that a worker consuming `queues` will run, before it
        takes its first task. Returns the stages warmed."""
        warmed: list[str] = []
        wanted = set(queues)
        for policy in self.policies.values():
            for stage in policy.analyzer_stages:
                if stage.queue in wanted:
                    analyzer = self.analyzer(stage)
                    analyzer.warmup()
                    warmed.append(f"{policy.id}:{stage.stage}")
        return warmed
