#!/usr/bin/env python3
"""Validates the deployment files without a cluster, a Docker engine or a helm binary.

Run through deploy/validate.sh, which provides the tools (helm-python-sdk, kubernetes-validate,
hadolint in target/deploy-venv; docker-compose from Debian) and builds the binaries.

Checks (each prints one line: ok / FAIL / skip):
  chart    helm lint --strict, render (default + variants), every object through
           kubernetes-validate --strict -k 1.30.0 (ServiceMonitor against our own schema),
           what the chart promises (probes, grace period vs --drain-ms, per-pod hosts, ...),
           and negative cases (bad values, an unknown field) that must be rejected.
  compose  docker-compose config -q, what the file promises, broken copies must fail.
  docker   hadolint --failure-threshold error, runtime stage facts, .dockerignore vs the
           files the build reads, broken copies must fail.
  flags    every flag / env var given to central, signal-node and loadgen in the Dockerfile,
           compose and the chart exists in that binary's --help.
  smoke    the compose topology as local processes (redis-server, central, 3 nodes, loadgen)
           with compose's own commands and env on loopback ports: registration, login,
           loadgen --fail-on-errors, drain on SIGTERM within stop_grace_period.
Closing line: "deploy: N passed, N failed[, N skipped]"; exit status 1 on any failure.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

sys.dont_write_bytecode = True  # no __pycache__ in deploy/ when the self-tests are imported

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "signal-cluster"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SM_SCHEMA = ROOT / "deploy" / "schemas" / "servicemonitor.schema.json"
VENV_BIN = Path(sys.executable).parent
KUBE_VERSION = "1.30.0"
BINARIES = ("central", "signal-node", "loadgen")
ENV_PREFIXES = {"central": "CENTRAL_", "signal-node": "SIGNAL_", "loadgen": "LOADGEN_"}
RELEASE, NAMESPACE = "sig", "rtc"
EXTERNAL_REDIS_URL = "redis://redis.example.internal:6379/0"
# The least a default install needs: login is authenticated, so a JWT secret (or openLogin).
JWT_VALUE = "a-jwt-secret-of-32-bytes-or-more!"
WITH_JWT: dict[str, Any] = {"jwt": {"value": JWT_VALUE}}

# The chart's value sets that are rendered and validated. Together they switch on every
# conditional template branch, so that the flags check sees every flag the chart can pass.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": WITH_JWT,
    "open-login": {"openLogin": True},
    "external-redis": {**WITH_JWT, "redis": {"enabled": False, "external": {"url": EXTERNAL_REDIS_URL}}},
    "hpa-servicemonitor": {
        "signalNode": {
            "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 6},
            "outboundQueue": 512,
            "devAuth": True,
            "exposure": {"ingress": {"tlsSecretName": "nodes-wildcard-tls", "className": "nginx"}},
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "central": {"probeIntervalMs": 1000,
                    "ingress": {"enabled": True, "className": "nginx", "tlsSecretName": "signal-tls"}},
        "jwt": {"value": JWT_VALUE, "audience": "signal", "issuer": "https://app.example.com", "leewaySecs": 10},
        "allowedOrigins": ["https://app.example.com", "http://localhost:3000"],
    },
    "hostport-existing-secrets": {
        "signalNode": {"exposure": {"mode": "hostPort"}, "replicaCount": 2},
        "clusterSecret": {"existingSecret": "my-cluster-secret"},
        "jwt": {"existingSecret": "my-jwt-secret"},
        "redis": {"enabled": False, "external": {"existingSecret": "my-redis-url"}},
        "logJson": False,
        "grpcTls": {"enabled": True, "secretName": "signal-grpc-tls"},
        "networkPolicy": {"extraGrpcFrom": [{"namespaceSelector": {"matchLabels": {"name": "ops"}}}]},
    },
    "redis-cluster-tls": {
        **WITH_JWT,
        "redis": {"enabled": False, "external": {
            "url": "rediss://redis-0.redis:6379,rediss://redis-1.redis:6379", "mode": "cluster",
            "tlsCaSecret": "redis-ca"}},
    },
    "redis-sentinel": {
        **WITH_JWT,
        "redis": {"enabled": False, "external": {
            "url": "redis://sentinel-0:26379,redis://sentinel-1:26379", "mode": "sentinel",
            "sentinelMaster": "mymaster"}},
    },
    "turn-coturn-tls": {
        **WITH_JWT,
        "turn": {
            "enabled": True,
            "urls": ["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349?transport=tcp"],
            "stunUrls": ["stun:turn.example.com:3478"],
            "ttlSecs": 600,
            "coturn": {"tlsSecretName": "turn-tls", "externalIp": "203.0.113.10",
                       "extraSecrets": [{"name": "turn-next", "key": "turn-secret"}]},
        },
    },
    "server-api-webhooks": {
        **WITH_JWT,
        "serverApi": {"enabled": True, "existingSecret": "my-api-keys", "maxPresenceUsers": 50},
        "webhooks": {"enabled": True, "url": "http://backend.app.svc:8000/signal-hooks",
                     "existingSecret": "my-webhook-secret", "queue": 5000},
    },
    "turn-external-existing-secret": {
        "openLogin": True,
        "turn": {"enabled": True, "urls": ["turn:turn.example.net:3478"], "existingSecret": "my-turn-secret",
                 "coturn": {"enabled": False}},
    },
}

# Values that values.schema.json must refuse (at install, lint and render alike). Each is
# otherwise valid (a JWT secret is given) unless the login itself is what is wrong.
BAD_VALUES: dict[str, dict[str, Any]] = {
    "replicaCount as a string": {**WITH_JWT, "central": {"replicaCount": "two"}},
    "unknown exposure mode": {**WITH_JWT, "signalNode": {"exposure": {"mode": "nodeport"}}},
    "unknown top-level key": {**WITH_JWT, "replicas": 3},
    "negative drainMs": {**WITH_JWT, "signalNode": {"drainMs": -1}},
    "external Redis without URL": {**WITH_JWT, "redis": {"enabled": False}},
    "unknown Redis mode": {**WITH_JWT, "redis": {"enabled": False, "external": {
        "url": "redis://r:6379", "mode": "ring"}}},
    "neither a JWT secret nor openLogin (the defaults)": {},
    "openLogin false without a JWT secret": {"openLogin": False, "jwt": {"value": ""}},
    "JWT secret too short": {"jwt": {"value": "short"}},
    "openLogin together with a JWT secret": {"openLogin": True, "jwt": {"value": JWT_VALUE}},
    "the old jwt.enabled switch": {"jwt": {"enabled": False, "value": JWT_VALUE}},
    "allowedOrigins entry not an origin": {**WITH_JWT, "allowedOrigins": ["app.example.com"]},
    "bad pull policy": {**WITH_JWT, "image": {"pullPolicy": "Sometimes"}},
    "extraArgs not a flag": {**WITH_JWT, "signalNode": {"extraArgs": ["rm -rf /"]}},
    "TURN on without URLs": {**WITH_JWT, "turn": {"enabled": True}},
    "server API on without a key Secret": {**WITH_JWT, "serverApi": {"enabled": True}},
    "webhooks to an https URL": {**WITH_JWT, "webhooks": {"enabled": True, "url": "https://x.example/h",
                                                          "existingSecret": "s"}},
    "webhook retry below 5 minutes": {**WITH_JWT, "webhooks": {"retrySecs": 60}},
    "gRPC TLS on without a Secret": {**WITH_JWT, "grpcTls": {"enabled": True}},
    "TURN URL with a bad scheme": {**WITH_JWT, "turn": {"enabled": True, "urls": ["http://turn.example.com:3478"]}},
}
# What the refusal must name (the full schema error), where the first line alone is vague.
BAD_REASONS: dict[str, list[str]] = {
    "neither a JWT secret nor openLogin (the defaults)": ["/jwt/value", "/jwt/existingSecret", "/openLogin"],
    "openLogin false without a JWT secret": ["/jwt/value", "/jwt/existingSecret", "/openLogin"],
    "JWT secret too short": ["'/jwt/value': minLength: got 5, want 16"],
    "openLogin together with a JWT secret": ["'/jwt/value': maxLength"],
    "external Redis without URL": ["/redis/external"],
}


class Report:
    """Counts and prints the outcome of every check."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.skipped = 0

    def ok(self, name: str, detail: str = "") -> None:
        self.passed += 1
        print(f"ok   {name}" + (f" ({detail})" if detail else ""), flush=True)

    def fail(self, name: str, detail: str) -> None:
        self.failed += 1
        print(f"FAIL {name}: {detail}", flush=True)

    def skip(self, name: str, note: str) -> None:
        self.skipped += 1
        print(f"skip {name}: {note}", flush=True)

    def check(self, name: str, fn: Callable[[], str | None]) -> None:
        """Runs fn: returning (an optional detail) passes, raising CheckError or anything fails."""
        try:
            detail = fn()
        except CheckError as e:
            self.fail(name, str(e))
        except Skip as e:
            self.skip(name, str(e))
        except Exception as e:  # a crash of a check is a failure, with its trace
            self.fail(name, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        else:
            self.ok(name, detail or "")


class CheckError(Exception):
    pass


class Skip(Exception):
    pass


def expect(cond: bool, msg: str) -> None:
    if not cond:
        raise CheckError(msg)


def run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: int = 120,
        cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def tool(name: str) -> str:
    """A tool from the venv, else from PATH."""
    cand = VENV_BIN / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise CheckError(f"{name} not found (run deploy/validate.sh, which installs it)")
    return found


# ---------------------------------------------------------------------------------------------
# Helm chart
# ---------------------------------------------------------------------------------------------

def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def render(values: dict[str, Any]) -> dict[str, str]:
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects_of(manifests: dict[str, str]) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                raise CheckError(f"{path}: a rendered document is not a Kubernetes object: {str(doc)[:120]}")
            doc.setdefault("metadata", {})
            doc["metadata"]["_source"] = path
            objs.append(doc)
    return objs


def strip_source(obj: dict[str, Any]) -> dict[str, Any]:
    o = copy.deepcopy(obj)
    o.get("metadata", {}).pop("_source", None)
    o.get("metadata", {}).pop("_variant", None)
    return o


def kubernetes_validate(objs: list[dict[str, Any]]) -> str:
    """All objects through the kubernetes-validate CLI; any ERROR/WARN/FATAL line fails."""
    if not objs:
        raise CheckError("no objects to validate")
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "objects.yaml"
        f.write_text(yaml.safe_dump_all([strip_source(o) for o in objs], sort_keys=False))
        p = run([tool("kubernetes-validate"), "--strict", "-k", KUBE_VERSION, str(f)], timeout=180)
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    bad = [ln for ln in lines if not ln.startswith("INFO ")]
    passed = [ln for ln in lines if ln.startswith("INFO ") and " passed " in ln]
    if p.returncode != 0 or bad:
        raise CheckError(f"exit {p.returncode}: " + " | ".join(bad or lines)[:2000])
    expect(len(passed) == len(objs), f"{len(objs)} objects but {len(passed)} 'passed' lines: {lines}")
    return f"{len(objs)} objects, k8s {KUBE_VERSION} strict"


def validate_servicemonitors(sms: list[dict[str, Any]]) -> None:
    import jsonschema

    schema = json.loads(SM_SCHEMA.read_text())
    for sm in sms:
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(strip_source(sm)), key=str)
        if errors:
            e = errors[0]
            raise CheckError(f"ServiceMonitor {sm['metadata'].get('name')}: {'/'.join(map(str, e.path))}: {e.message}")


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name_suffix: str) -> dict[str, Any]:
    found = [o for o in by_kind(objs, kind) if o["metadata"]["name"].endswith(name_suffix)]
    expect(len(found) == 1, f"expected one {kind} named *{name_suffix}, found {[o['metadata']['name'] for o in found]}")
    return found[0]


