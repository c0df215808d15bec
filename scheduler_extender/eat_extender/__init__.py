"""eat-extender: the kube-scheduler HTTP extender of EAT (issue 7).

kube-scheduler (profile ``eat-scheduler``) calls it for every pod that requests
``nvidia.com/gpu``. It makes the scheduler honour the policy's placement (a planned pod goes
to its planned node or waits), keeps pod groups all-or-nothing (the gang guard), and for pods
without a plan prefers nodes whose disk cache holds the model and that have free GPUs.

It answers from its own list+watch of nodes and pods (``watching`` → ``cache``), so the
scheduler only sends node names (``nodeCacheCapable``). Decisions are pure functions of a
frozen ``state.ClusterState`` (``filtering``, ``prioritizing``, ``gang``); the HTTP layer
(``app``, ``routes``) only parses the wire format (``wire``), calls them and counts
(``metrics``). It never imports torch or numpy.

Import direction: routes → filtering/prioritizing → gang → state → wire; cache/watching →
state; nothing here imports routes or app.
"""

__version__ = "0.1.0"
