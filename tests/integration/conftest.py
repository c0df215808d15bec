"""Fixtures for tests that need a real Kubernetes control plane.

By default the session brings up the local control plane of hack/cluster
(etcd, kube-apiserver, kube-controller-manager, kube-scheduler + eat-scheduler,
kwok) and tears it down at the end; binaries are built with
hack/cluster/build.sh when missing (slow when cold: run it before pytest).
A cluster that is already up (``localcluster.py up``) is reused and left running.

With ``EAT_USE_KUBECONFIG=1`` and ``KUBECONFIG`` set, the tests run against that
cluster instead (kind: see hack/kind/README.md; it must run kwok with our Stages
and the eat-scheduler, which ``localcluster.py attach`` does).

Helpers (clusterkit.py) use kubectl: the one built by build.sh, else the one on PATH.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

import pytest

from clusterkit import Cluster, lc, wait_until


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if os.environ.get("EAT_USE_KUBECONFIG") == "1" and os.environ.get("KUBECONFIG"):
        c = Cluster(os.environ["KUBECONFIG"], local=False)
        r = c.kubectl("get", "--raw", "/readyz", check=False)
        if r.returncode != 0:
            pytest.fail(f"EAT_USE_KUBECONFIG=1 but {c.kubeconfig} is not reachable: {r.stderr.strip()}")
        yield c
        return
    was_up = lc.is_up()
    kubeconfig = lc.up(build=True)
    yield Cluster(kubeconfig, local=True)
    if not was_up and os.environ.get("EAT_KEEP_CLUSTER") != "1":
        lc.down()


@pytest.fixture(scope="session")
def gpu_nodes(cluster: Cluster) -> Iterator[list[str]]:
    """One fake GPU node per pool of hack/cluster/nodes.yaml, deleted at the end of the session."""
    _, pools = lc.load_node_pools()
    names = cluster.add_nodes(len(pools))
    yield names
    cluster.delete_nodes(names)


def _ns_name(request: pytest.FixtureRequest) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    return f"t-{base}-{uuid.uuid4().hex[:5]}"


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (with its default service account ready), deleted after the test."""
    name = _ns_name(request)
    cluster.kubectl("create", "namespace", name)
    # The ServiceAccount admission plugin rejects pods until the controller made it.
    wait_until(lambda: cluster.exists("serviceaccount", "default", "-n", name),
               f"service account {name}/default")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")
