"""POST /v1/plan over HTTP (in-process), health endpoints and bad input."""

import json
import time

import pytest

from .conftest import make_job, make_node


def plan(client, jobs, nodes, **extra):  # type: ignore[no-untyped-def]
    r = client.post("/v1/plan", json={"jobs": jobs, "nodes": nodes, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_dispatches_onto_the_warm_node_and_explains_why(client) -> None:  # type: ignore[no-untyped-def]
    body = plan(client, [make_job(model="sdxl", width=1024, height=1024, steps_min=15, steps_max=40, deadline_s=12)],
                [make_node("cold-a"), make_node("warm-b", resident_models=["sdxl"], cached_models=["sdxl"]), make_node("cold-c")])
    (d,) = body["decisions"]
    assert d["action"] == "dispatch" and d["nodes"] == ["warm-b"] and d["cache"] == "resident"
    assert 15 <= d["steps"] <= 40 and d["predicted_latency_s"] > 0 and 0 < d["predicted_quality"] < 1
    assert any("warm-b: model warm in GPU memory" in line for line in d["explanation"])
    assert body["policy"] == {"name": "edf-cache-queue-fit", "version": "heuristic", "fallback": True,
                              "fallback_reason": "no checkpoint configured"}
    assert body["metrics"]["used"] is False


def test_gang_of_patches_gets_one_node_per_rank(client) -> None:  # type: ignore[no-untyped-def]
    body = plan(client, [make_job(model="sdxl", width=1280, height=1280, steps_min=30, steps_max=40, deadline_s=9.0, age_s=0)],
                [make_node("big", gpus=8, product="NVIDIA-H100-80GB-HBM3", resident_models=["sdxl"])])
    (d,) = body["decisions"]
    assert d["action"] == "dispatch" and d["patches"] > 1 and d["nodes"] == ["big"] * d["patches"]


def test_each_gpu_is_used_once_and_the_rest_wait(client) -> None:  # type: ignore[no-untyped-def]
    jobs = [make_job(id=f"ns/j{i}", age_s=10 - i, max_patches=1) for i in range(5)]
    warm = {"resident_models": ["sd15"]}  # all warm: no reason to hold a job for a warmer GPU
    body = plan(client, jobs, [make_node("a", gpus=2, **warm), make_node("b", gpus=1, **warm)])
    dispatched = [d for d in body["decisions"] if d["action"] == "dispatch"]
    used = [n for d in dispatched for n in d["nodes"]]
    assert len(dispatched) == 3 and sorted(used) == ["a", "a", "b"]
    assert [d["job"] for d in dispatched] == ["ns/j0", "ns/j1", "ns/j2"]  # oldest (earliest deadline) first
    assert all(d["reason"] for d in body["decisions"] if d["action"] == "wait")


def test_busy_and_not_ready_nodes_are_not_used(client) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    body = plan(client, [make_job(now=now)], [make_node("busy", free=0, gpu_free_at=[now + 5]),
                                               make_node("down", ready=False), make_node("ok", product="NVIDIA-L4")], now=now)
    assert body["decisions"][0]["nodes"] == ["ok"]


def test_a_gpu_past_its_expected_release_is_still_busy(client) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    body = plan(client, [make_job(now=now)], [make_node("overdue", free=0, gpu_free_at=[now - 5])], now=now)
    assert body["decisions"][0]["action"] == "wait"


def test_a_job_needing_more_gpus_than_the_cluster_has_says_how_many(client) -> None:  # type: ignore[no-untyped-def]
    jobs = [make_job(id="ns/four-patches", patches=4, age_s=5), make_job(id="ns/small", age_s=1)]
    body = plan(client, jobs, [make_node(n) for n in ("a", "b", "c")])
    by_job = {d["job"]: d for d in body["decisions"]}
    assert by_job["ns/small"]["action"] == "dispatch"
    assert by_job["ns/four-patches"]["action"] == "wait"
    assert by_job["ns/four-patches"]["reason"] == "needs 4 GPUs, 3 usable"


def test_a_job_no_gpu_has_memory_for_says_so(client) -> None:  # type: ignore[no-untyped-def]
    sdxl = make_job(model="sdxl", width=1024, height=1024, steps_min=15, steps_max=40)
    body = plan(client, [sdxl], [make_node("small", gpus=2, gpu_mem_gb=8), make_node("down", ready=False)])
    assert body["decisions"][0]["reason"] == "no GPU can run this model now (memory or nodes not ready)"


def test_empty_node_list_holds_every_job(client) -> None:  # type: ignore[no-untyped-def]
    body = plan(client, [make_job()], [])
    assert body["decisions"][0]["action"] == "wait" and "no idle GPU" in body["decisions"][0]["reason"]
    assert plan(client, [], [make_node("a")])["decisions"] == []


def test_jobs_beyond_the_window_wait_and_are_not_lost(client_with) -> None:  # type: ignore[no-untyped-def]
    client = client_with(window=2)
    jobs = [make_job(id=f"ns/j{i}", age_s=10 - i) for i in range(5)]
    body = plan(client, jobs, [make_node(f"n{i}") for i in range(8)])
    assert sorted(d["job"] for d in body["decisions"]) == sorted(j["id"] for j in jobs)
    beyond = [d for d in body["decisions"] if d["reason"] and "window" in d["reason"]]
    assert len(beyond) == 3


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda j, n: j.update(model="flux"), "unknown model 'flux'"),
    (lambda j, n: j.update(steps_min=30, steps_max=10), "steps_min 30 > steps_max 10"),
    (lambda j, n: j.update(patches=3), "patches must be one of"),
    (lambda j, n: j.update(patches=8, max_patches=2), "patches 8 > max_patches 2"),
    (lambda j, n: j.update(patches=8, height=768), "height 768 of sd15 does not split into 8 row patches"),
    (lambda j, n: n.append(dict(n[0])), "node names must be unique"),
], ids=["unknown-model", "steps-range", "patches", "patches-above-max", "patches-split-rows", "duplicate-node"])
def test_unplannable_requests_get_422_with_the_reason(client, mutate, message) -> None:  # type: ignore[no-untyped-def]
    job, nodes = make_job(), [make_node("a")]
    mutate(job, nodes)
    r = client.post("/v1/plan", json={"jobs": [job], "nodes": nodes})
    assert r.status_code == 422 and message in r.json()["detail"]


