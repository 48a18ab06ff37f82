"""kuberay/ manifests: valid against KubeRay's CRDs, and consistent with what the driver asks Ray for."""

import functools
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml

from raymesh.cli import build_parser
from raymesh.cli_mesh import config_from_args
from raymesh.config import MeshConfig, load_config
from raymesh.placement import l2_request, layer_resources
from support import SHARED

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "kuberay"
IMAGE_ROOT = "/home/ray/raymesh/"  # WORKDIR of kuberay/Dockerfile
CRDS = SHARED / "kuberay-crds"
PCG_CHUNK = (256, 256, 512)  # PCG's usual layer-2 chunk, graph voxels at mip 0
PCG_MIP_SCALE = (4, 4, 1)  # mip 2 of 8x8x40 nm data


def _load(name: str) -> dict:
    return yaml.safe_load((KUBERAY / name).read_text())


@functools.cache
def _schema(crd_file: str) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((CRDS / crd_file).read_text(), Loader=loader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def _units(quantity: str) -> int:
    """Kubernetes memory quantity -> bytes (the suffixes the manifests use)."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(quantity))
    assert m, f"unexpected quantity {quantity!r}"
    return int(m.group(1)) * {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _group(spec: dict, name: str) -> dict:
    (group,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == name]
    return group


@pytest.mark.parametrize("manifest,crd", [("raycluster.yaml", "ray.io_rayclusters.yaml"),
                                          ("rayjob.yaml", "ray.io_rayjobs.yaml")])
def test_manifests_validate_against_the_kuberay_crds(manifest, crd):
    jsonschema = pytest.importorskip("jsonschema")
    if not CRDS.exists():
        pytest.skip(f"KubeRay CRDs not present at {CRDS} (only in the project's shared folder)")
    validator = jsonschema.Draft7Validator(_schema(crd))
    errors = sorted(validator.iter_errors(_load(manifest)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_validator_does_reject_a_broken_manifest():
    """The check above can fail: a misspelled field and a non-string rayStartParams are caught."""
    jsonschema = pytest.importorskip("jsonschema")
    if not CRDS.exists():
        pytest.skip(f"KubeRay CRDs not present at {CRDS}")
    broken = _load("raycluster.yaml")
    broken["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    broken["spec"]["workerGroupSpecs"][0]["maxReplica"] = broken["spec"]["workerGroupSpecs"][0].pop("maxReplicas")
    errors = list(jsonschema.Draft7Validator(_schema("ray.io_rayclusters.yaml")).iter_errors(broken))
    assert len(errors) >= 2


def test_operator_rules_the_schema_cannot_express():
    job = _load("rayjob.yaml")["spec"]
    assert ("rayClusterSpec" in job) != ("clusterSelector" in job)
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0
    for spec in (_load("raycluster.yaml")["spec"], job["rayClusterSpec"]):
        assert spec["enableInTreeAutoscaling"] is True
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        for group in spec["workerGroupSpecs"]:
            assert group["minReplicas"] == 0 < group["maxReplicas"]


def test_rayjob_runs_the_cluster_of_raycluster_yaml():
    assert _load("rayjob.yaml")["spec"]["rayClusterSpec"] == _load("raycluster.yaml")["spec"]


def test_versions_agree_between_image_manifests_and_the_pin():
    pin = re.search(r'"ray\[default\]==([\d.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    base = re.search(r"^FROM rayproject/ray:([\d.]+)-py(\d)(\d+)", (KUBERAY / "Dockerfile").read_text(), re.M)
    assert base.group(1) == pin == _load("raycluster.yaml")["spec"]["rayVersion"]


def test_head_runs_no_tasks_and_groups_carry_what_the_driver_requests():
    spec = _load("raycluster.yaml")["spec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    template = load_config(str(REPO / "configs" / "pcg_bigtable.yaml"))
    assert template.highmem_resource == MeshConfig.model_fields["highmem_resource"].default
    # The resource the driver asks for on upper layers (computed by raymesh, not typed here) ...
    wanted = layer_resources(max(template.layers), template.highmem_layer, template.highmem_resource)
    assert wanted, "the template sends its upper layers to big-memory nodes"
    highmem = _group(spec, "highmem")
    carried = yaml.safe_load(yaml.safe_load(highmem["rayStartParams"]["resources"]))
    # ... is what the highmem group, and only it, carries.
    assert set(wanted) == set(carried) and all(carried[k] >= v for k, v in wanted.items())
    general = _group(spec, "general")
    others = {g["groupName"]: yaml.safe_load(yaml.safe_load(g["rayStartParams"].get("resources", '"{}"')))
              for g in spec["workerGroupSpecs"] if g is not highmem}
    assert all(template.highmem_resource not in r for r in others.values())
    # The lower layers ask for the general group's resource, which only it carries (issue 23).
    low = layer_resources(2, template.highmem_layer, template.highmem_resource, template.general_resource)
    assert set(low) == {template.general_resource} and set(others) == {"general"}
    assert all(others["general"].get(k, 0) >= v for k, v in low.items()) and not set(low) & set(carried)
    # Ray's memory resource is the container limit (KubeRay): a highmem node fits as many
    # budget-sized stitching tasks as it has units of the resource; requests equal limits, so
    # Kubernetes reserves what Ray hands out.
    (container,) = _containers(highmem["template"])
    assert _units(container["resources"]["limits"]["memory"]) >= template.memory_budget * carried[template.highmem_resource]
    (worker,) = _containers(general["template"])
    block = np.asarray(PCG_CHUNK) // np.asarray(PCG_MIP_SCALE) + 1
    per_cpu = _units(worker["resources"]["limits"]["memory"]) / int(worker["resources"]["limits"]["cpu"])
    assert per_cpu >= l2_request(block, template.memory_budget), "every CPU can run a layer-2 task"
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        for c in _containers(group["template"]):
            assert c["resources"]["requests"] == c["resources"]["limits"]


def test_credentials_come_from_a_mounted_secret():
    spec = _load("raycluster.yaml")["spec"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        secrets = {v["name"] for v in pod["volumes"] if "secret" in v}
        for c in _containers(group["template"]):
            env = {e["name"]: e["value"] for e in c["env"]}
            mounts = [m for m in c["volumeMounts"] if m["name"] in secrets]
            assert any(env["GOOGLE_APPLICATION_CREDENTIALS"].startswith(m["mountPath"] + "/") for m in mounts)


def test_rayjob_entrypoint_parses_with_raymesh_and_names_a_config_that_exists():
    argv = shlex.split(_load("rayjob.yaml")["spec"]["entrypoint"])
    assert argv[0] == "raymesh"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "mesh" and args.address == "auto"
    assert args.config.startswith(IMAGE_ROOT)
    local = REPO / args.config[len(IMAGE_ROOT):]
    assert local.exists(), f"{args.config} is not in the image (no {local})"
    args.config = str(local)
    config = config_from_args(args)
    assert config.graph.startswith("bigtable://")


def test_pcg_template_mirrors_pcg_defaults():
    config = load_config(str(REPO / "configs" / "pcg_bigtable.yaml"))
    assert (config.mip, config.max_error, config.mesh_dir) == (2, 40, "graphene_meshes")
    assert set(config.sharding) == set(config.layers)
    assert all(s.shard_bits == 0 for s in config.sharding.values())
    text = (REPO / "configs" / "pcg_bigtable.yaml").read_text()
    for key in MeshConfig.model_fields:
        if key in config.model_fields_set:
            assert re.search(rf"^# {key}\b|^#.*\b{key}\b", text, re.M), f"{key} is not explained"


def test_token_authentication_is_on_with_the_token_in_a_secret():
    """KubeRay's documented way (authOptions, KubeRay >= 1.5.1, Ray >= 2.52): the operator sets
    RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from the Secret's auth_token key on every container; the
    README and the manifests' comments create that Secret and read the token back from it."""
    for spec in (_load("raycluster.yaml")["spec"], _load("rayjob.yaml")["spec"]["rayClusterSpec"]):
        assert spec["authOptions"] == {"mode": "token", "secretName": "raymesh-ray-token"}
        major, minor, _ = (int(v) for v in str(spec["rayVersion"]).split("."))
        assert (major, minor) >= (2, 52), "token authentication needs Ray 2.52 or newer"
    readme = (REPO / "README.md").read_text()
    for text in (readme, (KUBERAY / "raycluster.yaml").read_text()):
        assert "kubectl create secret generic raymesh-ray-token --from-literal=auth_token=" in text
        assert "kubectl get secret raymesh-ray-token -o jsonpath='{.data.auth_token}'" in text