def pod_templates(objs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(owner, pod spec with its labels) for workloads and bare pods."""
    out = []
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out.append((o, o["spec"]["template"]))
        elif o["kind"] == "Pod":
            out.append((o, {"metadata": o["metadata"], "spec": o["spec"]}))
    return out


def arg_map(container: dict[str, Any]) -> dict[str, str | None]:
    m: dict[str, str | None] = {}
    for a in container.get("args", []):
        if a.startswith("--"):
            k, _, v = a.partition("=")
            m[k] = v if _ else None
    return m


def env_map(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def chart_semantics(name: str, values: dict[str, Any], objs: list[dict[str, Any]]) -> str:
    """What the chart promises, checked on the rendered objects of one variant."""
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        v = chart.merge_values(values)
    n, c = v["signalNode"], v["central"]
    facts = []

    # Every Service selects the pods of some workload (no label typo leaves one empty).
    templates = pod_templates(objs)
    for svc in by_kind(objs, "Service"):
        sel = svc["spec"].get("selector", {})
        ok = any(all(t["metadata"].get("labels", {}).get(k) == val for k, val in sel.items()
                     if k != "statefulset.kubernetes.io/pod-name") for _, t in templates)
        expect(ok, f"Service {svc['metadata']['name']} selects no pod template: {sel}")

    # Every workload's selector matches its own template.
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet"):
            labels = o["spec"]["template"]["metadata"]["labels"]
            for k, val in o["spec"]["selector"]["matchLabels"].items():
                expect(labels.get(k) == val, f"{o['kind']} {o['metadata']['name']}: selector {k} not on template")

    # Central: Deployment with the configured replicas, probes on /healthz and /readyz.
    dep = one(objs, "Deployment", "-central")
    expect(dep["spec"]["replicas"] == c["replicaCount"], "central replicas")
    cc = dep["spec"]["template"]["spec"]["containers"][0]
    expect(cc["command"] == ["central"], f"central command {cc['command']}")
    expect(cc["livenessProbe"]["httpGet"]["path"] == "/healthz", "central liveness on /healthz")
    expect(cc["readinessProbe"]["httpGet"]["path"] == "/readyz", "central readiness on /readyz")
    expect("CENTRAL_SECRET" in env_map(cc), "central gets CENTRAL_SECRET")
    expect("CENTRAL_REDIS_URL" in env_map(cc), "central replicas share Redis (CENTRAL_REDIS_URL)")
    # Login: JWT unless openLogin is set explicitly (then central says so with CENTRAL_OPEN_LOGIN).
    open_login = bool(v["openLogin"])
    expect(("CENTRAL_JWT_SECRET" in env_map(cc)) == (not open_login), "CENTRAL_JWT_SECRET unless openLogin")
    expect((env_map(cc).get("CENTRAL_OPEN_LOGIN") == "true") == open_login, "CENTRAL_OPEN_LOGIN=true iff openLogin")
    cargs = arg_map(cc)
    for flag, key in (("--jwt-audience", "audience"), ("--jwt-issuer", "issuer")):
        want_flag = None if open_login or not v["jwt"][key] else v["jwt"][key]
        expect(cargs.get(flag) == want_flag, f"central {flag}={cargs.get(flag)} but jwt.{key}={v['jwt'][key]!r}")
    facts.append("open login" if open_login else "JWT login")
    expect("resources" in cc and cc["resources"].get("requests"), "central resources")

    # Signal nodes: StatefulSet, stable id = pod name, headless service for gRPC, drain-aware grace.
    sts = one(objs, "StatefulSet", "-node")
    headless = one(objs, "Service", "-node-headless")
    expect(headless["spec"].get("clusterIP") == "None", "node headless Service has clusterIP None")
    expect(sts["spec"]["serviceName"] == headless["metadata"]["name"], "StatefulSet.serviceName = headless Service")
    pod = sts["spec"]["template"]["spec"]
    nc = pod["containers"][0]
    args = arg_map(nc)
    expect(nc["command"] == ["signal-node"], f"node command {nc['command']}")
    expect(args.get("--id") == "$(POD_NAME)", f"--id is the pod name, got {args.get('--id')}")
    grpc_scheme = "https" if v["grpcTls"]["enabled"] else "http"
    want_grpc = f"{grpc_scheme}://$(POD_NAME).{headless['metadata']['name']}.$(POD_NAMESPACE).svc:{n['grpcPort']}"
    expect(args.get("--grpc-advertise") == want_grpc, f"--grpc-advertise {args.get('--grpc-advertise')} != {want_grpc}")
    expect(args.get("--drain-ms") == str(n["drainMs"]), "--drain-ms from values")
    expect(args.get("--weight") == str(n["weight"]), "--weight from values")
    envs = env_map(nc)
    for var, path in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        expect(isinstance(envs.get(var), dict) and envs[var]["fieldRef"]["fieldPath"] == path, f"{var} from {path}")
    names = [e["name"] for e in nc["env"]]
    for var in ("POD_NAME", "POD_NAMESPACE", "HOST_IP"):
        # Kubernetes expands $(VAR) in args only for variables defined before use: they are,
        # as args come after env; but env entries referring to them must come later.
        expect(var in names, f"{var} defined")
    expect("SIGNAL_SECRET" in envs and "SIGNAL_REDIS_URL" in envs, "nodes get SIGNAL_SECRET and SIGNAL_REDIS_URL")
    want_origins = ",".join(v["allowedOrigins"]) or None
    expect(args.get("--allowed-origins") == want_origins and cargs.get("--allowed-origins") == want_origins,
           f"--allowed-origins on nodes {args.get('--allowed-origins')} and central {cargs.get('--allowed-origins')}"
           f" != {want_origins}")
    expect(nc["livenessProbe"]["httpGet"]["path"] == "/healthz", "node liveness on /healthz")
    expect(nc["readinessProbe"]["httpGet"]["path"] == "/readyz", "node readiness on /readyz")
    pre = nc["lifecycle"]["preStop"]["exec"]["command"]
    expect(pre[0] == "sleep" and int(pre[1]) == n["preStopSleepSeconds"], f"node preStop {pre}")
    grace = pod["terminationGracePeriodSeconds"]
    drain_s = -(-n["drainMs"] // 1000)
    resume_s = -(-n["resumeWindowMs"] // 1000)
    expect(grace >= int(pre[1]) + drain_s + resume_s,
           f"grace {grace}s < preStop {pre[1]}s + drain {drain_s}s + resume window {resume_s}s")
    expect(grace == n["preStopSleepSeconds"] + drain_s + resume_s + n["terminationGraceExtraSeconds"], f"grace {grace}s")
    for flag, key in (("--resume-window-ms", "resumeWindowMs"), ("--resume-buffer-frames", "resumeBufferFrames"),
                      ("--resume-buffer-bytes", "resumeBufferBytes")):
        expect(args.get(flag) == str(n[key]), f"{flag} from values")
    facts.append(f"grace {grace}s for drain {n['drainMs']}ms + resume window {n['resumeWindowMs']}ms")
    expect(nc.get("resources", {}).get("requests"), "node resources")
    sc = {**v["podSecurityContext"]}
    expect(pod["securityContext"].get("runAsNonRoot") is sc.get("runAsNonRoot") is True, "pods run as non-root")

    # The nodes register with central's Service on its gRPC port.
    csvc = one(objs, "Service", "-central")
    grpc_ports = [p["port"] for p in csvc["spec"]["ports"] if p["name"] == "grpc"]
    expect(grpc_ports == [c["service"]["grpcPort"]], "central Service has the gRPC port")
    want_central = f"{grpc_scheme}://{csvc['metadata']['name']}.$(POD_NAMESPACE).svc:{grpc_ports[0]}"
    expect(args.get("--central") == want_central, f"--central {args.get('--central')} != {want_central}")

    # Exposure: a host per pod (ingress) or a hostPort per machine.
    adv = args.get("--advertise-url") or ""
    count = max(n["replicaCount"], n["autoscaling"]["maxReplicas"]) if n["autoscaling"]["enabled"] else n["replicaCount"]
    if n["exposure"]["mode"] == "ingress":
        ing = one(objs, "Ingress", "-node")
        hosts = [r["host"] for r in ing["spec"]["rules"]]
        pods = [f"{sts['metadata']['name']}-{i}" for i in range(count)]
        expect(hosts == [f"{p}.{n['exposure']['ingress']['domain']}" for p in pods], f"per-pod hosts {hosts}")
        for p, r in zip(pods, ing["spec"]["rules"]):
            svc = one(objs, "Service", p)
            expect(svc["spec"]["selector"].get("statefulset.kubernetes.io/pod-name") == p, f"Service {p} selects pod {p}")
            expect(r["http"]["paths"][0]["backend"]["service"]["name"] == p, f"host of {p} routes to Service {p}")
        expect(re.fullmatch(r"wss?://\$\(POD_NAME\)\." + re.escape(n["exposure"]["ingress"]["domain"]) + "/ws", adv) is not None,
               f"advertise URL {adv}")
        facts.append(f"{count} per-pod hosts")
    else:
        port = nc["ports"][0]
        expect(port.get("hostPort") == n["exposure"]["hostPort"]["port"], "hostPort on the http port")
        expect("$(HOST_IP)" in adv, f"advertise URL {adv} uses HOST_IP")
        anti = pod["affinity"]["podAntiAffinity"]
        expect("requiredDuringSchedulingIgnoredDuringExecution" in anti, "hostPort mode: one node pod per machine")
        expect(not by_kind(objs, "Ingress") or all(not o["metadata"]["name"].endswith("-node") for o in by_kind(objs, "Ingress")),
               "no node Ingress in hostPort mode")
        facts.append("hostPort")

    # Secret: generated (kept) unless existing ones are named.
    secret_refs = set()
    for _, t in templates:
        for ctr in t["spec"]["containers"]:
            for e in ctr.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    secret_refs.add((ref["name"], ref["key"]))
    rendered_secrets = {s["metadata"]["name"]: s for s in by_kind(objs, "Secret")}
    existing = {v["clusterSecret"]["existingSecret"], v["jwt"]["existingSecret"], v["redis"]["external"]["existingSecret"],
                v["turn"]["existingSecret"], *(s["name"] for s in v["turn"]["coturn"]["extraSecrets"]),
                v["serverApi"]["existingSecret"], v["webhooks"]["existingSecret"]} - {""}
    for sname, key in secret_refs:
        if sname in existing:
            continue
        expect(sname in rendered_secrets, f"secretKeyRef to {sname} which is neither rendered nor existing")
        expect(key in (rendered_secrets[sname].get("data") or {}), f"Secret {sname} lacks key {key}")
        expect(rendered_secrets[sname]["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep",
               f"Secret {sname} is kept on uninstall")
    if not v["clusterSecret"]["existingSecret"]:
        s = one(objs, "Secret", "-secret")
        import base64
        expect(len(base64.b64decode(s["data"][v["clusterSecret"]["key"]])) >= 32, "generated cluster secret >= 32 chars")
        src = (CHART / "templates" / "secret.yaml").read_text()
        expect('lookup "v1" "Secret"' in src, "secret.yaml keeps the generated secret with lookup")

    # TURN: central hands out credentials signed with the secret coturn checks.
    t = v["turn"]
    cargs, cenv = arg_map(cc), env_map(cc)
    expect(("--turn-urls" in cargs) == bool(t["enabled"]) == ("CENTRAL_TURN_SECRET" in cenv),
           "--turn-urls and CENTRAL_TURN_SECRET iff turn.enabled")
    expect(cargs.get("--stun-urls") == (",".join(t["stunUrls"]) or None), "--stun-urls from turn.stunUrls")
    coturns = [o for o in by_kind(objs, "Deployment") if o["metadata"]["name"].endswith("-coturn")]
    if t["enabled"]:
        expect(cargs["--turn-urls"] == ",".join(t["urls"]), f"--turn-urls {cargs['--turn-urls']}")
        expect(cargs.get("--turn-ttl-secs") == str(t["ttlSecs"]), "--turn-ttl-secs from turn.ttlSecs")
        facts.append("TURN")
    if t["enabled"] and t["coturn"]["enabled"]:
        expect(len(coturns) == 1, "a coturn Deployment")
        cpod = coturns[0]["spec"]["template"]["spec"]
        tc = cpod["containers"][0]
        targs = tc["args"]
        expect(cpod.get("hostNetwork") is True, "coturn on the host network (relay ports)")
        expect("--use-auth-secret" in targs and "--static-auth-secret=$(TURN_SECRET)" in targs,
               "coturn checks TURN REST credentials with $(TURN_SECRET)")
        expect(env_map(tc)["TURN_SECRET"] == cenv["CENTRAL_TURN_SECRET"], "coturn and central share one TURN secret")
        expect(sum(a.startswith("--static-auth-secret=") for a in targs) == 1 + len(t["coturn"]["extraSecrets"]),
               "one --static-auth-secret per accepted secret")
        expect(("--no-tls" in targs) == (not t["coturn"]["tlsSecretName"]), "TLS iff coturn.tlsSecretName")
        expect(cpod["securityContext"].get("runAsNonRoot") is True, "coturn runs as non-root")
        facts.append("coturn")
    else:
        expect(not coturns, "no coturn unless turn.enabled and turn.coturn.enabled")

    # Redis bundled or external.
    redis_sts = [o for o in by_kind(objs, "StatefulSet") if o["metadata"]["name"].endswith("-redis")]
    if v["redis"]["enabled"]:
        expect(len(redis_sts) == 1, "bundled Redis StatefulSet")
        expect(envs["SIGNAL_REDIS_URL"] == f"redis://{redis_sts[0]['metadata']['name']}:6379", "nodes use bundled Redis")
    else:
        expect(not redis_sts, "no bundled Redis when redis.enabled=false")
        want = v["redis"]["external"]["url"] or None
        if want:
            expect(envs["SIGNAL_REDIS_URL"] == want and env_map(cc)["CENTRAL_REDIS_URL"] == want, "external Redis URL")
        else:
            expect(envs["SIGNAL_REDIS_URL"]["secretKeyRef"]["name"] == v["redis"]["external"]["existingSecret"],
                   "external Redis URL from its Secret")
        facts.append("external Redis")

    # PDBs, HPA, ServiceMonitors.
    expect(len(by_kind(objs, "PodDisruptionBudget")) == 2, "a PodDisruptionBudget for central and for the nodes")
    hpas = by_kind(objs, "HorizontalPodAutoscaler")
    if n["autoscaling"]["enabled"]:
        expect(len(hpas) == 1 and hpas[0]["spec"]["scaleTargetRef"]["kind"] == "StatefulSet", "HPA on the StatefulSet")
        expect("replicas" not in sts["spec"], "StatefulSet leaves replicas to the HPA")
        facts.append("HPA")
    else:
        expect(not hpas, "no HPA unless enabled")
        expect(sts["spec"]["replicas"] == n["replicaCount"], "node replicas")
    sms = by_kind(objs, "ServiceMonitor")
    if v["serviceMonitor"]["enabled"]:
        expect(len(sms) == 2, "ServiceMonitors for central and nodes")
        for sm in sms:
            sel = sm["spec"]["selector"]["matchLabels"]
            matching = [s for s in by_kind(objs, "Service")
                        if all(s["metadata"].get("labels", {}).get(k) == val for k, val in sel.items())]
            expect(len(matching) == 1, f"ServiceMonitor {sm['metadata']['name']} selects {len(matching)} Services (want 1)")
            ports = [p["name"] for p in matching[0]["spec"]["ports"]]
            expect(sm["spec"]["endpoints"][0]["port"] in ports, "ServiceMonitor port exists on the Service")
        facts.append("ServiceMonitors")
    else:
        expect(not sms, "no ServiceMonitor unless enabled")
    # NetworkPolicies: the gRPC ports of central and the nodes only from this release's pods.
    nps = by_kind(objs, "NetworkPolicy")
    if v["networkPolicy"]["enabled"]:
        expect(len(nps) == 2, "a NetworkPolicy for central and for the nodes")
        for np_ in nps:
            sel = np_["spec"]["podSelector"]["matchLabels"]
            comp = sel.get("app.kubernetes.io/component")
            grpc = c["service"]["grpcPort"] if comp == "central" else n["grpcPort"]
            expect(any(all(t["metadata"].get("labels", {}).get(k) == val for k, val in sel.items())
                       for _, t in templates), f"NetworkPolicy {np_['metadata']['name']} selects no pods")
            rules = [r for r in np_["spec"]["ingress"] if any(p["port"] == grpc for p in r.get("ports", []))]
            expect(len(rules) == 1 and rules[0].get("from"), f"{comp}: gRPC port {grpc} open only to listed peers")
            inst = rules[0]["from"][0]["podSelector"]["matchLabels"].get("app.kubernetes.io/instance")
            expect(inst == objs[0]["metadata"]["labels"].get("app.kubernetes.io/instance"),
                   f"{comp}: gRPC peers are the release's own pods")
        facts.append("NetworkPolicies")
    else:
        expect(not nps, "no NetworkPolicy unless enabled")
    # Mutual TLS of the internal gRPC: the files mounted, https URLs; plain http otherwise.
    nc = sts["spec"]["template"]["spec"]["containers"][0]
    nargs = arg_map(nc)
    scheme = "https://" if v["grpcTls"]["enabled"] else "http://"
    expect(nargs["--central"].startswith(scheme) and nargs["--grpc-advertise"].startswith(scheme),
           f"node gRPC URLs use {scheme}")
    for cont, prefix in ((cc, "CENTRAL"), (nc, "SIGNAL")):
        envs_ = env_map(cont)
        has = all(f"{prefix}_GRPC_TLS_{k}" in envs_ for k in ("CERT", "KEY", "CA"))
        expect(has == bool(v["grpcTls"]["enabled"]), f"{prefix}_GRPC_TLS_* iff grpcTls.enabled")
        if has:
            mounts = {m["mountPath"] for m in cont.get("volumeMounts", [])}
            expect(all(envs_[f"{prefix}_GRPC_TLS_{k}"].rsplit("/", 1)[0] in mounts for k in ("CERT", "KEY", "CA")),
                   f"{prefix} TLS files are mounted")
    if v["grpcTls"]["enabled"]:
        facts.append("gRPC mTLS")
    notes = [t for p, t in render_cache[name].items() if p.endswith("NOTES.txt")]
    expect(bool(notes) and "/v1/endpoint?user=" in notes[0], "NOTES.txt tells how to log in")
    expect(("OPEN LOGIN" in notes[0]) == open_login and ("Bearer $JWT" in notes[0]) == (not open_login),
           "NOTES.txt says whether login is open or needs a JWT")
    smoke = [o for o in by_kind(objs, "Pod") if o["metadata"]["name"].endswith("-loadgen-smoke")]
    if smoke:
        lenv = env_map(smoke[0]["spec"]["containers"][0])
        expect(("LOADGEN_JWT_SECRET" in lenv) == (not open_login), "helm test's loadgen mints JWTs unless openLogin")
        if v["jwt"]["audience"] and not open_login:
            expect(lenv.get("LOADGEN_JWT_AUDIENCE") == v["jwt"]["audience"], "helm test's loadgen JWTs carry the audience")
    return ", ".join(facts)


render_cache: dict[str, dict[str, str]] = {}


def chart_checks(r: Report) -> list[dict[str, Any]]:
    """Returns every rendered object of every variant (for the flags check)."""
    import helm_python as helm

    all_objs: list[dict[str, Any]] = []

    def lint(values: dict[str, Any]) -> str:
        rep = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version="v" + KUBE_VERSION)
        msgs = [m for m in rep.get("messages", []) if m.get("severity", 0) >= 2]
        infos = [m for m in rep.get("messages", []) if m.get("severity", 0) < 2]
        if rep.get("errors") or msgs:
            raise CheckError(json.dumps({"errors": rep.get("errors"), "messages": msgs})[:2000])
        expect(rep.get("total_charts_linted") == 1, f"linted {rep.get('total_charts_linted')} charts")
        return f"{len(infos)} info" if infos else ""

    for name, values in VARIANTS.items():
        r.check(f"chart: helm lint --strict [{name}]", lambda values=values: lint(values))

        def do_render(name: str = name, values: dict[str, Any] = values) -> str:
            render_cache[name] = render(values)
            objs = objects_of(render_cache[name])
            for o in objs:
                o["metadata"]["_variant"] = name
            all_objs.extend(objs)
            kinds = sorted({o["kind"] for o in objs})
            return f"{len(objs)} objects: {', '.join(kinds)}"

        r.check(f"chart: render [{name}]", do_render)
        if name not in render_cache:
            continue
        objs = [o for o in all_objs if o["metadata"].get("_variant") == name]
        plain = [o for o in objs if o["kind"] != "ServiceMonitor"]
        sms = [o for o in objs if o["kind"] == "ServiceMonitor"]
        r.check(f"chart: kubernetes-validate [{name}]", lambda plain=plain: kubernetes_validate(
            [{k: val for k, val in o.items()} for o in plain]))
        if sms:
            print(f"note ServiceMonitor is a CRD that kubernetes-validate does not know: "
                  f"{len(sms)} checked against deploy/schemas/servicemonitor.schema.json instead", flush=True)
            r.check(f"chart: ServiceMonitor schema [{name}]", lambda sms=sms: validate_servicemonitors(sms))
        r.check(f"chart: promises [{name}]", lambda name=name, values=values, objs=objs: chart_semantics(name, values, objs))

    # Negative: the checks above must bite.
    for what, bad in BAD_VALUES.items():
        def refused(bad: dict[str, Any] = bad, reasons: list[str] = BAD_REASONS.get(what, [])) -> str:
            with helm.Chart.load(str(CHART)) as chart:
                try:
                    chart.validate_schema(bad)
                except helm.HelmValuesError as e:
                    first = str(e).strip().splitlines()
                    detail = first[1].strip() if len(first) > 1 else first[0]
                    missing = [r for r in reasons if r not in str(e)]
                    expect(not missing, f"refused, but the error does not name {missing}: {e}")
                    if reasons:
                        detail = "; ".join(ln.strip() for ln in first[2:])[:200]
                else:
                    raise CheckError("values.schema.json accepted it")
                try:
                    chart.render(bad, name=RELEASE, namespace=NAMESPACE, is_install=True)
                except (helm.HelmValuesError, helm.HelmRenderError):
                    pass
                else:
                    raise CheckError("render (install) accepted it")
            rep = helm.lint(str(CHART), bad, strict=True)
            expect(bool(rep.get("errors")) or any(m.get("severity", 0) >= 3 for m in rep.get("messages", [])),
                   "helm lint accepted it")
            return detail

        r.check(f"chart negative: bad value refused [{what}]", refused)

    def unknown_field_refused() -> str:
        sts = copy.deepcopy(next(o for o in all_objs if o["kind"] == "StatefulSet" and o["metadata"]["name"].endswith("-node")))
        sts["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/healthz"
        try:
            kubernetes_validate([sts])
        except CheckError as e:
            return str(e).split("|")[0][:160]
        raise CheckError("kubernetes-validate --strict accepted an unknown field")

    r.check("chart negative: unknown field refused by kubernetes-validate --strict", unknown_field_refused)

    def bad_sm_refused() -> str:
        sms = [o for o in all_objs if o["kind"] == "ServiceMonitor"]
        expect(bool(sms), "no ServiceMonitor rendered")
        sm = copy.deepcopy(sms[0])
        del sm["spec"]["endpoints"][0]["port"]
        sm["spec"]["endpoints"][0]["interval"] = "thirty seconds"
        try:
            validate_servicemonitors([sm])
        except CheckError as e:
            return str(e)[:160]
        raise CheckError("the ServiceMonitor schema accepted a broken endpoint")

    r.check("chart negative: broken ServiceMonitor refused by its schema", bad_sm_refused)
    return all_objs


# ---------------------------------------------------------------------------------------------
# docker-compose
# ---------------------------------------------------------------------------------------------

def compose_config(path: Path, env: dict[str, str] | None = None, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [tool("docker-compose"), "-f", str(path), "--project-directory", str(ROOT), "config"]
    if quiet:
        cmd.append("-q")
    return run(cmd, env=env, timeout=60)


def compose_checks(r: Report) -> dict[str, Any]:
    resolved: dict[str, Any] = {}

    def config_q() -> str:
        p = compose_config(COMPOSE, quiet=True)
        expect(p.returncode == 0, f"exit {p.returncode}: {p.stderr.strip()[:1000]}")
        full = compose_config(COMPOSE)
        expect(full.returncode == 0, full.stderr[:500])
        resolved.update(yaml.safe_load(full.stdout))
        return f"{len(resolved['services'])} services"

    r.check("compose: docker-compose config -q", config_q)
    if not resolved:
        return resolved

    def promises() -> str:
        svcs = resolved["services"]
        redis = svcs.get("redis")
        expect(redis is not None and "healthcheck" in redis, "redis with a healthcheck")
        expect(svcs["central"]["depends_on"]["redis"]["condition"] == "service_healthy", "central waits for healthy redis")
        # Login is authenticated by default: the demo says --open-login out loud, or has a JWT secret.
        central_cmd = svcs["central"].get("command") or []
        central_env = svcs["central"].get("environment") or {}
        open_login = "--open-login" in central_cmd or str(central_env.get("CENTRAL_OPEN_LOGIN", "")).lower() in ("true", "1")
        expect(open_login != ("CENTRAL_JWT_SECRET" in central_env), "central: exactly one of --open-login or CENTRAL_JWT_SECRET")
        expect(not open_login or "OPEN LOGIN" in COMPOSE.read_text(), "the open login of the demo is documented in the file")
        nodes = {k: s for k, s in svcs.items() if s.get("command", [None])[0] == "signal-node"}
        expect(len(nodes) == 3, f"three signal nodes, found {sorted(nodes)}")
        weights, host_ports, adverts = set(), set(), set()
        for k, s in nodes.items():
            a = dict(x.split("=", 1) for x in s["command"][1:] if x.startswith("--") and "=" in x)
            weights.add(a.get("--weight"))
            ports = s.get("ports", [])
            expect(len(ports) == 1, f"{k}: one published port")
            hp = str(ports[0].get("published")) if isinstance(ports[0], dict) else str(ports[0]).split(":")[0]
            host_ports.add(hp)
            adv = a.get("--advertise-url", "")
            expect(adv.endswith(f":{hp}/ws"), f"{k}: advertised URL {adv} uses its host port {hp}")
            adverts.add(adv)
            expect(a.get("--grpc-advertise") == f"http://{k}:9091", f"{k}: --grpc-advertise")
            expect(s["depends_on"]["redis"]["condition"] == "service_healthy", f"{k} waits for redis")
            expect(s["depends_on"]["central"]["condition"] == "service_healthy", f"{k} waits for central")
            expect("healthcheck" in s, f"{k} has a healthcheck")
        expect(len(weights) == 3 and None not in weights, f"distinct weights {weights}")
        expect(len(host_ports) == 3 and len(adverts) == 3, "distinct host ports and advertised URLs")
        lg = svcs.get("loadgen")
        expect(lg is not None and lg.get("profiles") == ["loadgen"], "loadgen under the loadgen profile")
        expect(all(d["condition"] == "service_healthy" for d in lg["depends_on"].values()), "loadgen waits for healthy nodes")
        return f"weights {sorted(weights)}, host ports {sorted(host_ports)}"

    r.check("compose: promises (healthchecks, depends_on, 3 distinct nodes, loadgen profile)", promises)

    def one_secret() -> str:
        p = compose_config(COMPOSE, env={"CLUSTER_SECRET": "probe-secret-123"})
        expect(p.returncode == 0, p.stderr[:500])
        svcs = yaml.safe_load(p.stdout)["services"]
        got = {k: (s.get("environment") or {}).get("CENTRAL_SECRET") or (s.get("environment") or {}).get("SIGNAL_SECRET")
               for k, s in svcs.items() if k not in ("redis", "loadgen", "coturn")}
        expect(set(got.values()) == {"probe-secret-123"}, f"CLUSTER_SECRET does not reach every service: {got}")
        text = COMPOSE.read_text()
        expect(text.count("${CLUSTER_SECRET") == 1, "CLUSTER_SECRET is referenced in exactly one place")
        return f"{len(got)} services"

    r.check("compose: cluster secret from one place (CLUSTER_SECRET)", one_secret)

    def turn_secret() -> str:
        p = compose_config(COMPOSE, env={"TURN_SECRET": "probe-turn-secret-123", "TURN_URLS": "turn:localhost:3478"})
        expect(p.returncode == 0, p.stderr[:500])
        svcs = yaml.safe_load(p.stdout)["services"]
        central_env, coturn = svcs["central"]["environment"], svcs.get("coturn")
        expect(central_env.get("CENTRAL_TURN_SECRET") == "probe-turn-secret-123", "TURN_SECRET reaches central")
        expect(central_env.get("CENTRAL_TURN_URLS") == "turn:localhost:3478", "TURN_URLS reaches central")
        expect(coturn is not None and coturn.get("profiles") == ["turn"], "coturn under the turn profile")
        expect((coturn.get("environment") or {}).get("TURN_SECRET") == "probe-turn-secret-123", "TURN_SECRET reaches coturn")
        cmd = " ".join(coturn.get("command") or [])
        # (`config` prints `$$` for a literal `$`: the shell in the container expands it.)
        expect("--use-auth-secret" in cmd and '--static-auth-secret="$$TURN_SECRET"' in cmd,
               "coturn checks TURN REST credentials with $TURN_SECRET")
        expect(COMPOSE.read_text().count("${TURN_SECRET") == 1, "TURN_SECRET is referenced in exactly one place")
        return "central and coturn"

    r.check("compose: TURN secret from one place (TURN_SECRET) for central and coturn", turn_secret)

    text = COMPOSE.read_text()
    # (what, broken file, a word the error must name: refused for the right reason)
    mutations = {
        "broken YAML": (text.replace("services:\n", "services:\n  : [\n", 1), "yaml"),
        "unknown service key": (re.sub(r"(?m)^  central:\n", "  central:\n    restartt: always\n", text, count=1),
                                "restartt"),
        "depends_on an unknown service": (text.replace("      redis:\n        condition: service_healthy\n",
                                                       "      rediss:\n        condition: service_healthy\n", 1), "rediss"),
        "bad healthcheck condition": (text.replace("condition: service_healthy", "condition: healthy", 1), "condition"),
    }
    for what, (broken, word) in mutations.items():
        def refused(broken: str = broken, word: str = word) -> str:
            expect(broken != text, "mutation did not apply")
            with tempfile.TemporaryDirectory() as d:
                f = Path(d) / "docker-compose.yml"
                f.write_text(broken)
                p = compose_config(f, quiet=True)
            msg = " ".join(p.stderr.replace(str(f), "docker-compose.yml").split())
            expect(p.returncode != 0, "docker-compose config -q accepted it")
            expect(word in msg.lower(), f"refused, but not for {word!r}: {msg[:300]}")
            return msg[:160]

        r.check(f"compose negative: {what} refused", refused)
    return resolved


# ---------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------

def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return run([tool("hadolint"), "--failure-threshold", "error", "--no-color", str(path)], timeout=60)


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """Instructions per stage: [(INSTRUCTION, rest)], continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    stages: list[list[tuple[str, str]]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instr, rest.strip()))
    return stages