@pytest.mark.parametrize("bad", [
    {"jobs": [{"id": "x"}], "nodes": []},
    {"jobs": [], "nodes": [], "surprise": 1},
    {"jobs": [dict(make_job(), width=7)], "nodes": []},
    {"jobs": [dict(make_job(), prompt="x" * 100_000)], "nodes": []},
    {"jobs": "many", "nodes": []},
    {"jobs": [make_job()], "nodes": [make_node("a")], "now": float("inf")},
    {"jobs": [make_job()], "nodes": [make_node("a")], "now": 1e308},
    {"jobs": [make_job(deadline_s=1e307)], "nodes": [make_node("a")]},
    {"jobs": [make_job(arrival_time=float("nan"))], "nodes": [make_node("a")]},
    {"jobs": [make_job()], "nodes": [make_node("a", gpus=2, free=1, gpu_free_at=[float("nan")])]},
    {"jobs": [make_job()], "nodes": [make_node("a", gpu_mem_gb=1e39)]},
    {"jobs": [make_job()], "nodes": [make_node("a", disk_gb=1e39)]},
], ids=["missing-fields", "unknown-field", "width-7", "unknown-big-field", "wrong-type", "now-infinite",
        "now-huge", "deadline-huge", "arrival-nan", "free-at-nan", "gpu-memory-huge", "disk-huge"])
