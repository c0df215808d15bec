import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from eat_policy.service import app as service_app
from eat_policy.service.settings import Settings, get_settings


def make_job(id: str = "ns/a", model: str = "sd15", age_s: float = 1.0, **kw) -> dict:  # type: ignore[no-untyped-def]
    now = kw.pop("now", time.time())
    job = {"id": id, "model": model, "width": 512, "height": 512, "steps_min": 10, "steps_max": 50,
           "deadline_s": 30.0, "arrival_time": now - age_s}
    job.update(kw)
    return job


def make_node(name: str, gpus: int = 1, free: int | None = None, product: str = "NVIDIA-A100-SXM4-80GB", **kw) -> dict:  # type: ignore[no-untyped-def]
    node = {"name": name, "gpu_product": product, "gpus_total": gpus, "gpus_free": gpus if free is None else free}
    node.update(kw)
    return node


@pytest.fixture
def client_with() -> Iterator:  # type: ignore[type-arg]
    """Build a TestClient with the given settings (the app reads them in its lifespan)."""
    clients = []

    def make(**settings: object) -> TestClient:
        service_app.app.dependency_overrides = {}
        get_settings.cache_clear()
        import eat_policy.service.app as module

        module.get_settings = lambda: Settings(**settings)  # type: ignore[assignment]
        c = TestClient(service_app.app)
        c.__enter__()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)
    import eat_policy.service.app as module

    module.get_settings = get_settings


@pytest.fixture
def client(client_with) -> TestClient:  # type: ignore[no-untyped-def]
    return client_with()
