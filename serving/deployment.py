"""The Ray Serve deployment: one replica loads the checkpoint once and batches requests into it.

Each input of a request is one batch item, so items from concurrent requests share forward
passes and `max_batch_size` bounds every forward pass. The model runs on one worker thread
(see engine.py); the replica's event loop meanwhile keeps accepting and queueing requests.

`@serve.batch` forms the next batch as soon as `batch_wait_timeout_s` runs out, even while the
previous batch still holds the model, so under steady load batches only hold what arrived in that
short window and queue up behind each other. `_IdleGate` holds new items while a forward pass runs
and releases them together when it ends: everything that arrived meanwhile joins the next batch,
so batches fill under load without a batch_wait_timeout_s that would delay a lone request.

A batch item that fails alone fails alone: classification and tagging batches go through
`run_isolated`, generation groups likewise (inside the engine), so one bad input gets its own 422
and the other requests of its batch their normal answers.

With `serve.adapters`, adapters are Ray Serve multiplexed models: `_load_adapter` is wrapped in
`serve.multiplexed` (its LRU limit is serve.max_adapters_per_replica), so each replica reports
the adapters it holds and requests that carry the `serve_multiplexed_model_id` header are routed
to replicas that already hold theirs. Batches are split by that header (Serve) and grouped by
adapter (here), so one forward pass always runs one adapter.

The FastAPI app is built per replica (`__serve_build_asgi_app__`) because its routes, limits and
token come from the checkpoint and the `serve:` section.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve

from trainers.checkpoint import MANIFEST, read_manifest
from trainers.storage import Location

from .adapters import ModelIds, UnknownModel
from .config import ServeSection
from .engine import Engine, Generation, GenerationItem, Rejected, run_isolated
from .guard import read_token
from .metrics import ServeMetrics
from .routes import ApiError, Selected, build_http_app, served_routes
from .schemas import Entity, Health, ModelCard, ReplicaStats

MULTIPLEX_HEADER = "serve_multiplexed_model_id"


class _IdleGate:
    def __init__(self) -> None:
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait(self) -> None:
        await self._idle.wait()

    @contextlib.asynccontextmanager
    async def busy(self):
        self._idle.clear()
        try:
            yield
        finally:
            self._idle.set()  # wakes every waiter in one loop turn, so they enqueue together


class _LoadedAdapter:
    """What the multiplexed loader returns; Serve calls __del__ when its LRU evicts the adapter,
    and the weights are dropped on the model thread (between batches)."""

    def __init__(self, server: ModelServer, name: str) -> None:
        self.server, self.name, self.released = server, name, False

    def __del__(self) -> None:
        if not self.released:  # Serve calls it once, the garbage collector maybe again
            self.released = True
            with contextlib.suppress(Exception):
                self.server._pool.submit(self.server.engine.unload_adapter, self.name)


def _created(checkpoint: str | Path) -> int:
    """The checkpoint's time for /v1/models (local or in cloud storage)."""
    return int(Location.parse(checkpoint).join(MANIFEST).mtime())


