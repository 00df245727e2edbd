"""The Ray Serve deployment: one replica loads the checkpoint once and batches requests into it.

Each input of a request is one batch item, so items from concurrent requests share forward
passes and `max_batch_size` bounds every forward pass. The model runs on one worker thread
(see engine.py); the replica's event loop meanwhile keeps accepting and queueing requests.

`@serve.batch` forms the next batch as soon as `batch_wait_timeout_s` runs out, even while the
previous batch still holds the model, so under steady load batches only hold what arrived in that
short window and queue up behind each other. `_IdleGate` holds new items while a forward pass runs
and releases them together when it ends: everything that arrived meanwhile joins the next batch,
so batches fill under load without a batch_wait_timeout_s that would delay a lone request.

The FastAPI app is built per replica (`__serve_build_asgi_app__`) because its routes, limits and
token come from the checkpoint and the `serve:` section.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI
from ray import serve

from trainers.checkpoint import read_manifest

from .config import ServeSection
from .engine import Engine, Generation, GenerationItem, Rejected
from .guard import read_token
from .routes import build_http_app, served_routes
from .schemas import Entity, Health, ModelCard


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


@serve.deployment
@serve.ingress()
class ModelServer:
    def __init__(self, checkpoint: str, serve_spec: dict[str, Any]) -> None:
        import torch

        spec = ServeSection.model_validate(serve_spec)
        # Ray reserves num_cpus for the replica; more torch threads than that only contend
        torch.set_num_threads(max(1, int(spec.num_cpus_per_replica)))
        self._token = read_token(spec)  # fails the replica (with the reason) before any request
        self.engine = Engine.load(checkpoint, spec)
        manifest = read_manifest(checkpoint)
        self._card = ModelCard(
            id=spec.app_name, task=manifest.task, kind=manifest.kind, base_model=manifest.base_model,
            labels=manifest.labels, routes=served_routes(manifest.task, self.engine.has_chat_template),
        )
        self._spec = spec
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zerotune-model")
        self._gate = _IdleGate()
        for batched in (self._classify_batch, self._tag_batch, self._generate_batch):
            batched.set_max_batch_size(spec.max_batch_size)
            batched.set_batch_wait_timeout_s(spec.batch_wait_timeout_s)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_http_app(self, card=self._card, serve=self._spec, token=self._token)

    async def _on_model_thread(self, fn, *args):
        async with self._gate.busy():
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @serve.batch
    async def _classify_batch(self, texts: list[str]) -> list[tuple[list[float], int]]:
        probs = await self._on_model_thread(self.engine.classify, texts)
        return [(p, len(texts)) for p in probs]

    @serve.batch
    async def _tag_batch(self, texts: list[str]) -> list[tuple[list[Entity], int]]:
        entities = await self._on_model_thread(self.engine.tag, texts)
        return [(e, len(texts)) for e in entities]

    @serve.batch
    async def _generate_batch(self, items: list[GenerationItem]) -> list[tuple[Generation | Rejected, int]]:
        gens = await self._on_model_thread(self.engine.generate, items)
        return [(g, len(items)) for g in gens]

    # the routes' Backend: one call per input
    async def classify(self, text: str) -> tuple[list[float], int]:
        await self._gate.wait()
        return await self._classify_batch(text)

    async def tag(self, text: str) -> tuple[list[Entity], int]:
        await self._gate.wait()
        return await self._tag_batch(text)

    async def generate(self, item: GenerationItem) -> tuple[Generation | Rejected, int]:
        await self._gate.wait()
        return await self._generate_batch(item)

    def health(self) -> Health:
        replica = serve.get_replica_context().replica_id.unique_id
        return Health(task=self._card.task, pid=os.getpid(), replica=replica)

    async def check_health(self) -> None:
        """Serve calls this every health_check_period_s; raising marks the replica unhealthy."""
        await self._on_model_thread(self.engine.probe)

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