def test_malformed_requests_get_422(client, bad) -> None:  # type: ignore[no-untyped-def]
    """Non-finite or absurd times included: an infinite ``now`` used to spin a worker forever."""
    r = client.post("/v1/plan", content=json.dumps(bad), headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_not_json_gets_422(client) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/v1/plan", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_health_readiness_and_metrics(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["reason"] == "no checkpoint configured"
    plan(client, [make_job()], [make_node("a")])
    text = client.get("/metrics").text
    assert 'eat_policy_decisions_total{action="dispatch",policy="edf-cache-queue-fit"}' in text
    assert 'eat_policy_fallbacks_total{reason="no_checkpoint"}' in text
    assert "eat_policy_plan_request_duration_seconds_bucket" in text
    assert client.get("/openapi.json").json()["paths"]["/v1/plan"]


def test_corrupt_or_missing_checkpoint_falls_back_and_says_why(client_with, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "eat.pt"
    bad.write_bytes(b"not a checkpoint")
    for path in (bad, tmp_path / "missing.pt"):
        client = client_with(checkpoint=path)
        body = plan(client, [make_job()], [make_node("a")])
        assert body["policy"]["fallback"] is True
        assert str(path) in body["policy"]["fallback_reason"]
        assert body["decisions"][0]["action"] == "dispatch"
        assert client.get("/readyz").status_code == 503


def test_prometheus_down_plans_from_the_request_alone(client_with) -> None:  # type: ignore[no-untyped-def]
    client = client_with(prometheus_url="http://127.0.0.1:9", prometheus_timeout_s=0.5)
    body = plan(client, [make_job()], [make_node("a")])
    assert body["decisions"][0]["action"] == "dispatch"
    assert body["metrics"]["used"] is False and "ConnectError" in body["metrics"]["error"]


@pytest.mark.parametrize("answer", [
    [], {"status": "success"}, {"status": "success", "data": {"result": [{"metric": {}, "value": [1, "x"]}]}},
], ids=["a-list", "no-data", "not-a-number"])
def test_a_malformed_prometheus_answer_plans_from_the_request_alone(client_with, answer) -> None:  # type: ignore[no-untyped-def]
    import httpx

    client = client_with(prometheus_url="http://prometheus:9090")
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    client.app.state.planner.metrics_client.http = httpx.Client(transport=transport)
    body = plan(client, [make_job()], [make_node("a")])
    assert body["decisions"][0]["action"] == "dispatch"
    assert body["metrics"]["used"] is False and "malformed answer" in body["metrics"]["error"]


def test_busy_guess_must_be_positive() -> None:
    """0 would give busy GPUs of unknown release a release time of now: idle, and planned twice."""
    from eat_policy.service.settings import Settings

    with pytest.raises(ValueError, match="busy_guess_s"):
        Settings(busy_guess_s=0)


def test_the_policy_chooses_only_patch_counts_the_image_splits_into(client) -> None:  # type: ignore[no-untyped-def]
    """768 rows of sd15 do not split into 8 whole-row patches: at most 4, even on 8 idle GPUs."""
    body = plan(client, [make_job(height=768, width=768, deadline_s=3.0)], [make_node("a", gpus=8)])
    assert body["decisions"][0]["action"] == "dispatch" and body["decisions"][0]["patches"] <= 4


@pytest.mark.parametrize("gpu_keeps_model", [False, True])
def test_a_plan_counts_on_a_model_staying_on_a_gpu_only_where_gpus_keep_it(client_with, gpu_keeps_model: bool) -> None:  # type: ignore[no-untyped-def]
    """The operator's pods take the model out of GPU memory when the job ends: the A100 that
    runs the first sd15 job is not warm for the second, so that one takes the idle L4 now. A warm
    pool (``gpu_keeps_model``) keeps it there: the second waits for the warm A100, and the L4
    goes to the sdxl job."""
    client = client_with(gpu_keeps_model=gpu_keeps_model)
    sdxl = {"model": "sdxl", "width": 1024, "height": 1024, "steps_min": 15, "steps_max": 40}
    jobs = [make_job(id="ns/sd15-first", age_s=9, deadline_s=18.9, max_patches=1),
            make_job(id="ns/sdxl", age_s=8, deadline_s=33.5, max_patches=1, **sdxl),
            make_job(id="ns/sd15-second", age_s=7, deadline_s=24.0, max_patches=1)]
    body = plan(client, jobs, [make_node("a100"), make_node("l4", product="NVIDIA-L4")])
    placed = {d["job"]: d["nodes"] for d in body["decisions"] if d["action"] == "dispatch"}
    if gpu_keeps_model:
        assert placed == {"ns/sd15-first": ["a100"], "ns/sdxl": ["l4"]}
    else:
        assert placed == {"ns/sd15-first": ["a100"], "ns/sd15-second": ["l4"]}


def test_a_second_job_of_a_model_being_fetched_waits_for_the_download() -> None:
    """One plan, one node, two jobs of a model no node has: the first fetches it from the store;
    the second, on the node's other GPU, loads it from disk once that download is complete (the
    node cache downloads once), as the simulator prices it, and its predicted latency says so."""
    from eat_policy import api
    from eat_policy.service import planning, requests
    from eat_policy.snapshot import Decision

    class OneGpuEach:  # scripted: job after job, each on the next GPU of the node
        def reset(self, seed: int) -> None:
            self.gpu = 0

        def decide(self, snap):  # type: ignore[no-untyped-def]
            self.gpu += 1
            return Decision(0, (self.gpu - 1,), 20)

    now = time.time()
    req = api.PlanRequest(jobs=[make_job(id=f"ns/j{i}", age_s=10 - i, now=now) for i in range(2)],
                          nodes=[make_node("a", gpus=2)], now=now)
    planned = requests.build(req, now, 32, {}, 30.0, 0.9)
    first, second = planning.plan_snapshot(planned.snapshot, OneGpuEach(), strict=True).dispatches
    download_s, t0 = planning._physics.download_s[0], planned.snapshot.now  # sd15: 2.1 GB at 0.5 GB/s
    assert first.placement.cache == "store" and first.placement.start_s == t0
    assert second.placement.cache == "disk" and second.placement.start_s == pytest.approx(t0 + download_s)
    decisions = planning.to_decisions(planned, planning.plan_snapshot(planned.snapshot, OneGpuEach(), strict=True))
    assert decisions[1].predicted_latency_s == pytest.approx(second.placement.finish_s(20) - t0, abs=1e-3)
    assert decisions[1].predicted_latency_s > download_s + planning._physics.load_s[0]