def dockerignore_patterns() -> list[str]:
    pats = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            pats.append(line.rstrip("/"))
    return pats


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: a path is excluded when it or a parent matches (last match wins)."""
    parts = rel.strip("/").split("/")
    result = False
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatchcase(prefix, p) or (p.startswith("**/") and
                                                  any(fnmatch.fnmatchcase("/".join(parts[j:i]), p[3:]) for j in range(i))):
                result = not neg
                break
    return result


def build_inputs() -> list[tuple[str, str]]:
    """Files the cargo build reads besides the crates' src/: (where it is referenced, path)."""
    out = [("workspace", "Cargo.toml"), ("workspace", "Cargo.lock")]
    meta = cargo_metadata()
    for pkg in meta["packages"]:
        crate_dir = Path(pkg["manifest_path"]).parent
        out.append((pkg["name"], str(crate_dir.relative_to(ROOT))))
        for src in crate_dir.rglob("*.rs"):
            if "target" in src.parts:
                continue
            text = src.read_text(errors="replace")
            for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"', text):
                p = (src.parent / m.group(1)).resolve()
                out.append((str(src.relative_to(ROOT)), str(p.relative_to(ROOT)) if ROOT in p.parents else m.group(1)))
            for m in re.finditer(r'#\[folder\s*=\s*"([^"]+)"', text):
                f = m.group(1).replace("$CARGO_MANIFEST_DIR", str(crate_dir))
                p = (crate_dir / f).resolve() if not os.path.isabs(f) else Path(f).resolve()
                out.append((str(src.relative_to(ROOT)), str(p.relative_to(ROOT)) if ROOT in p.parents else f))
    return out


