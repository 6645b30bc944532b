"""The deployables: Dockerfile, Kubernetes manifests, CloudFormation templates, and the docs that explain them.

Linters run for real (hadolint, kubernetes-validate, cfn-lint: the `test` extras). Missing locally, their
tests skip; in CI (CI=true) a missing linter fails, so a green CI always means "linted".
"""
from __future__ import annotations

import fnmatch
import importlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml

from vxcap import cli
from vxcap.config import OPTIONS, format_markdown, load_config

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
K8S = REPO / "deploy" / "kubernetes"
CFN = REPO / "deploy" / "cloudformation"


def need(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path=os.path.dirname(sys.executable))
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is missing: install the test extras")
        pytest.skip(f"{tool} not installed (pip install the test extras)")
    return path


# ---------------------------------------------------------------------------------------------- Dockerfile


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """[(INSTRUCTION, arguments)] per stage, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        current += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    stages: list[list[tuple[str, str]]] = []
    for item in logical:
        instruction, _, args = item.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), args.strip()))
    return stages


def args_of(stage, instruction: str) -> list[str]:
    return [args for ins, args in stage if ins == instruction]


def test_hadolint_is_clean():
    hadolint = need("hadolint")
    # --failure-threshold style: any finding fails; the two accepted ones are ignored inline, with reasons
    proc = subprocess.run([hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""


def test_dockerfile_stages():
    builder, runtime = dockerfile_stages()
    assert args_of(builder, "FROM") == ["python:3.11-slim-bookworm AS builder"]
    assert args_of(runtime, "FROM") == ["python:3.11-slim-bookworm"]
    builder_runs = " ".join(args_of(builder, "RUN"))
    assert "build-essential" in builder_runs and "pip wheel" in builder_runs
    runtime_runs = " ".join(args_of(runtime, "RUN"))
    # no compiler in the image that runs
    for compiler in ("build-essential", "gcc", "g++", "cython"):
        assert compiler not in runtime_runs.lower()
    # installed offline from the builder's wheels by the interpreter that carries the capability
    assert "--no-index --find-links /wheels vxcap" in runtime_runs
    assert "setcap cap_net_raw+ep /usr/local/bin/vxcap-python" in runtime_runs
    assert "/usr/local/bin/vxcap-python -m pip install" in runtime_runs
    # NET_ADMIN must not be a file capability: execve fails with EPERM wherever the pod does not grant it
    assert "net_admin" not in runtime_runs.lower()
    assert "useradd --system --uid 10001" in runtime_runs


def test_dockerfile_runtime_settings():
    runtime = dockerfile_stages()[-1]
    assert args_of(runtime, "USER") == ["10001:10001"]  # numeric, so runAsNonRoot can check it
    assert args_of(runtime, "EXPOSE") == ["9108"]
    (health,) = args_of(runtime, "HEALTHCHECK")
    command = json.loads(health.partition("CMD ")[2])
    assert command[:2] == ["python3", "-c"]
    assert "urllib.request" in command[2] and "http://127.0.0.1:9108/healthz" in command[2]
    compile(command[2], "<healthcheck>", "exec")
    assert json.loads(args_of(runtime, "ENTRYPOINT")[0]) == ["vxcap", "run"]


def test_entrypoint_is_the_console_script():
    """`vxcap run` in the image = pyproject's console script -> vxcap.cli:main -> the `run` command."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    entry = json.loads(args_of(dockerfile_stages()[-1], "ENTRYPOINT")[0])
    assert scripts[entry[0]] == "vxcap.cli:main"
    module, _, attr = scripts[entry[0]].partition(":")
    assert getattr(importlib.import_module(module), attr) is cli.main
    assert entry[1] in cli.COMMANDS
    assert cli.COMMANDS[entry[1]][0] == "vxcap.daemon"
    assert cli.COMMANDS["config"][0] == "vxcap.daemon"


def test_daemon_provides_run_and_config():
    # The commands the image runs must import: `run` (ENTRYPOINT) and `config` (re-exported from config).
    daemon = importlib.import_module("vxcap.daemon")
    assert callable(daemon.main)
    from vxcap.config import config_main

    assert daemon.config_main is config_main


def test_dockerignore_keeps_what_the_wheel_needs():
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p.replace("**/", "")) or fnmatch.fnmatch(path, p)
                   or path.startswith(p.rstrip("/") + "/") for p in patterns)

    for needed in ("setup.py", "pyproject.toml", "README.md", "vxcap/__init__.py", "vxcap/cli.py",
                   "vxcap/config.py", "src_c/x.pyx", "src_c/x.pxd"):
        assert not ignored(needed), needed
    for junk in (".git/config", "build/lib/x.so", "tests/test_config.py", "vxcap/_decode.so"):
        assert ignored(junk), junk


