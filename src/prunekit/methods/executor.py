"""Where candidate evaluations run: in this process (default) or on Ray workers.

An executor is built from a *factory* ``(callable, args)`` that constructs the
evaluator; in-process it is called once here, on Ray once per actor, so models and
calibration data travel once per worker, not once per candidate. ``map`` keeps the
order of its inputs, so a search gives the same result whichever backend runs it.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence


class InProcess:
    def __init__(self, factory: Callable[..., Any], args: tuple = ()) -> None:
        self.worker = factory(*args)

    def map(self, method: str, items: Sequence[Any]) -> list[Any]:
        fn = getattr(self.worker, method)
        return [fn(item) for item in items]

    def close(self) -> None:
        pass


class RayExecutor:
    """``workers`` Ray actors, each holding one evaluator; items are dealt round-robin."""

    def __init__(self, factory: Callable[..., Any], args: tuple = (), workers: int = 2,
                 threads_per_worker: int = 1) -> None:
        try:
            import ray
        except ImportError as exc:  # an optional extra
            raise ImportError("the Ray executor needs `pip install prunekit[distributed]`") \
                from exc
        self.ray = ray
        if not ray.is_initialized():
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)

        @ray.remote(num_cpus=1)
        class _Actor:
            def __init__(self, factory, args, threads):
                import torch
                torch.set_num_threads(threads)
                self.worker = factory(*args)

            def run(self, method, items):
                fn = getattr(self.worker, method)
                return [fn(item) for item in items]

        self.actors = [_Actor.remote(factory, args, threads_per_worker) for _ in range(workers)]

    def map(self, method: str, items: Sequence[Any]) -> list[Any]:
        n = len(self.actors)
        chunks = [list(items[i::n]) for i in range(n)]
        results = self.ray.get([a.run.remote(method, c) for a, c in zip(self.actors, chunks)])
        out: list[Any] = [None] * len(items)
        for i, res in enumerate(results):
            out[i::n] = res
        return out

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