_metadata: dict[str, Any] = {}


def cargo_metadata() -> dict[str, Any]:
    if not _metadata:
        p = run(["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"], timeout=120)
        if p.returncode != 0:
            p = run(["cargo", "metadata", "--no-deps", "--format-version", "1"], timeout=120)
        expect(p.returncode == 0, f"cargo metadata failed: {p.stderr[:500]}")
        _metadata.update(json.loads(p.stdout))
    return _metadata


def docker_checks(r: Report) -> None:
    def lint() -> str:
        p = hadolint(DOCKERFILE)
        findings = [ln for ln in p.stdout.splitlines() if ln.strip()]
        expect(p.returncode == 0, f"exit {p.returncode}: {' | '.join(findings)[:1500]} {p.stderr[:300]}")
        return f"{len(findings)} findings below error" if findings else "no findings"

    r.check("docker: hadolint --failure-threshold error", lint)

    def runtime_stage() -> str:
        text = DOCKERFILE.read_text()
        stages = dockerfile_stages(text)
        expect(len(stages) >= 2, "multi-stage build")
        final = stages[-1]
        base = final[0][1].split()[0]
        expect(re.search(r"(slim|distroless)", base) is not None, f"small runtime base, got {base}")
        users = [rest for instr, rest in final if instr == "USER"]
        expect(bool(users) and users[-1].split(":")[0] not in ("root", "0"), f"runtime runs as non-root, USER {users}")
        exposed = {p.split("/")[0] for instr, rest in final if instr == "EXPOSE" for p in rest.split()}
        expect({"8080", "9090", "8090", "9091"} <= exposed, f"EXPOSE {sorted(exposed)}")
        builder_text = " ".join(rest for st in stages[:-1] for _, rest in st)
        expect("cargo chef cook" in builder_text or "dummy" in builder_text, "a cached dependency layer (cargo chef cook)")
        cook = builder_text.find("cargo chef cook")
        copy_all = builder_text.find(". .", cook)
        expect(cook != -1 and copy_all > cook, "dependencies are cooked before the sources are copied")
        bins = sorted(t["name"] for pkg in cargo_metadata()["packages"] for t in pkg["targets"] if "bin" in t["kind"])
        expect(set(BINARIES) <= set(bins), f"workspace binaries {bins}")
        for b in bins:
            expect(f"target/release/{b}" in text, f"binary {b} is not copied out of the builder")
        expect("protoc" not in re.sub(r"#.*", "", text).replace("protox", ""), "no system protoc installed")
        return f"base {base}, user {users[-1]}, binaries {', '.join(bins)}"

    r.check("docker: runtime stage (slim, non-root, ports, cached deps, all binaries)", runtime_stage)

    def context() -> str:
        pats = dockerignore_patterns()
        for must in ("target", ".git"):
            expect(ignored(must, pats), f".dockerignore should exclude {must}")
        inputs = build_inputs()
        bad = [(who, p) for who, p in inputs if ignored(p, pats)]
        expect(not bad, f"the build reads files that .dockerignore excludes: {bad}")
        missing = [(who, p) for who, p in inputs if not (ROOT / p).exists()]
        expect(not missing, f"build inputs missing: {missing}")
        return f"{len(inputs)} build inputs in the context"

    r.check("docker: .dockerignore keeps every build input and drops target/.git", context)

    def lock_current() -> str:
        # The image builds with --locked: a Cargo.lock that needs an update fails the build.
        p = run(["cargo", "metadata", "--locked", "--format-version", "1"], timeout=180)
        expect(p.returncode == 0, " ".join(p.stderr.split())[:600])
        return "cargo metadata --locked"

    r.check("docker: Cargo.lock is current (the image builds with --locked)", lock_current)

    text = DOCKERFILE.read_text()
    # (what, broken file, what hadolint must say)
    mutations = {
        "relative WORKDIR (DL3000)": (text.replace("WORKDIR /var/lib/signal", "WORKDIR var/lib/signal", 1), "DL3000"),
        "unparsable instruction": (text.replace("EXPOSE ", "EXPOSE-PORTS ", 1), "missing whitespace"),
        "COPY to a relative dir with multiple sources (DL3021)": (text.replace(
            "COPY --from=builder /out/ /usr/local/bin/", "COPY --from=builder /out/central /out/loadgen bin", 1), "DL3021"),
    }
    for what, (broken, word) in mutations.items():
        def refused(broken: str = broken, word: str = word) -> str:
            expect(broken != text, "mutation did not apply")
            with tempfile.TemporaryDirectory() as d:
                f = Path(d) / "Dockerfile"
                f.write_text(broken)
                p = hadolint(f)
            out = (p.stdout + p.stderr).replace(str(f), "Dockerfile")
            expect(p.returncode != 0, "hadolint accepted it")
            expect(word in out, f"refused, but not with {word!r}: {out[:300]}")
            return " ".join(out.split())[:160]

        r.check(f"docker negative: {what} refused", refused)


