"""The pod group builder: names, gang keys, GPU, gate, affinity, env, volumes, owner."""

from __future__ import annotations

from tests.unit.operator.builders import active_status, job

from eat_operator import podgroup, snapshot, spec as spec_mod

MODELS = spec_mod.known_models(())


def build(settings, annotations=None, **spec):  # type: ignore[no-untyped-def]
    j = snapshot.job_view(job("castle", annotations=annotations, status=active_status("Planned", ["a", "a", "b"]),
                              **spec))
    sp = spec_mod.parse(j.body, MODELS)
    assert j.plan is not None
    return j, podgroup.pods(j, sp, j.plan, 1, settings)


def test_k_pods_named_by_rank_with_gang_annotations(settings) -> None:  # type: ignore[no-untyped-def]
    _, pods = build(settings)
    assert [p["metadata"]["name"] for p in pods] == ["castle-0", "castle-1", "castle-2"]
    for rank, p in enumerate(pods):
        meta, spec = p["metadata"], p["spec"]
        assert meta["labels"]["eat.aigc.io/pod-group"] == "castle"
        assert meta["labels"]["eat.aigc.io/rank"] == str(rank)
        assert meta["labels"]["eat.aigc.io/attempt"] == "1"
        assert meta["annotations"]["eat.aigc.io/group-size"] == "3"
        assert meta["annotations"]["eat.aigc.io/planned-node"] == ["a", "a", "b"][rank]
        assert meta["annotations"]["eat.aigc.io/group-nodes"] == "a,a,b"
        assert meta["annotations"]["eat.aigc.io/sim-duration-seconds"] == "5.0"  # 10 s predicted x 0.5
        assert meta["ownerReferences"][0]["uid"] == "uid-castle" and meta["ownerReferences"][0]["controller"]
        assert spec["schedulerName"] == "eat-scheduler" and spec["restartPolicy"] == "Never"
        assert spec["schedulingGates"] == [{"name": "eat.aigc.io/gang"}]
        assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert spec["containers"][0]["terminationMessagePolicy"] == "FallbackToLogsOnError"
        pref = spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
        assert pref["preference"]["matchFields"][0]["values"] == [["a", "a", "b"][rank]]
        assert spec["nodeSelector"] == {"eat.aigc.io/fake-node": "true"}
        assert spec["hostname"] == f"castle-{rank}" and spec["subdomain"] == "castle"
        env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
        assert env["RANK"] == str(rank) and env["WORLD_SIZE"] == "3" and env["MASTER_PORT"] == "29500"
        assert env["MASTER_ADDR"] == "castle-0.castle.ns.svc"
        # A directory on the output volume, as eat-infer reads it (it writes image.png there).
        assert env["EAT_INFER_STEPS"] == "20" and env["EAT_INFER_OUTPUT"] == "/output/ns/castle"
        assert {"name": "output", "mountPath": "/output"} in spec["containers"][0]["volumeMounts"]
        assert "securityContext" not in spec and "securityContext" not in spec["containers"][0]
        vols = {v["name"]: v for v in spec["volumes"]}
        assert vols["model-cache"]["hostPath"]["path"] == "/var/lib/eat/models" and "emptyDir" in vols["output"]


def test_each_attempt_meets_on_its_own_port(settings) -> None:  # type: ignore[no-untyped-def]
    # Pod names repeat across attempts: a rank left running from attempt 1 resolves the same
    # rank-0 name, so it must not find attempt 2's TCPStore on its port.
    j, first = build(settings)
    sp = spec_mod.parse(j.body, MODELS)
    assert j.plan is not None
    second = podgroup.pods(j, sp, j.plan, 2, settings)
    port = {a: [{e["name"]: e["value"] for e in p["spec"]["containers"][0]["env"]}["MASTER_PORT"] for p in pods]
            for a, pods in ((1, first), (2, second))}
    assert port == {1: ["29500"] * 3, 2: ["29501"] * 3}
    assert second[0]["spec"]["containers"][0]["ports"] == [{"name": "rendezvous", "containerPort": 29501}]
    later = podgroup.pods(j, sp, j.plan, 1 + podgroup.RENDEZVOUS_PORTS, settings)
    assert later[0]["spec"]["containers"][0]["ports"][0]["containerPort"] == 29500  # ports cycle


def test_builder_is_deterministic_and_does_not_share_settings(settings) -> None:  # type: ignore[no-untyped-def]
    _, a = build(settings)
    _, b = build(settings)
    assert a == b
    a[0]["spec"]["containers"][0]["resources"]["limits"]["x"] = "1"
    assert "limits" not in settings.resources


def test_pod_template_settings(settings) -> None:  # type: ignore[no-untyped-def]
    s = settings.model_copy(update={"image": "registry.local/eat:1", "model_cache_host_path": None,
                                    "output_host_path": "/data/out", "args": ["--serve"],
                                    "extra_volumes": [{"name": "x", "emptyDir": {}}]})
    _, pods = build(s, outputLocation="s3://eat-images/k.png", seed=7)
    c = pods[0]["spec"]["containers"][0]
    assert c["image"] == "registry.local/eat:1" and c["args"] == ["--serve"]
    vols = {v["name"]: v for v in pods[0]["spec"]["volumes"]}
    assert "emptyDir" in vols["model-cache"] and vols["output"]["hostPath"]["path"] == "/data/out" and "x" in vols
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["EAT_INFER_OUTPUT"] == "/output/ns/castle" and env["EAT_INFER_SEED"] == "7"
    assert env["EAT_INFER_OUTPUT_URI"] == "s3://eat-images/k.png"  # rank 0 uploads the image there
    _, plain = build(settings)
    assert "EAT_INFER_OUTPUT_URI" not in {e["name"] for e in plain[0]["spec"]["containers"][0]["env"]}


