"""Application metrics as `ray.serve.metrics` series (Ray exports them on its Prometheus endpoint,
each name prefixed `ray_`, with Serve's deployment/replica/application tags added):

    zerotune_requests_total{route,status}        requests answered by a replica
    zerotune_request_latency_ms{route}           time from request to the last byte (histogram)
    zerotune_batch_size{kind}                    items per forward pass (histogram)
    zerotune_tokens_generated_total{model}       completion tokens generated
    zerotune_queue_rejections_total{status}      requests Serve's proxy refused under backpressure
                                                 (counted in the proxy, see serving/proxy.py)

`NullMetrics` stands in where no Ray runs (unit tests of the HTTP app).
"""

from __future__ import annotations

LATENCY_BOUNDARIES_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]


class NullMetrics:
    def request(self, route: str, status: int, latency_ms: float) -> None:
        pass

    def batch(self, kind: str, size: int) -> None:
        pass

    def tokens(self, model: str, count: int) -> None:
        pass


class ServeMetrics(NullMetrics):
    """Created inside a replica (Serve then tags every series with the replica)."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self._requests = metrics.Counter(
            "zerotune_requests", description="Requests answered, by route and HTTP status.",
            tag_keys=("route", "status"),
        )
        self._latency = metrics.Histogram(
            "zerotune_request_latency_ms", description="Request latency to the last byte, by route (ms).",
            boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("route",),
        )
        self._batch = metrics.Histogram(
            "zerotune_batch_size", description="Items per forward pass, by kind (classify, tag, generate).",
            boundaries=BATCH_BOUNDARIES, tag_keys=("kind",),
        )
        self._tokens = metrics.Counter(
            "zerotune_tokens_generated", description="Completion tokens generated, by served model id.",
            tag_keys=("model",),
        )

    def request(self, route: str, status: int, latency_ms: float) -> None:
        self._requests.inc(tags={"route": route, "status": str(status)})
        self._latency.observe(latency_ms, tags={"route": route})

    def batch(self, kind: str, size: int) -> None:
        self._batch.observe(size, tags={"kind": kind})

    def tokens(self, model: str, count: int) -> None:
        if count:
            self._tokens.inc(count, tags={"model": model})