# ---------------------------------------------------------------------------------------------
# Flags: every flag and env var we pass exists in the binary's --help
# ---------------------------------------------------------------------------------------------

def help_flags(text: str) -> tuple[set[str], set[str]]:
    flags = set(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)", text))
    envs = set(re.findall(r"\[env:\s*([A-Z0-9_]+)", text))
    return flags, envs


def usage_from_command(binary: str, argv: Iterable[str], env: Iterable[str], where: str,
                       into: dict[str, dict[str, set[str]]]) -> None:
    u = into.setdefault(binary, {"flags": set(), "envs": set(), "where": set()})
    u["where"].add(where)
    for a in argv:
        if isinstance(a, str) and a.startswith("--"):
            u["flags"].add(a.split("=", 1)[0])
    for e in env:
        if e.startswith(ENV_PREFIXES[binary]):
            u["envs"].add(e)


def require_bins() -> bool:
    """In CI the binaries exist: a missing or help-less one is a failure, not a skip."""
    return os.environ.get("DEPLOY_REQUIRE_BINS", "1" if os.environ.get("CI") == "true" else "0") == "1"


def binary_of(cmd: list[Any]) -> str | None:
    if cmd and isinstance(cmd[0], str) and os.path.basename(cmd[0]) in BINARIES:
        return os.path.basename(cmd[0])
    return None


