"""Helpers for driving the API in-process with Django's test client."""

import json
from typing import Any

from django.test import Client


def bearer(token: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def post_json(client: Client, path: str, body: Any, **headers: str):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(path, data=data, content_type="application/json", **headers)


def reading(ts: str = "2026-01-01T00:00:00Z", metric: str = "temp", value: float = 20.0) -> dict:
    return {"ts": ts, "metric": metric, "value": value}
