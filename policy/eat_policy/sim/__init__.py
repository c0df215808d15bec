"""Event-driven simulator of GPU clusters serving Stable Diffusion jobs.

Two scenarios share one engine: ``paper`` reproduces the EAT prototype's model exactly
(``shared/paper-notes.md``) and ``edge`` is the Kubernetes-shaped cluster the operator sees
(heterogeneous multi-GPU nodes, a model catalog, per-node model caches).
"""
