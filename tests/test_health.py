"""Liveness stays up when a shard is down; readiness names what is not ready."""

from django.test import Client


def test_healthz_and_readyz_when_everything_is_up(shards):
    client = Client()
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True
    assert all(body[part]["ok"] for part in ("directory", "cache", "broker"))
    assert set(body["shards"]) == set(shards)
    assert all(s["ok"] and s["latency_ms"] >= 0 for s in body["shards"].values())


def test_a_down_shard_fails_readiness_but_not_liveness(dead_shard):
    client = Client()
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["ready"] is False
    assert body["shards"][dead_shard]["ok"] is False and body["shards"][dead_shard]["error"]
    assert body["shards"]["shard_1"]["ok"] is True


def test_readyz_reports_a_broker_that_is_down(shards, settings):
    from core.celery import app

    app.conf.broker_url = "redis://127.0.0.1:1/0"
    try:
        body = Client().get("/readyz").json()
    finally:
        app.conf.broker_url = settings.CELERY_BROKER_URL
    assert body["ready"] is False and body["broker"]["ok"] is False


def test_health_probes_are_not_request_logged(shards, caplog):
    with caplog.at_level("INFO", logger="fleet.requests"):
        Client().get("/healthz")
        Client().get("/readyz")
    logged = [r.getMessage().split()[1] for r in caplog.records if r.name == "fleet.requests"]
    assert logged == ["/readyz"]
