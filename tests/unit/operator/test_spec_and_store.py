"""Reading the spec (unknown model, steps ranges) and the watch cache's ordering rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tests.unit.operator.builders import T0, job

from eat_policy import api

from eat_operator import spec as spec_mod
from eat_operator.store import Store

MODELS = spec_mod.known_models(())
REPO = Path(__file__).resolve().parents[3]


def test_known_models_come_from_the_policy_catalog() -> None:
    assert set(MODELS) == {"sd15", "sdxl", "sdxl-turbo"}
    assert spec_mod.known_models(("sdxl", "sd15")) == {"sdxl": MODELS["sdxl"], "sd15": MODELS["sd15"]}


def test_unknown_model_is_a_clear_invalid_spec() -> None:
    with pytest.raises(spec_mod.InvalidSpec) as e:
        spec_mod.parse(job(model="dalle-9"), MODELS)
    assert e.value.reason == "UnknownModel" and "'dalle-9' is not in the catalog" in str(e.value)


@pytest.mark.parametrize("fields,expected", [
    pytest.param({"steps": 12}, (12, 12), id="fixed"),
    pytest.param({"stepsMin": 5, "stepsMax": 9}, (5, 9), id="range"),
    pytest.param({}, MODELS["sd15"], id="model-default"),
    pytest.param({"stepsMax": 3}, (3, 3), id="max-below-model-min"),
])
def test_steps_ranges(fields: dict[str, int], expected: tuple[int, int]) -> None:
    sp = spec_mod.parse(job(**fields), MODELS)
    req = spec_mod.job_request("ns", "j", sp, T0, MODELS)
    assert (req.steps_min, req.steps_max) == expected and req.id == "ns/j" and req.arrival_time == T0


def test_bad_specs_the_schema_would_also_refuse() -> None:
    with pytest.raises(spec_mod.InvalidSpec, match="spec.width"):
        spec_mod.parse(job(width=7), MODELS)
    with pytest.raises(spec_mod.InvalidSpec, match="not both"):
        spec_mod.parse(job(steps=3, stepsMin=2), MODELS)
    with pytest.raises(spec_mod.InvalidSpec, match="patches"):
        spec_mod.parse(job(patches=3), MODELS)
    with pytest.raises(spec_mod.InvalidSpec, match="spec.patches 8 exceeds spec.maxPatches 2"):
        spec_mod.parse(job(patches=8, maxPatches=2), MODELS)
    with pytest.raises(spec_mod.InvalidSpec, match="spec.height 768 does not split into 8 row patches for sd15"):
        spec_mod.parse(job(patches=8, height=768), MODELS)
    with pytest.raises(spec_mod.InvalidSpec, match="sdxl-turbo is distilled to run without classifier-free guidance"):
        spec_mod.parse(job(model="sdxl-turbo", guidanceScale=7.5), MODELS)
    assert spec_mod.parse(job(model="sdxl-turbo", guidanceScale=1.0), MODELS).guidance_scale == 1.0
    assert spec_mod.parse(job(model="sdxl", guidanceScale=7.5), MODELS).guidance_scale == 7.5
    with pytest.raises(spec_mod.InvalidSpec, match="spec.deadlineSeconds"):
        spec_mod.parse(job(deadlineSeconds=1e300), MODELS)
    for where in ("file:///tmp/x.png", "s3://no-key", "s3://Upper/k.png", "/output/x.png"):
        with pytest.raises(spec_mod.InvalidSpec, match="outputLocation"):
            spec_mod.parse(job(outputLocation=where), MODELS)
    assert spec_mod.parse(job(outputLocation="s3://eat-images/a/b.png"), MODELS).output_location == \
        "s3://eat-images/a/b.png"


def test_the_crd_and_the_operator_accept_the_same_output_locations() -> None:
    crd = yaml.safe_load((REPO / "charts/eat/crds/aigcjobs.eat.aigc.io.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec["outputLocation"]["pattern"] == api.OUTPUT_LOCATION_PATTERN


def test_the_crds_guidance_rule_names_the_catalogs_models_without_guidance() -> None:
    from eat_policy.sim import catalog

    crd = yaml.safe_load((REPO / "charts/eat/crds/aigcjobs.eat.aigc.io.yaml").read_text())
    rules = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"]
    (rule,) = [r["rule"] for r in rules if "guidanceScale" in r["rule"]]
    without = [m.name for m in catalog.MODELS if not m.cfg]
    assert without and f"self.model in {without!r}" in rule


def obj(name: str, rv: str, uid: str = "u") -> dict:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": rv, "uid": uid}}


def test_store_ignores_older_versions_and_late_echoes_of_deleted_objects() -> None:
    s = Store()
    assert s.apply("ADDED", obj("a", "5"))
    assert not s.apply("MODIFIED", obj("a", "4"))  # our own write (rv 5) is newer than this echo
    assert s.apply("MODIFIED", obj("a", "6"))
    assert s.apply("DELETED", obj("a", "7"))
    assert not s.apply(None, obj("a", "6"))  # a stale list item cannot resurrect it
    assert s.apply("ADDED", obj("a", "9", uid="u2"))  # recreated with the same name
    assert s.get(("ns", "a"))["metadata"]["uid"] == "u2"


def test_store_relist_drops_what_the_list_proves_deleted() -> None:
    s = Store(keep=lambda o: o["metadata"]["name"] != "skip")
    s.apply(None, obj("old", "3"))
    s.apply(None, obj("new", "20"))
    s.apply(None, obj("skip", "2"))
    s.replace([obj("kept", "8")], "10")
    assert {k[1] for k in [("ns", o["metadata"]["name"]) for o in s.values()]} == {"kept", "new"}


def test_parsed_specs_are_remembered_per_generation() -> None:
    parsed = spec_mod.Parsed(MODELS)
    body = job(steps=12)
    assert parsed(body) is parsed(job(steps=12))  # same uid and generation: not read again
    body["metadata"]["generation"] = 2
    body["spec"]["steps"] = 30
    assert parsed(body).steps == 30
    bad = job("bad", model="dalle-9")
    for _ in range(2):
        with pytest.raises(spec_mod.InvalidSpec, match="dalle-9"):
            parsed(bad)