@serve.deployment
@serve.ingress()
class ModelServer:
    def __init__(self, checkpoint: str, serve_json: dict[str, Any]) -> None:
        import torch

        serve_section = ServeSection.model_validate(serve_json)
        # Ray reserves num_cpus for the replica; more torch threads than that only contend
        torch.set_num_threads(max(1, int(serve_section.num_cpus_per_replica)))
        self._token = read_token(serve_section)  # fails the replica (with the reason) before any request
        self.engine = Engine.load(checkpoint, serve_section)
        manifest = read_manifest(checkpoint)
        routes = served_routes(manifest.task, self.engine.has_chat_template)
        self._ids = ModelIds(serve_section.app_name, manifest.base_model, tuple(a.name for a in serve_section.adapters))
        self._cards = [ModelCard(
            id=serve_section.app_name, created=_created(checkpoint), task=manifest.task, kind=manifest.kind,
            base_model=manifest.base_model, labels=manifest.labels, routes=routes,
        )] + [ModelCard(
            id=a.name, created=_created(a.checkpoint), task=manifest.task, kind="adapter",
            base_model=manifest.base_model, labels=manifest.labels, routes=routes, parent=serve_section.app_name,
        ) for a in serve_section.adapters]
        self._serve = serve_section
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zerotune-model")
        self._gate = _IdleGate()
        self.metrics = ServeMetrics()
        self._streams = 0
        for batched in (self._classify_batch, self._tag_batch, self._generate_batch):
            batched.set_max_batch_size(serve_section.max_batch_size)
            batched.set_batch_wait_timeout_s(serve_section.batch_wait_timeout_s)
        if serve_section.adapters:
            async def load_adapter(model_id: str) -> _LoadedAdapter:
                await self._on_model_thread(self.engine.load_adapter, model_id)
                return _LoadedAdapter(self, model_id)

            self._load_adapter = serve.multiplexed(
                max_num_models_per_replica=serve_section.max_adapters_per_replica
            )(load_adapter)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_http_app(self, cards=self._cards, serve=self._serve, token=self._token, metrics=self.metrics)

    async def _on_model_thread(self, fn, *args):
        async with self._gate.busy():
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # --- batches ----------------------------------------------------------------------------

    @staticmethod
    def _by_adapter(fn, requests: list[tuple[str, str | None]]) -> list[Any]:
        """fn(texts, adapter) per adapter among the requests, each group isolated (model thread)."""
        results: list[Any] = [None] * len(requests)
        groups: dict[str | None, list[int]] = defaultdict(list)
        for i, (_, adapter) in enumerate(requests):
            groups[adapter].append(i)
        for adapter, idx in groups.items():
            outs = run_isolated(lambda texts, a=adapter: fn(texts, a), [requests[i][0] for i in idx])
            for i, out in zip(idx, outs, strict=True):
                results[i] = out
        return results

    @serve.batch
    async def _classify_batch(self, requests: list[tuple[str, str | None]]) -> list[tuple[Any, int]]:
        self.metrics.batch("classify", len(requests))
        outs = await self._on_model_thread(self._by_adapter, self.engine.classify, requests)
        return [(o, len(requests)) for o in outs]

    @serve.batch
    async def _tag_batch(self, requests: list[tuple[str, str | None]]) -> list[tuple[Any, int]]:
        self.metrics.batch("tag", len(requests))
        outs = await self._on_model_thread(self._by_adapter, self.engine.tag, requests)
        return [(o, len(requests)) for o in outs]

    @serve.batch
    async def _generate_batch(self, items: list[GenerationItem]) -> list[tuple[list[Generation] | Rejected, int]]:
        rows = sum(item.n for item in items)
        self.metrics.batch("generate", rows)
        outs = await self._on_model_thread(self.engine.generate, items)
        for item, out in zip(items, outs, strict=True):
            if not isinstance(out, Rejected):
                self.metrics.tokens(self._ids.served_id(item.adapter), sum(g.completion_tokens for g in out))
        return [(o, rows) for o in outs]

    # --- the routes' Backend ----------------------------------------------------------------

    async def select(self, model: str | None) -> Selected:
        """The adapter a request names (its `model` field, else the multiplexing header), loaded."""
        header = serve.get_multiplexed_model_id() or None
        try:
            adapter = self._ids.adapter_for(model if model is not None else header)
            if header is not None and model is not None and self._ids.adapter_for(header) != adapter:
                raise ApiError(400, "invalid_request", f"the {MULTIPLEX_HEADER} header names {header!r} but the "
                               f"body's model is {model!r}; send one, or the same in both", param="model")
        except UnknownModel as err:
            raise ApiError(404, "model_not_found", str(err), param="model") from None
        if adapter is not None:
            await self._load_adapter(adapter)  # multiplexed: LRU bookkeeping, loads it if it is not here
        return Selected(adapter, self._ids.served_id(adapter))

    async def classify(self, text: str, adapter: str | None) -> tuple[Any, int]:
        await self._gate.wait()
        return await self._classify_batch((text, adapter))

    async def tag(self, text: str, adapter: str | None) -> tuple[list[Entity] | Rejected, int]:
        await self._gate.wait()
        return await self._tag_batch((text, adapter))

    async def generate(self, item: GenerationItem) -> tuple[list[Generation] | Rejected, int]:
        await self._gate.wait()
        return await self._generate_batch(item)

    def stream_opened(self) -> None:
        self._streams += 1

    def stream_closed(self) -> None:
        self._streams -= 1

    def health(self) -> Health:
        replica = serve.get_replica_context().replica_id.unique_id
        stats = ReplicaStats(tokens_generated=self.engine.tokens_generated,
                             generations_cancelled=self.engine.generations_cancelled, streams_open=self._streams,
                             adapters_loaded=self.engine.loaded_adapters)
        return Health(task=self._cards[0].task, pid=os.getpid(), replica=replica, stats=stats)

    async def check_health(self) -> None:
        """Serve calls this every health_check_period_s; raising marks the replica unhealthy."""
        await self._on_model_thread(self.engine.probe)

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
