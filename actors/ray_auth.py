"""Ray's token authentication as a raymesh user meets it (Ray >= 2.52; on by default for local
clusters from 2.59).

A cluster started with ``RAY_AUTH_MODE=token`` (or by ``ray start`` on a machine that has a token
in ``~/.ray/auth_token``) refuses every client that does not send its token. Ray's own client then
retries for about 30 s (Ray Client) or 20 s (a GCS address) and says only that it could not
connect. Before connecting, raymesh asks the cluster one cheap question over gRPC, as ``ray.init``
would (with this process's token when ``RAY_AUTH_MODE=token``), and turns a refusal into an error
that says which variables to set. A client sends a token only when ``RAY_AUTH_MODE=token`` is set
in its environment, with the token in ``RAY_AUTH_TOKEN``, a file named by ``RAY_AUTH_TOKEN_PATH``,
or ``~/.ray/auth_token`` (Ray's order); ``ray get-auth-token`` on the head node prints it.
"""

from __future__ import annotations

import os

HOW = ("`ray get-auth-token` on the head node prints it; on KubeRay it is the auth_token key of the "
       "cluster's Secret, see README \"Ray token authentication\"")


def token_source() -> str:
    """Where this process's token comes from, in Ray's order of precedence."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}"
    return "~/.ray/auth_token"


def _token_auth_on() -> bool:
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        return bool(is_token_auth_enabled())
    except Exception:  # an older or newer Ray without this module: no opinion
        return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"


def no_token_found(address: str) -> str:
    return (f"RAY_AUTH_MODE=token is set, but no token was found for the Ray cluster at {address} "
            f"(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token): set RAY_AUTH_TOKEN to the cluster's token "
            f"({HOW}) and rerun")


def refused(address: str) -> str:
    """The message for a cluster that answered "unauthenticated"."""
    if _token_auth_on():
        return (f"the Ray cluster at {address} refused this client's token (from {token_source()}): set "
                f"RAY_AUTH_TOKEN to the cluster's token ({HOW}) and rerun")
    return (f"the Ray cluster at {address} requires token authentication and this client sent no token: set "
            f"RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<the cluster's token> in this shell ({HOW}), then rerun")


def refusal(address: str, timeout_s: float = 5.0) -> str | None:
    """Ask the cluster at ``address`` (``ray://host:port`` for Ray Client, else a GCS
    ``host:port``) one question, as ``ray.init`` would. The message to show when it refuses this
    client for want of a (right) token; None when it answers, or fails in another way (``ray.init``
    reports that)."""
    try:
        import grpc
        from ray._private.grpc_utils import init_grpc_channel
        from ray.exceptions import AuthenticationError
    except ImportError:  # pragma: no cover - a Ray without token authentication
        return None
    hostport = address.split("://", 1)[-1].rstrip("/")
    try:
        channel = init_grpc_channel(hostport, options=[], asynchronous=False)
    except AuthenticationError:
        return no_token_found(address)
    except Exception:
        return None
    try:
        if address.startswith("ray://"):
            import ray.core.generated.ray_client_pb2 as client_pb2
            import ray.core.generated.ray_client_pb2_grpc as client_grpc

            client_grpc.RayletDriverStub(channel).ClusterInfo(
                client_pb2.ClusterInfoRequest(type=client_pb2.ClusterInfoType.PING), timeout=timeout_s)
        else:
            import ray.core.generated.gcs_service_pb2 as gcs_pb2
            import ray.core.generated.gcs_service_pb2_grpc as gcs_grpc

            gcs_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(gcs_pb2.GetClusterIdRequest(), timeout=timeout_s)
    except AuthenticationError:
        return no_token_found(address)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            return refused(address)
        return None
    except Exception:
        return None
    finally:
        channel.close()
    return None


def explain(address: str | None, exc: BaseException) -> str | None:
    """After ``ray.init`` failed: the token message, if authentication is why."""
    try:
        from ray.exceptions import AuthenticationError
    except ImportError:  # pragma: no cover
        AuthenticationError = ()  # noqa: N806
    if isinstance(exc, AuthenticationError):
        return no_token_found(address or "auto")
    if not address or address == "local":
        return None
    target = address
    if address == "auto":  # the cluster `ray start` recorded on this machine
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address("auto") or ""
        except Exception:
            return None
        if not target:
            return None
    why = refusal(target)
    return why.replace(target, address) if why and address == "auto" else why
