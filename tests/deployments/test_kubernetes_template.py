"""The Kubernetes work pool's base job template (deployments/kubernetes/): every
placeholder is a variable of the template, and a shard's pod gets one GPU, the image,
and the S3 and ledger settings from the Secrets that secrets.example.yaml defines.
(No cluster here: rendered with Prefect's own templating, as the worker does.)"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from prefect.utilities.templating import apply_values, find_placeholders

KUBERNETES = Path(__file__).resolve().parents[2] / "deployments" / "kubernetes"


def _template() -> dict:
    return json.loads((KUBERNETES / "gpu-job-template.json").read_text())


def test_every_placeholder_is_a_variable():
    template = _template()
    names = {p.name for p in find_placeholders(template["job_configuration"])}
    assert len(names) >= 10
    assert names <= set(template["variables"]["properties"])


def test_a_shard_pod_gets_one_gpu_the_image_and_the_secrets():
    template = _template()
    defaults = {
        name: schema["default"]
        for name, schema in template["variables"]["properties"].items()
        if "default" in schema
    }
    values = {**defaults, "image": "registry.example/autolabel:1", "env": {}}
    job = apply_values(template["job_configuration"], values)["job_manifest"]
    (container,) = job["spec"]["template"]["spec"]["containers"]

    assert container["image"] == "registry.example/autolabel:1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    secrets = [source["secretRef"]["name"] for source in container["envFrom"]]
    examples = {
        doc["metadata"]["name"]: doc["stringData"]
        for doc in yaml.safe_load_all((KUBERNETES / "secrets.example.yaml").read_text())
    }
    assert secrets == list(examples) == ["autolabel-s3", "autolabel-ledger"]
    assert "AWS_SECRET_ACCESS_KEY" in examples["autolabel-s3"]
    assert examples["autolabel-ledger"]["AUTOLABEL_CREDITS_LEDGER"].startswith(
        "postgresql://"
    )


def test_the_shard_deployment_runs_the_labeling_flow_from_the_image():
    config = yaml.safe_load((KUBERNETES / "prefect.yaml").read_text())
    (deployment,) = config["deployments"]
    assert deployment["entrypoint"] == "flows/label.py:label_images"
    assert deployment["work_pool"]["name"] == "autolabel-gpu"
    (step,) = config["pull"]
    directory = step["prefect.deployments.steps.set_working_directory"]["directory"]
    assert f"WORKDIR {directory}" in (KUBERNETES / "Dockerfile").read_text()