def test_output_directory_and_the_location_status_reports(settings) -> None:  # type: ignore[no-untyped-def]
    j, _ = build(settings)
    sp = spec_mod.parse(j.body, MODELS)
    assert podgroup.output_dir(j, settings) == "/output/ns/castle"
    assert podgroup.output_location(j, sp, settings) == "file:///output/ns/castle/image.png"
    j, _ = build(settings, outputLocation="s3://eat-images/k.png")
    assert podgroup.output_location(j, spec_mod.parse(j.body, MODELS), settings) == "s3://eat-images/k.png"


def test_extra_env_and_security_contexts(settings) -> None:  # type: ignore[no-untyped-def]
    s = settings.model_copy(update={
        "extra_env": [{"name": "EAT_INFER_STORE", "value": "file:///mnt/store"},
                      {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
        "security_context": {"runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
        "pod_security_context": {"runAsUser": 1000, "fsGroup": 1000}})
    _, pods = build(s)
    for p in pods:
        c = p["spec"]["containers"][0]
        names = [e["name"] for e in c["env"]]
        assert names[-2:] == ["EAT_INFER_STORE", "HF_TOKEN"] and len(names) == len(set(names))
        assert c["env"][-1]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
        assert c["securityContext"] == {"runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
        assert p["spec"]["securityContext"] == {"runAsUser": 1000, "fsGroup": 1000}
    pods[0]["spec"]["containers"][0]["securityContext"]["capabilities"]["drop"].append("x")
    assert s.security_context == {"runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}  # copies, not shared


def test_every_variable_the_builder_sets_is_protected_from_extra_env(settings) -> None:  # type: ignore[no-untyped-def]
    _, pods = build(settings, negativePrompt="blur", guidanceScale=5.0, seed=1, outputLocation="s3://bkt/k.png")
    from eat_operator import settings as settings_mod

    assert {e["name"] for e in pods[0]["spec"]["containers"][0]["env"]} == settings_mod.JOB_ENV


def test_guidance_is_the_jobs_else_none_for_a_model_planned_without_it(settings) -> None:  # type: ignore[no-untyped-def]
    def guidance(**spec: object) -> str | None:
        _, pods = build(settings, **spec)
        env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
        return env.get("EAT_INFER_GUIDANCE_SCALE")

    assert guidance(model="sd15") is None  # the runner's default (7.5)
    assert guidance(model="sdxl", guidanceScale=5.0) == "5.0"
    # SDXL-Turbo is simulated and planned at one UNet pass per step: without guidance's second one.
    assert guidance(model="sdxl-turbo", width=512, height=512, stepsMin=1, stepsMax=4) == "0.0"
    assert guidance(model="sdxl-turbo", width=512, height=512, stepsMin=1, stepsMax=4, guidanceScale=1.0) == "1.0"


def test_sim_fail_annotation_fails_rank_zero_of_the_first_attempts(settings) -> None:  # type: ignore[no-untyped-def]
    j, pods = build(settings, annotations={"eat.aigc.io/sim-fail": "1"})
    assert pods[0]["metadata"]["annotations"]["eat.aigc.io/sim-fail"] == "true"
    assert "eat.aigc.io/sim-fail" not in pods[1]["metadata"]["annotations"]
    assert podgroup.sim_fails(j, 1) and not podgroup.sim_fails(j, 2)


def test_headless_service(settings) -> None:  # type: ignore[no-untyped-def]
    j, _ = build(settings)
    svc = podgroup.service(j, settings)
    assert svc["metadata"]["name"] == "castle" and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == {"eat.aigc.io/pod-group": "castle"} and svc["spec"]["publishNotReadyAddresses"]


def test_one_pod_group_needs_no_gate(settings) -> None:  # type: ignore[no-untyped-def]
    j = snapshot.job_view(job("solo", status=active_status("Planned", ["a"])))
    assert j.plan is not None
    (p,) = podgroup.pods(j, spec_mod.parse(j.body, MODELS), j.plan, 1, settings)
    assert p["spec"]["schedulingGates"] == [] and p["metadata"]["annotations"]["eat.aigc.io/group-size"] == "1"


def kubelet_expand(value: str, defined: dict[str, str]) -> str:
    """What a container sees of an env ``value`` (Kubernetes' third_party/forked/golang/expansion):
    ``$(VAR)`` of a variable defined earlier is replaced, ``$$`` becomes ``$``."""
    out, i = [], 0
    while i < len(value):
        nxt = value[i + 1] if value[i] == "$" and i + 1 < len(value) else ""
        close = value.find(")", i + 2) if nxt == "(" else -1
        if nxt == "$":
            out.append("$")
            i += 2
        elif close >= 0:
            name = value[i + 2:close]
            out.append(defined.get(name, f"$({name})"))
            i = close + 1
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def test_the_container_sees_the_users_text_exactly(settings) -> None:  # type: ignore[no-untyped-def]
    """Unescaped, a prompt with `$(RANK)` differed per rank and `$$` lost a `$`."""
    prompt, negative = "rank $(RANK) costs $$5 or $5 $(EAT_INFER_MODEL)", "no $(WORLD_SIZE)$"
    _, pods = build(settings, prompt=prompt, negativePrompt=negative, outputLocation="s3://images/$(RANK)$$.png")
    for p in pods:
        defined: dict[str, str] = {}
        for e in p["spec"]["containers"][0]["env"]:
            defined[e["name"]] = kubelet_expand(e["value"], defined)
        assert defined["EAT_INFER_PROMPT"] == prompt and defined["EAT_INFER_NEGATIVE_PROMPT"] == negative
        assert defined["EAT_INFER_OUTPUT_URI"] == "s3://images/$(RANK)$$.png"
