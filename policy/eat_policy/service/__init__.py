"""The planning service: ``POST /v1/plan`` answers the operator with patches, nodes and steps.

It turns a request (queued jobs + candidate nodes) into the same ``Snapshot`` the simulator
produces, enriched with live Prometheus metrics, and runs the learned policy, or the best
heuristic when the policy cannot answer.
"""
