"""The AIGCJob spec as the operator reads it, and its translation into a plan request.

The API server already enforces the CRD's OpenAPI schema (charts/eat/crds/); this model
re-reads the same fields with the same bounds so that a spec the schema let through but
the operator cannot run (an unknown model, steps outside a model's range are fine) becomes
a clear ``InvalidSpec`` and a Failed job, never an exception in the dispatcher.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from eat_policy import api
from eat_policy.sim import catalog  # plain data: no numpy at import

class InvalidSpec(ValueError):
    """The spec cannot run; the message is written to status and to a Warning Event."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class JobSpec(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    prompt: str = Field(min_length=1, max_length=2000)
    negative_prompt: str | None = Field(default=None, alias="negativePrompt", max_length=2000)
    model: str = "sd15"
    width: int = Field(default=512, ge=64, le=4096, multiple_of=8)
    height: int = Field(default=512, ge=64, le=4096, multiple_of=8)
    steps: int | None = Field(default=None, ge=1, le=200)
    steps_min: int | None = Field(default=None, alias="stepsMin", ge=1, le=200)
    steps_max: int | None = Field(default=None, alias="stepsMax", ge=1, le=200)
    guidance_scale: float | None = Field(default=None, alias="guidanceScale", ge=0, le=50)
    seed: int | None = Field(default=None, ge=0)
    deadline_seconds: float | None = Field(default=None, alias="deadlineSeconds", gt=0, le=86400)
    """At most a day, as the CRD's schema says."""
    priority: int = 0
    output_location: str | None = Field(default=None, alias="outputLocation", max_length=1024,
                                        pattern=api.OUTPUT_LOCATION_PATTERN)
    patches: int | None = None
    max_patches: int | None = Field(default=None, alias="maxPatches", ge=1, le=8)

    @model_validator(mode="after")
    def _steps(self) -> JobSpec:
        if self.steps is not None and (self.steps_min is not None or self.steps_max is not None):
            raise ValueError("set either steps or stepsMin/stepsMax, not both")
        if self.steps_min is not None and self.steps_max is not None and self.steps_min > self.steps_max:
            raise ValueError(f"stepsMin {self.steps_min} > stepsMax {self.steps_max}")
        return self

    def steps_range(self, model_range: tuple[int, int]) -> tuple[int, int]:
        """Fixed steps, the given bounds, or the model's default range for what is missing."""
        if self.steps is not None:
            return self.steps, self.steps
        lo = self.steps_min if self.steps_min is not None else model_range[0]
        hi = self.steps_max if self.steps_max is not None else max(model_range[1], lo)
        return min(lo, hi), hi


def known_models(configured: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Model name → default steps range: the configured names (``Settings`` keeps them to the
    policy's catalog), else the whole catalog."""
    ranges = {m.name: m.steps_range for m in catalog.MODELS}
    return {n: ranges[n] for n in configured or ranges}


def parse(body: dict[str, Any], models: dict[str, tuple[int, int]]) -> JobSpec:
    """The job's spec, or InvalidSpec with a reason and a message a person understands."""
    try:
        spec = JobSpec.model_validate(body.get("spec") or {})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        raise InvalidSpec("InvalidSpec", f"spec.{where}: {first['msg']}") from None
    if spec.model not in models:
        raise InvalidSpec("UnknownModel", f"model {spec.model!r} is not in the catalog; "
                                          f"known models: {', '.join(sorted(models))}")
    if spec.patches is not None and spec.patches not in (1, 2, 4, 8):
        raise InvalidSpec("InvalidSpec", f"spec.patches must be 1, 2, 4 or 8, got {spec.patches}")
    if spec.patches is not None and spec.max_patches is not None and spec.patches > spec.max_patches:
        raise InvalidSpec("InvalidSpec", f"spec.patches {spec.patches} exceeds spec.maxPatches {spec.max_patches}")
    model = catalog.MODEL_BY_NAME[spec.model]
    if not model.cfg and spec.guidance_scale is not None and spec.guidance_scale > 1:
        # The plan prices one UNet pass per step for it; guidance above 1 would run two.
        raise InvalidSpec("InvalidSpec", f"{spec.model} is distilled to run without classifier-free guidance: "
                                         f"spec.guidanceScale must be at most 1 (default 0), got {spec.guidance_scale:g}")
    if spec.patches is not None and spec.patches > model.max_patches(spec.height):
        unit = model.patch_row_px * spec.patches
        raise InvalidSpec("InvalidSpec", f"spec.height {spec.height} does not split into {spec.patches} row patches "
                                         f"for {spec.model}: it must be a multiple of {unit}")
    return spec


class Parsed:
    """``parse`` remembered per job and spec generation: a dispatcher re-reads every queued
    job's spec for each batch (about 30 µs each with pydantic), and specs rarely change."""

    def __init__(self, models: dict[str, tuple[int, int]]) -> None:
        self.models = models
        self._seen: dict[tuple[str, Any], JobSpec | InvalidSpec] = {}

    def __call__(self, body: dict[str, Any]) -> JobSpec:
        meta = body.get("metadata") or {}
        key = (str(meta.get("uid") or ""), meta.get("generation"))
        out = self._seen.get(key) if key[0] else None
        if out is None:
            try:
                out = parse(body, self.models)
            except InvalidSpec as e:
                out = e
            if key[0]:
                if len(self._seen) > 100_000:  # deleted jobs leave entries behind: start over now and then
                    self._seen.clear()
                self._seen[key] = out
        if isinstance(out, InvalidSpec):
            raise out
        return out


def job_id(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def job_request(namespace: str, name: str, spec: JobSpec, arrival_time: float,
                models: dict[str, tuple[int, int]]) -> api.JobRequest:
    lo, hi = spec.steps_range(models[spec.model])
    return api.JobRequest(
        id=job_id(namespace, name), model=spec.model, width=spec.width, height=spec.height,
        steps_min=lo, steps_max=hi, deadline_s=spec.deadline_seconds, arrival_time=arrival_time,
        patches=spec.patches, max_patches=spec.max_patches, priority=spec.priority,
    )
