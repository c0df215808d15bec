"""EAT's inference image: patch-parallel Stable Diffusion, the node-local model cache, the node agent.

Modules, in the order of the flow (DESIGN.md): :mod:`rendezvous` (assemble the gang),
:mod:`cache` (model from the node's disk or the model store), :mod:`patches` (the
patch-aware layer wrappers), :mod:`pipeline` (the patch-parallel denoising loop),
:mod:`running` (one rank of one job, end to end), :mod:`node_agent` (metrics and pre-warm),
:mod:`tiny` (a tiny random SD and SDXL for tests), :mod:`cli` (the ``eat-infer`` and
``eat-node-agent`` commands).
"""

__version__ = "0.1.0"
