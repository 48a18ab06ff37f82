"""The unit layer must never start Ray: it stays fast and deterministic (as Ray Data's does)."""

import pytest


@pytest.fixture(autouse=True)
def _forbid_ray(monkeypatch):
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("unit tests must not start Ray; move this test to tests/integration")

    monkeypatch.setattr(ray, "init", refuse)
