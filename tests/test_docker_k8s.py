"""Offline checks of docker/ (issue 16). No Docker engine or cluster exists here: the images are not built
and nothing is applied. The Kubernetes objects (and the Jobs the work-pool templates render to) are
validated against the Kubernetes 1.30 OpenAPI schemas bundled in kubernetes-validate; the rest are the
properties the issue asks for, read from the files."""
from __future__ import annotations

import json
import re
from pathlib import Path

import kubernetes_validate  # in the test extra: a missing install fails, never skips
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "docker" / "k8s"
K8S_VERSION = "1.30.0"


def k8s_objects() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "prefect.yaml":
            continue
        found += [(f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
                  for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def rendered_job(template: dict) -> dict:
    """The Job a worker builds from a base job template with every variable at its default."""
    props = template["variables"]["properties"]
    values = {name: spec.get("default") for name, spec in props.items()}
    values.update(name="curate-itest", command=["prefect", "flow-run", "execute"], labels={"app": "sot"},
                  env=[{"name": k, "value": v} for k, v in props["env"]["default"].items()])
    text = json.dumps(template["job_configuration"]["job_manifest"])
    placeholders = set(re.findall(r"\{\{ (\w+) \}\}", text))
    assert placeholders <= set(props), f"undeclared template variables: {placeholders - set(props)}"

    def fill(node):
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        if isinstance(node, str) and (m := re.fullmatch(r"\{\{ (\w+) \}\}", node)):
            return values[m.group(1)]
        if isinstance(node, str):
            return re.sub(r"\{\{ (\w+) \}\}", lambda m: str(values[m.group(1)]), node)
        return node
    return fill(json.loads(text))


def templates() -> dict[str, dict]:
    return {kind: json.loads((K8S / f"job-{kind}.json").read_text()) for kind in ("cpu", "gpu")}


@pytest.mark.parametrize("name, obj", k8s_objects(), ids=[n for n, _ in k8s_objects()])
def test_manifests_validate_against_the_kubernetes_schema(name, obj):
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_job_templates_render_valid_jobs_as_uid_1000_with_everything_on_the_volume(kind):
    job = rendered_job(templates()[kind])
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["fsGroup"] == 1000
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/data/sot", "/opt/sot/data/incoming", "/opt/sot/out"} <= mounts
    limits = pod["containers"][0]["resources"]["limits"]
    if kind == "cpu":  # a CPU job must not ask for a GPU
        assert "nvidia.com/gpu" not in json.dumps(templates()["cpu"])
    else:
        assert limits["nvidia.com/gpu"] == 1


def test_every_pod_runs_as_non_root_with_a_group_for_its_volume():
    for name, obj in k8s_objects():
        spec = obj.get("spec", {})
        pod = spec.get("template", {}).get("spec") if "template" in spec else None
        if pod is None:
            continue
        context = pod["securityContext"]
        assert context["runAsNonRoot"] and context.get("fsGroup"), name


def test_server_manifest_runs_prefect_on_postgres():
    objs = dict(k8s_objects())
    server = objs["server.yaml:Deployment/prefect-server"]["spec"]["template"]["spec"]["containers"][0]
    assert server["image"].startswith("prefecthq/prefect:3.9.1")
    assert any(e["name"] == "PREFECT_API_DATABASE_CONNECTION_URL" for e in server["env"])
    assert "server.yaml:StatefulSet/prefect-postgres" in objs
    db_url = objs["server.yaml:Secret/prefect-db"]["stringData"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert db_url.startswith("postgresql+asyncpg://")
    worker_api = objs["worker.yaml:ConfigMap/sot-api"]["data"]["PREFECT_API_URL"]
    assert worker_api.startswith("http://prefect-server.sot.svc")


def test_kubernetes_deployments_target_the_kubernetes_pools_and_run_from_the_image():
    config = yaml.safe_load((K8S / "prefect.yaml").read_text())
    assert config["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/sot"}}]
    pools = {d["name"]: d["work_pool"]["name"] for d in config["deployments"]}
    assert pools == {"curate-dataset-k8s": "sot-k8s-cpu", "nightly-recuration-k8s": "sot-k8s-cpu",
                     "finetune-and-evaluate-k8s": "sot-k8s-gpu"}
    for d in config["deployments"]:
        assert (REPO / d["entrypoint"].split(":")[0]).is_file()
    deploy_job = dict(k8s_objects())["worker.yaml:Job/sot-deploy"]
    script = deploy_job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "docker/k8s/job-$kind.json" in script and "--prefect-file docker/k8s/prefect.yaml" in script


def test_compose_stops_gracefully_and_needs_no_hidden_variable():
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    for name in ("worker", "gpu-worker"):
        service = compose["services"][name]
        assert service["stop_signal"] == "SIGINT" and service["stop_grace_period"]
        assert any(v.endswith(":/opt/sot/data/incoming") for v in service["volumes"])
    text = "".join((REPO / "docker" / f).read_text() for f in ("compose.yaml", "Dockerfile.cpu", "Dockerfile.cuda"))
    assert "SOT_REPO" not in text and "SOT_REPO" not in (REPO / "prefect.yaml").read_text()


def test_dockerignore_keeps_the_context_small():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".sot", "out", "data/incoming"} <= set(ignored)


def test_cuda_image_pins_the_tested_torch():
    tested = re.search(r"TORCH_VERSION=\$\{SOT_TORCH_VERSION:-([\d.]+)\}", (REPO / "scripts" / "setup.sh").read_text())
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.cuda"):
        pinned = re.search(r"ARG TORCH_VERSION=([\d.]+)", (REPO / "docker" / dockerfile).read_text())
        assert pinned and pinned.group(1) == tested.group(1), dockerfile