# ---------------------------------------------------------------------------------------------- Kubernetes


def k8s_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def test_manifests_validate():
    kubernetes_validate = pytest.importorskip("kubernetes_validate") if os.environ.get("CI") != "true" \
        else importlib.import_module("kubernetes_validate")
    version = kubernetes_validate.latest_version()
    for name in ("daemonset.yaml", "configmap-rules.yaml"):
        for doc in k8s_docs(name):
            kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError


def daemonset() -> dict:
    (ds,) = k8s_docs("daemonset.yaml")
    return ds


def container() -> dict:
    (c,) = daemonset()["spec"]["template"]["spec"]["containers"]
    return c


def test_daemonset_pod_spec():
    ds = daemonset()
    assert ds["kind"] == "DaemonSet" and "namespace" not in ds["metadata"]
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["terminationGracePeriodSeconds"] == 30
    assert pod["nodeSelector"]["vxcap.io/mirror-target"] == "true" and pod["tolerations"]
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "9108"
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()


def test_daemonset_security_matches_the_image():
    sc = container()["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW"]}
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True
    # the image's USER, and file capabilities need privilege escalation allowed (no_new_privs ignores them)
    assert f"{sc['runAsUser']}:{sc['runAsGroup']}" == args_of(dockerfile_stages()[-1], "USER")[0]
    assert sc["allowPrivilegeEscalation"] is True
    text = (K8S / "daemonset.yaml").read_text()
    assert "# - NET_ADMIN" in text  # documented, off by default


def test_daemonset_probes_and_resources():
    c = container()
    port = next(p for p in c["ports"] if p["name"] == "metrics")
    assert port["containerPort"] == 9108
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["resources"] == {"requests": {"cpu": "1", "memory": "512Mi"},
                              "limits": {"cpu": "2", "memory": "2Gi"}}
    assert "Sized from benchmarks/results/latest.md" in (K8S / "daemonset.yaml").read_text()