def collect_usage(compose: dict[str, Any], chart_objs: list[dict[str, Any]]) -> dict[str, dict[str, set[str]]]:
    usage: dict[str, dict[str, set[str]]] = {}
    # Dockerfile CMD / ENTRYPOINT (exec form).
    for stage in dockerfile_stages(DOCKERFILE.read_text())[-1:]:
        for instr, rest in stage:
            if instr in ("CMD", "ENTRYPOINT") and rest.startswith("["):
                argv = json.loads(rest)
                b = binary_of(argv)
                if b:
                    usage_from_command(b, argv[1:], [], f"Dockerfile {instr}", usage)
    # Compose services.
    for name, svc in compose.get("services", {}).items():
        cmd = svc.get("command") or []
        if isinstance(cmd, str):
            cmd = cmd.split()
        b = binary_of(cmd)
        if b:
            usage_from_command(b, cmd[1:], (svc.get("environment") or {}).keys(), f"compose {name}", usage)
    # Chart containers (every variant).
    for owner, tmpl in pod_templates(chart_objs):
        for ctr in tmpl["spec"].get("containers", []):
            argv = list(ctr.get("command") or []) + list(ctr.get("args") or [])
            b = binary_of(argv)
            if b:
                usage_from_command(b, argv[1:], [e["name"] for e in ctr.get("env", [])],
                                   f"chart {owner['kind']}/{owner['metadata']['name']}", usage)
    return usage


