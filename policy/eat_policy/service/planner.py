"""The planner the app serves: the learned policy if its checkpoint loads, else the fallback.

Loading happens once, in the app's lifespan. Every request gets a fresh plan; a learned
policy that fails on a request is replaced by the fallback for that request only. The
policies keep state while they plan a request (and uvicorn runs requests on a thread pool),
so one request plans at a time; Prometheus is read outside that lock.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import threading
import time
from pathlib import Path

from eat_policy import api
from eat_policy.agents import base
from eat_policy.service import planning, prometheus, requests, telemetry
from eat_policy.service.settings import Settings

log = logging.getLogger(__name__)


def load_learned(path: Path, reuse: int = 1, device: str = "cpu", threads: int = 1) -> tuple[base.Policy, str]:
    """The learned policy in a checkpoint, and its version (file name, training steps)."""
    module = importlib.import_module("eat_policy.agents.eat")  # torch is imported only here
    module.torch.set_num_threads(threads)
    actor = module.load_actor(path, device)
    variant = module.nets.config_of(actor)["variant"]
    card = path.with_suffix(".json")
    steps = json.loads(card.read_text()).get("steps") if card.exists() else None
    version = f"{path.name}" + (f" ({steps} steps)" if steps is not None else "")
    return module.LearnedPolicy(variant, actor=actor, name=variant, reuse=reuse), version


@dataclasses.dataclass
class Planner:
    settings: Settings
    fallback: base.Policy
    learned: base.Policy | None = None
    learned_version: str = ""
    load_error: str | None = None
    metrics_client: prometheus.Client | None = None
    _deciding: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Planner":
        planner = cls(settings, base.make(settings.fallback_policy))
        if settings.checkpoint is None:
            planner.load_error = "no checkpoint configured"
        else:
            try:
                planner.learned, planner.learned_version = load_learned(
                    settings.checkpoint, settings.reuse, settings.device, settings.threads)
            except Exception as e:  # any load failure means: serve the fallback, say why
                planner.load_error = f"checkpoint {settings.checkpoint} did not load: {type(e).__name__}: {e}"
                log.error("%s; serving the fallback heuristic", planner.load_error)
        if settings.prometheus_url:
            planner.metrics_client = prometheus.Client(
                settings.prometheus_url, settings.prometheus_timeout_s, settings.metrics_staleness_s,
                settings.dcgm_node_label,
            )
        return planner

    @property
    def ready(self) -> bool:
        return self.learned is not None

    def live_metrics(self) -> prometheus.Fetch:
        if self.metrics_client is None:
            return prometheus.Fetch({}, "no Prometheus configured", [], 0.0)
        fetched = self.metrics_client.fetch()
        telemetry.prometheus_seconds.observe(fetched.duration_s)
        if fetched.error:
            telemetry.prometheus_errors.inc()
        return fetched

    def plan(self, req: api.PlanRequest) -> api.PlanResponse:
        now = req.now if req.now is not None else time.time()
        live = self.live_metrics()
        s = self.settings
        planned = requests.build(req, now, s.window, live.nodes, s.busy_guess_s, s.gpu_saturated_util)
        with self._deciding:
            plan, info = self._decide(planned)
        decisions = planning.to_decisions(planned, plan)
        for d in decisions:
            telemetry.decisions.labels(info.name, d.action).inc()
        used = self.metrics_client is not None and live.error is None
        return api.PlanResponse(
            decisions=decisions, policy=info,
            metrics=api.MetricsSource(used=used, error=live.error, stale_nodes=live.stale_nodes),
        )

    def _decide(self, planned: requests.Planned) -> tuple[planning.Plan, api.PolicyInfo]:
        if self.learned is not None:
            try:
                plan = planning.plan_snapshot(planned.snapshot, self.learned, strict=True,
                                              gpu_keeps_model=self.settings.gpu_keeps_model)
                return plan, api.PolicyInfo(name=self.learned.name, version=self.learned_version)
            except planning.PolicyFailed as e:
                reason, why = ("infeasible" if "infeasible" in str(e) else "inference_error"), str(e)
                log.warning("learned policy failed, falling back: %s", e)
        else:
            reason, why = ("no_checkpoint" if self.settings.checkpoint is None else "load_error"), self.load_error
        telemetry.fallbacks.labels(reason).inc()
        plan = planning.plan_snapshot(planned.snapshot, self.fallback, strict=False,
                                      gpu_keeps_model=self.settings.gpu_keeps_model)
        return plan, api.PolicyInfo(name=self.fallback.name, version="heuristic", fallback=True, fallback_reason=why)