def test_daemonset_environment_loads():
    """The manifest's environment, as the kubelet would resolve it, is a valid configuration."""
    (cm,) = k8s_docs("configmap-rules.yaml")
    env: dict[str, str] = {}
    for var in container()["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "configMapKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["configMapKeyRef"]
            assert ref["name"] == cm["metadata"]["name"]
            env[var["name"]] = cm["data"][ref["key"]]
        else:
            assert var["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
            env[var["name"]] = "ip-10-0-1-7.ec2.internal"
    cfg = load_config(env)
    assert cfg.warnings == ()
    assert cfg.url == "http://worker.resurface:7701/message"
    assert "allow_http_url" in cfg.rules_text.splitlines()  # required by the http:// URL
    assert cfg.sniffer_engine == "mirror" and cfg.app_ports == {80, 8080} and cfg.vnis_include
    assert cfg.host == "ip-10-0-1-7.ec2.internal"
    assert cfg.metrics_addr[1] == 9108
    assert cfg.shutdown_timeout < daemonset()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


# ---------------------------------------------------------------------------------------------- CloudFormation


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (!Ref x -> {"Ref": x}, !Sub -> {"Fn::Sub": ...})."""


def _cfn_tag(loader, suffix, node):
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def template(name: str) -> dict:
    return yaml.load((CFN / name).read_text(), Loader=CfnLoader)


TEMPLATES = ["mirror-session.yaml", "mirror-session-cross-vpc.yaml"]


def test_cfn_lint_is_clean():
    cfn_lint = need("cfn-lint")
    proc = subprocess.run([cfn_lint, "--format", "parseable", *(str(CFN / t) for t in TEMPLATES)],
                          capture_output=True, text=True, timeout=300)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def resources(t: dict, kind: str) -> dict:
    return {k: v["Properties"] for k, v in t["Resources"].items() if v["Type"] == kind}


@pytest.mark.parametrize("name", TEMPLATES)
def test_mirror_session_template(name):
    t = template(name)
    params = t["Parameters"]
    for p in ("SourceNetworkInterfaceId", "TargetNetworkInterfaceId", "VirtualNetworkId", "TargetSecurityGroupId",
              "SourceVpcCidr", "PacketLength", "SessionDescription"):
        assert p in params
    assert (params["VirtualNetworkId"]["MinValue"], params["VirtualNetworkId"]["MaxValue"]) == (0, 2**24 - 1)

    (target,) = resources(t, "AWS::EC2::TrafficMirrorTarget").values()
    assert target["NetworkInterfaceId"] == {"Ref": "TargetNetworkInterfaceId"}
    (filter_id,) = resources(t, "AWS::EC2::TrafficMirrorFilter")
    rules = resources(t, "AWS::EC2::TrafficMirrorFilterRule").values()
    assert sorted(r["TrafficDirection"] for r in rules) == ["egress", "ingress"]
    for r in rules:
        assert r["TrafficMirrorFilterId"] == {"Ref": filter_id}
        assert (r["Protocol"], r["RuleAction"]) == (6, "accept") and isinstance(r["RuleNumber"], int)
        assert r["SourceCidrBlock"] == r["DestinationCidrBlock"] == "0.0.0.0/0"

    (session,) = resources(t, "AWS::EC2::TrafficMirrorSession").values()
    assert session["NetworkInterfaceId"] == {"Ref": "SourceNetworkInterfaceId"}
    assert session["VirtualNetworkId"] == {"Ref": "VirtualNetworkId"}
    assert session["SessionNumber"] == {"Ref": "SessionNumber"} and params["SessionNumber"]["Default"] == 1
    # PacketLength only when asked for: absent, AWS mirrors whole packets
    assert session["PacketLength"] == {"Fn::If": ["HasPacketLength", {"Ref": "PacketLength"}, {"Ref": "AWS::NoValue"}]}

    (ingress,) = resources(t, "AWS::EC2::SecurityGroupIngress").values()
    assert (ingress["IpProtocol"], ingress["FromPort"], ingress["ToPort"]) == ("udp", 4789, 4789)
    assert ingress["GroupId"] == {"Ref": "TargetSecurityGroupId"} and ingress["CidrIp"] == {"Ref": "SourceVpcCidr"}
    assert {"TrafficMirrorTargetId", "TrafficMirrorSessionId", "VirtualNetworkId"} <= t["Outputs"].keys()


def test_cross_vpc_template_peers_and_routes():
    t = template("mirror-session-cross-vpc.yaml")
    (peering_id, peering), = resources(t, "AWS::EC2::VPCPeeringConnection").items()
    assert peering["VpcId"] == {"Ref": "SourceVpcId"} and peering["PeerVpcId"] == {"Ref": "TargetVpcId"}
    routes = sorted(resources(t, "AWS::EC2::Route").values(), key=lambda r: r["RouteTableId"]["Ref"])
    assert [(r["RouteTableId"], r["DestinationCidrBlock"]) for r in routes] == [
        ({"Ref": "SourceRouteTableId"}, {"Ref": "TargetVpcCidr"}),
        ({"Ref": "TargetRouteTableId"}, {"Ref": "SourceVpcCidr"}),
    ]
    assert all(r["VpcPeeringConnectionId"] == {"Ref": peering_id} for r in routes)
    assert "VpcPeeringConnectionId" in t["Outputs"]


# ---------------------------------------------------------------------------------------------- docs


def test_deploy_guide_embeds_the_generated_table():
    # Regenerate with: python -c "from vxcap.config import format_markdown; print(format_markdown())"
    text = (REPO / "docs" / "deploy.md").read_text()
    table = format_markdown()
    assert table in text, "docs/deploy.md is out of date: paste `vxcap config --markdown` between the markers"
    for opt in OPTIONS:
        for name in opt.env:
            assert f"`{name}`" in text


def test_helm_values_map_every_sniffer_variable():
    text = (REPO / "deploy" / "helm-values.md").read_text()
    for name in ("USAGE_LOGGERS_URL", "USAGE_LOGGERS_RULES", "USAGE_LOGGERS_DISABLE", "SNIFFER_ENGINE",
                 "SNIFFER_MIRROR_VXLANPORT", "SNIFFER_MIRROR_VNIS", "APP_PORTS", "APP_PORT", "VPC_MIRROR_DEVICE",
                 "K8S_INPUT"):
        assert f"`{name}`" in text, name
    for value in ("sniffer.enabled", "sniffer.vpcmirror.enabled", "sniffer.vpcmirror.vnis",
                  "sniffer.vpcmirror.ports", "sniffer.vpcmirror.vxlanport", "sniffer.logger.rules",
                  "sniffer.logger.enabled", "sniffer.discovery.enabled", "sniffer.device", "sniffer.port"):
        assert f"`{value}`" in text, value


def test_docs_links_resolve():
    for doc in (REPO / "docs" / "deploy.md", REPO / "deploy" / "helm-values.md"):
        targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text())
        local = [t for t in targets if "://" not in t]
        assert local, doc
        for target in local:
            assert (doc.parent / target).resolve().exists(), f"{doc.name} links to missing {target}"