def missing_in_help(used: dict[str, set[str]], help_text: str) -> list[str]:
    flags, envs = help_flags(help_text)
    return sorted(used["flags"] - flags) + sorted(used["envs"] - envs)


def flags_checks(r: Report, compose: dict[str, Any], chart_objs: list[dict[str, Any]]) -> None:
    usage = collect_usage(compose, chart_objs)
    require = require_bins()
    for b in BINARIES:
        used = usage.get(b)

        def check(b: str = b, used: dict[str, set[str]] | None = used) -> str:
            expect(used is not None, f"{b} is used nowhere in the deployment files")
            exe = ROOT / "target" / "debug" / b
            if not exe.exists():
                msg = f"target/debug/{b} does not exist (cargo build --bins failed or was skipped)"
                if require:
                    raise CheckError(msg)
                raise Skip(msg)
            p = run([str(exe), "--help"], timeout=30, env={"RUST_LOG": "off"})
            text = p.stdout + p.stderr
            if p.returncode != 0 or "--help" not in text:
                msg = f"target/debug/{b} --help prints no clap help yet (exit {p.returncode}, {len(text)} bytes)"
                if require:
                    raise CheckError(msg)
                raise Skip(msg)
            miss = missing_in_help(used, text)
            expect(not miss, f"not in `{b} --help`: {', '.join(miss)} (used in {', '.join(sorted(used['where']))})")
            return f"{len(used['flags'])} flags, {len(used['envs'])} env vars from {len(used['where'])} places"

        r.check(f"flags: {b}", check)

    def bites() -> str:
        fake_help = "Usage: x [OPTIONS]\n      --weight <W>  weight [env: SIGNAL_WEIGHT=]\n  -h, --help\n"
        used = {"flags": {"--weight", "--no-such-flag"}, "envs": {"SIGNAL_WEIGHT", "SIGNAL_NO_SUCH"}, "where": {"test"}}
        miss = missing_in_help(used, fake_help)
        expect(miss == ["--no-such-flag", "SIGNAL_NO_SUCH"], f"checker found {miss}")
        # And the collector sees the flags the files really pass.
        for b, flag in (("signal-node", "--grpc-advertise"), ("central", "--http-listen"), ("loadgen", "--central")):
            expect(flag in usage.get(b, {}).get("flags", set()), f"collector missed {b} {flag}")
        return "an unknown flag and env var are reported"

    r.check("flags negative: an unknown flag is reported", bites)


# ---------------------------------------------------------------------------------------------
# Smoke run: the compose topology as real processes on loopback (no Docker engine here)
# ---------------------------------------------------------------------------------------------

_PORTS: list[int] = []


def free_port() -> int:
    """A port free on 127.0.0.1, below the kernel's ephemeral range (as testkit's free_port):
    an outgoing connection cannot take it before the process started on it binds."""
    import random
    import socket

    if not _PORTS:
        try:
            with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
                ephemeral = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            ephemeral = 32768
        _PORTS.extend(range(10000, max(10000, ephemeral)))
        random.shuffle(_PORTS)
    while _PORTS:
        port = _PORTS.pop()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (OSError, ValueError) as e:
        return 0, str(e)


