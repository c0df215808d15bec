"""eat-operator: AIGCJobs from ``kubectl apply`` to a finished image.

Layers, top to bottom (imports only go down): ``handlers`` (kopf decorators) →
``dispatching`` (the loop, the policy client) → ``status`` / ``podgroup`` (pure decisions
and manifests) → ``snapshot`` / ``spec`` / ``store`` → ``kube`` / ``settings`` / ``metrics``.
The contracts (CRD names, label and annotation keys, the plan schemas) come from
``eat_policy.api``; nothing here imports torch.
"""

__version__ = "0.1.0"
