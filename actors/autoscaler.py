"""What the cluster's autoscaler says about raymesh's requests (Ray's autoscaler v2).

kuberay/raycluster.yaml asks KubeRay for the v2 autoscaler (``autoscalerOptions.version: v2``;
Ray 2.60's ``ray start`` also turns it on under KubeRay when the pod names its instance and node
type), as ``ray.cluster_utils.AutoscalingCluster(autoscaler_v2=True)`` and
tests/integration/test_autoscaling.py do. The v2 autoscaler records its view in the GCS: the
requests it cannot place on the nodes it has and adds (``infeasible_resource_requests``), the
nodes it is launching, and per node what keeps it busy. The driver reads it to tell a request that
waits for a node from one that never gets one, instead of waiting blindly.

Everything here is best effort: a cluster without v2 (a local Ray, the v1 autoscaler) reads as
``v2=False``, a driver that cannot ask the GCS (Ray Client) as ``None``; either way the caller
falls back to ``placement_timeout``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ray

RPC_TIMEOUT_S = 10


@dataclass
class AutoscalerView:
    """One reading of the v2 autoscaler's state."""

    v2: bool = False  # the cluster runs Ray's autoscaler v2 (the GCS says so; it may not have reported yet)
    version: int = 0  # the autoscaler's state version: 0 until it has reported
    infeasible: list[dict[str, float]] = field(default_factory=list)  # requests no node type fits
    launching: int = 0  # instances requested or starting
    # per node: type, id, status (RUNNING, IDLE, DRAINING, DEAD), what keeps it busy, resources
    nodes: list[dict] = field(default_factory=list)


def read() -> AutoscalerView | None:
    """The autoscaler's state as the GCS holds it, or None where it cannot be read."""
    try:
        from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply, NodeStatus

        client = ray._private.worker.global_worker.gcs_client
        reply = GetClusterStatusReply()
        reply.ParseFromString(client.get_cluster_status(timeout_s=RPC_TIMEOUT_S))
        v2 = client.internal_kv_get(ray._raylet.GCS_AUTOSCALER_V2_ENABLED_KEY.encode(),
                                    namespace=ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE.encode()) == b"1"
    except Exception:  # Ray Client mode, a GCS that does not answer, an older Ray: no view
        return None
    state, cluster = reply.autoscaling_state, reply.cluster_resource_state
    nodes = [{"type": n.ray_node_type_name, "node_id": n.node_id.hex(), "status": NodeStatus.Name(n.status),
              "activity": list(n.node_activity), "total": dict(n.total_resources),
              "available": dict(n.available_resources)} for n in cluster.node_states]
    return AutoscalerView(v2=v2, version=int(state.autoscaler_state_version),
                          infeasible=[dict(r.resources_bundle) for r in state.infeasible_resource_requests],
                          launching=len(state.pending_instance_requests) + len(state.pending_instances),
                          nodes=nodes)