class Loopback:
    """Maps (compose service, container port) and published host ports to loopback ports."""

    def __init__(self, services: dict[str, Any]) -> None:
        self.services = services
        self.ports: dict[tuple[str, int], int] = {}
        self.published: dict[int, tuple[str, int]] = {}
        for name, svc in services.items():
            for p in svc.get("ports", []) or []:
                if isinstance(p, dict):
                    self.published[int(p["published"])] = (name, int(p["target"]))
                else:
                    host, _, target = str(p).rpartition(":")
                    self.published[int(host.split(":")[-1])] = (name, int(target))

    def port(self, svc: str, port: int) -> int:
        return self.ports.setdefault((svc, port), free_port())

    def rewrite(self, me: str, s: str) -> str:
        def listen(m: re.Match[str]) -> str:
            return f"127.0.0.1:{self.port(me, int(m.group(1)))}"

        def peer(m: re.Match[str]) -> str:
            host, port = m.group(1), int(m.group(2))
            if host in self.services:
                return f"127.0.0.1:{self.port(host, port)}"
            if host in ("localhost", "127.0.0.1") and port in self.published:
                return f"127.0.0.1:{self.port(*self.published[port])}"
            return m.group(0)

        s = re.sub(r"0\.0\.0\.0:(\d+)", listen, s)
        return re.sub(r"(?<=[/=@])([A-Za-z0-9][-A-Za-z0-9.]*):(\d+)", peer, s)


def smoke_checks(r: Report) -> None:
    """Starts redis, central, the nodes and loadgen with compose's own commands and env."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = Path(tempfile.mkdtemp(prefix="deploy-smoke-"))

    def ready_binaries() -> None:
        for b in BINARIES:
            exe = ROOT / "target" / "debug" / b
            p = run([str(exe), "--help"], timeout=30) if exe.exists() else None
            if p is None or "--help" not in p.stdout + p.stderr:
                msg = f"target/debug/{b} is missing or has no --help yet"
                if require_bins():
                    raise CheckError(msg)
                raise Skip(msg)
        if not shutil.which("redis-server"):
            raise Skip("redis-server is not installed")

    def start(name: str, argv: list[str], env: dict[str, str]) -> None:
        out = open(logs / f"{name}.log", "wb")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("CENTRAL_", "SIGNAL_", "LOADGEN_"))}
        full_env.update(env)
        procs[name] = subprocess.Popen(argv, cwd=logs, env=full_env, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(name: str, url: str, timeout: float = 30.0) -> None:
        import time

        deadline = time.monotonic() + timeout
        status, body = 0, ""
        while time.monotonic() < deadline:
            if procs[name].poll() is not None:
                raise CheckError(f"{name} exited {procs[name].returncode}: {tail(name)}")
            status, body = http_get(url)
            if status == 200:
                return
            time.sleep(0.2)
        raise CheckError(f"{name} not ready at {url} after {timeout}s ({status} {body[:200]}): {tail(name)}")

    def tail(name: str) -> str:
        try:
            return " | ".join((logs / f"{name}.log").read_text(errors="replace").splitlines()[-5:])[-800:]
        except OSError:
            return ""

    def stop_all() -> None:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)

    def run_cluster() -> str:
        import time

        ready_binaries()
        p = compose_config(COMPOSE, env={"LOADGEN_PAIRS": "10", "LOADGEN_DURATION": "3", "CLUSTER_SECRET": "smoke-secret-0123456789"})
        expect(p.returncode == 0, p.stderr[:300])
        services = yaml.safe_load(p.stdout)["services"]
        lb = Loopback(services)
        bin_dir = ROOT / "target" / "debug"

        def argv_env(name: str) -> tuple[list[str], dict[str, str]]:
            svc = services[name]
            cmd = [lb.rewrite(name, str(a)) for a in svc["command"]]
            cmd[0] = str(bin_dir / cmd[0])
            env = {k: lb.rewrite(name, str(v)) for k, v in (svc.get("environment") or {}).items()}
            return cmd, env

        rp = lb.port("redis", 6379)
        start("redis", ["redis-server", "--port", str(rp), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {})
        deadline = time.monotonic() + 10
        while run(["redis-cli", "-p", str(rp), "ping"], timeout=5).stdout.strip() != "PONG":
            expect(time.monotonic() < deadline, "redis-server did not start")
            time.sleep(0.1)
        cmd, env = argv_env("central")
        start("central", cmd, env)
        central_http = f"http://127.0.0.1:{lb.port('central', 8080)}"
        wait_ready("central", central_http + "/readyz")
        nodes = sorted(k for k, s in services.items() if s.get("command", [None])[0] == "signal-node")
        want = {}
        for n in nodes:
            cmd, env = argv_env(n)
            start(n, cmd, env)
            a = dict(x.split("=", 1) for x in cmd[1:] if x.startswith("--") and "=" in x)
            want[n] = (a["--advertise-url"], int(a["--weight"]))
        for n in nodes:
            wait_ready(n, f"http://127.0.0.1:{lb.port(n, 8090)}/readyz")

        # central sees the three nodes with their weights and advertised URLs.
        deadline = time.monotonic() + 15
        got: dict[str, tuple[str, int]] = {}
        while time.monotonic() < deadline:
            status, body = http_get(central_http + "/v1/nodes")
            if status == 200:
                data = json.loads(body)
                listed = data["nodes"] if isinstance(data, dict) else data
                got = {x["id"]: (x["url"], int(x["weight"])) for x in listed if x.get("state", "active") == "active"}
                if got == want:
                    break
            time.sleep(0.3)
        expect(got == want, f"/v1/nodes lists {got}, want {want}")

        status, body = http_get(central_http + "/v1/endpoint?user=smoke-alice")
        expect(status == 200 and json.loads(body).get("url") in {u for u, _ in want.values()}, f"login: {status} {body[:200]}")

        # loadgen exactly as the compose file runs it (short run via its LOADGEN_* knobs).
        cmd, env = argv_env("loadgen")
        start("loadgen", cmd, env)
        try:
            rc = procs["loadgen"].wait(timeout=90)
        except subprocess.TimeoutExpired:
            raise CheckError(f"loadgen did not finish in 90 s: {tail('loadgen')}")
        expect(rc == 0, f"loadgen exited {rc}: {tail('loadgen')}")

        # A stopped node drains and exits 0 within compose's stop_grace_period.
        grace = services[nodes[0]].get("stop_grace_period", "10s")
        grace_s = float(re.sub(r"[^0-9.]", "", str(grace)) or 10)
        procs[nodes[0]].terminate()
        try:
            rc = procs[nodes[0]].wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            raise CheckError(f"{nodes[0]} still running {grace_s}s after SIGTERM (stop_grace_period)")
        expect(rc == 0, f"{nodes[0]} exited {rc} after SIGTERM: {tail(nodes[0])}")
        return f"{len(nodes)} nodes registered with weights {sorted(w for _, w in want.values())}, loadgen ok, drain exit 0"

    try:
        r.check("smoke: compose topology as local processes (redis, central, 3 nodes, loadgen)", run_cluster)
    finally:
        stop_all()
        shutil.rmtree(logs, ignore_errors=True)


# ---------------------------------------------------------------------------------------------

def self_tests(r: Report) -> None:
    """deploy/test_validate.py: the helpers above on known inputs."""
    import unittest

    def run_tests() -> str:
        sys.path.insert(0, str(ROOT / "deploy"))
        suite = unittest.defaultTestLoader.loadTestsFromName("test_validate")
        result = unittest.TextTestRunner(stream=open(os.devnull, "w"), verbosity=0).run(suite)
        problems = [f"{t.id()}: {tb.strip().splitlines()[-1]}" for t, tb in result.failures + result.errors]
        expect(result.wasSuccessful(), "; ".join(problems)[:1500])
        return f"{result.testsRun} tests"

    r.check("validator self-tests (deploy/test_validate.py)", run_tests)


def main() -> int:
    r = Report()
    self_tests(r)
    print(f"== chart ({CHART.relative_to(ROOT)})", flush=True)
    try:
        chart_objs = chart_checks(r)
    except Exception as e:
        r.fail("chart", f"{type(e).__name__}: {e}")
        chart_objs = []
    print("== compose", flush=True)
    compose = compose_checks(r)
    print("== docker", flush=True)
    docker_checks(r)
    print("== flags", flush=True)
    flags_checks(r, compose, chart_objs)
    print("== smoke", flush=True)
    smoke_checks(r)
    tail = f", {r.skipped} skipped" if r.skipped else ""
    print(f"deploy: {r.passed} passed, {r.failed} failed{tail}", flush=True)
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
