#!/usr/bin/env python3
"""Checks the Helm chart (deploy/helm/posflow) the way a reviewing SRE would, with the real helm:

- `helm lint --strict` with the default values and every ci/*-values.yaml scenario;
- `helm template` of each, every built-in manifest validated against the Kubernetes schema
  (kubernetes-validate, strict); the KEDA and Prometheus Operator kinds checked by shape;
- over the rendered output: every pod non-root with a read-only root filesystem and no
  capabilities; every container's binary is one the image ships (deploy/docker/Dockerfile) and
  the workspace builds, and its subcommand exists; every POSFLOW_* variable is one a binary reads;
  no Secret rendered and no credential in a ConfigMap; grace period longer than the drain;
  probes on /healthz and /readyz; one StatefulSet, Service, PDB and HPA or ScaledObject per stage;
- the schema refuses bad values (a wrong type, an unknown key, an unknown enum) — proven by
  helm failing on them;
- README.md documents every values key, and nothing values.yaml lacks;
- the monitoring files (files/alerts.yaml, files/dashboard.json) pass `promtool check rules` and name only metrics of the
  catalogue (docs/metrics.md), every alert has a severity, a summary and a runbook section that
  exists in docs/operations.md; the PrometheusRule, dashboard ConfigMap and tracing variables are
  rendered exactly when their values ask for them;
- the checks themselves catch what they claim: each is run on a copy of the default rendering
  with one defect put in (root user, writable root, unknown binary, short grace, a Secret, a
  credential in a ConfigMap, a missing probe) and must report it.

Usage: check_chart.py HELM PROMTOOL [BIN_DIR]   (BIN_DIR: built binaries, to check subcommands)
"""
import glob
import json
import os
import re
import subprocess
import sys

import tempfile

import kubernetes_validate
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHART = os.path.join(ROOT, "deploy", "helm", "posflow")
K8S_VERSION = "1.34.0"
STAGES = ["bridge", "validator", "storage", "fraud", "notifier", "api", "lake"]
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}

failures = []
PROMTOOL = "promtool"


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}")


def helm(helm_bin, *args, ok=True):
    r = subprocess.run([helm_bin, *args], capture_output=True, text=True)
    if ok and r.returncode != 0:
        raise SystemExit(f"helm {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return r


def render(helm_bin, values_file):
    args = ["template", "posflow", CHART, "--namespace", "posflow"]
    if values_file:
        args += ["-f", values_file]
    out = helm(helm_bin, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def image_binaries():
    text = open(os.path.join(ROOT, "deploy", "docker", "Dockerfile")).read()
    copied = set(re.findall(r"target/release/(posflow-[a-z]+)", text))
    built = set(re.findall(r"-p (posflow-[a-z]+)", text))
    if copied != built:
        fail(f"Dockerfile builds {sorted(built)} but copies {sorted(copied)}")
    workspace = set()
    for manifest in glob.glob(os.path.join(ROOT, "services", "*", "Cargo.toml")):
        name = re.search(r'^name = "([^"]+)"', open(manifest).read(), re.M).group(1)
        if os.path.exists(os.path.join(os.path.dirname(manifest), "src", "main.rs")):
            workspace.add(name)
    if copied != workspace:
        fail(f"the image ships {sorted(copied)}, the workspace builds binaries {sorted(workspace)}")
    # `COPY . .` must not send gigabytes of local build output to the builder.
    ignored = open(os.path.join(ROOT, ".dockerignore")).read().split()
    if "target" not in ignored:
        fail(".dockerignore does not exclude target/")
    return copied


def env_vars_read():
    names = set()
    for path in glob.glob(os.path.join(ROOT, "services", "**", "*.rs"), recursive=True):
        names |= set(re.findall(r'env = "(POSFLOW_[A-Z0-9_]+)"', open(path).read()))
    return names


def pod_specs(doc):
    kind = doc["kind"]
    if kind in ("StatefulSet", "Deployment", "Job"):
        return [doc["spec"]["template"]["spec"]]
    if kind == "Pod":
        return [doc["spec"]]
    return []


def check_pods(name, docs, binaries, known_env, bin_dir):
    for doc in docs:
        for spec in pod_specs(doc):
            where = f"{name}: {doc['kind']} {doc['metadata']['name']}"
            psc = spec.get("securityContext", {})
            if psc.get("runAsNonRoot") is not True or psc.get("runAsUser", 0) == 0:
                fail(f"{where}: pod not non-root ({psc})")
            if spec.get("automountServiceAccountToken") is not False:
                fail(f"{where}: mounts a service account token")
            for c in spec.get("initContainers", []) + spec["containers"]:
                csc = c.get("securityContext", {})
                if not (csc.get("readOnlyRootFilesystem") and csc.get("allowPrivilegeEscalation") is False
                        and "ALL" in csc.get("capabilities", {}).get("drop", [])):
                    fail(f"{where}/{c['name']}: container security context {csc}")
                if "resources" not in c:
                    fail(f"{where}/{c['name']}: no resources")
                cmd = c.get("command", [])
                if c["image"] != posflow_image(docs):
                    continue  # the helm test's image, a sidecar of the user's
                if not cmd or cmd[0] not in binaries:
                    fail(f"{where}/{c['name']}: command {cmd} is not a binary of the image")
                elif len(cmd) > 1 and bin_dir:
                    helptext = subprocess.run([os.path.join(bin_dir, cmd[0]), "--help"],
                                              capture_output=True, text=True).stdout
                    if not re.search(rf"^\s+{re.escape(cmd[1])}\s", helptext, re.M):
                        fail(f"{where}/{c['name']}: {cmd[0]} has no subcommand {cmd[1]}")
                for e in c.get("env", []):
                    if e["name"].startswith("POSFLOW_") and e["name"] not in known_env:
                        fail(f"{where}/{c['name']}: {e['name']} is read by no binary")
                    if "value" in e and re.search(r"://[^/\s]*:[^@/\s]+@", str(e["value"])):
                        fail(f"{where}/{c['name']}: {e['name']} holds a credential in clear")


def posflow_image(docs):
    """The image every posflow container runs: the bridge's (or the first stage's)."""
    sts = [d for d in docs if d["kind"] == "StatefulSet"]
    return sts[0]["spec"]["template"]["spec"]["containers"][0]["image"] if sts else None


def check_stages(name, docs, values):
    by_kind = {}
    for d in docs:
        comp = d["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        by_kind.setdefault((d["kind"], comp), []).append(d)
    for stage in STAGES:
        s = values["stages"][stage]
        sts = by_kind.get(("StatefulSet", stage), [])
        if not s["enabled"]:
            if sts:
                fail(f"{name}: {stage} disabled but rendered")
            continue
        if len(sts) != 1:
            fail(f"{name}: {stage}: {len(sts)} StatefulSets")
            continue
        pod = sts[0]["spec"]["template"]["spec"]
        c = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in c["env"]}
        drain = int(env.get("POSFLOW_DRAIN_TIMEOUT", "20"))
        if pod.get("terminationGracePeriodSeconds", 30) <= drain:
            fail(f"{name}: {stage}: grace period {pod.get('terminationGracePeriodSeconds')} <= drain {drain}")
        if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz" or \
           c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
            fail(f"{name}: {stage}: probes are not /healthz and /readyz")
        if env.get("POSFLOW_HTTP_ADDR") != "0.0.0.0:9464":
            fail(f"{name}: {stage}: the health endpoint is not reachable from the kubelet")
        spread = {c["topologyKey"] for c in pod.get("topologySpreadConstraints", [])
                  if c["labelSelector"]["matchLabels"].get("app.kubernetes.io/component") == stage}
        if values["spreadPods"] and spread != {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}:
            fail(f"{name}: {stage}: replicas not spread across nodes and zones ({spread})")
        if len(by_kind.get(("Service", stage), [])) != 1:
            fail(f"{name}: {stage}: no Service")
        if s["pdb"]["enabled"] != bool(by_kind.get(("PodDisruptionBudget", stage))):
            fail(f"{name}: {stage}: PodDisruptionBudget does not follow pdb.enabled")
        keda = s["keda"]["enabled"] and stage not in ("bridge", "api")
        hpa = bool(by_kind.get(("HorizontalPodAutoscaler", stage)))
        so = bool(by_kind.get(("ScaledObject", stage)))
        if so != keda or hpa != (s["autoscaling"]["enabled"] and not keda):
            fail(f"{name}: {stage}: HPA {hpa}, ScaledObject {so} for autoscaling {s['autoscaling']['enabled']}, keda {keda}")
        if (hpa or so) == ("replicas" in sts[0]["spec"]):
            fail(f"{name}: {stage}: replicas set although autoscaled (or missing)")
    for d in docs:
        if d["kind"] == "Secret":
            fail(f"{name}: renders a Secret ({d['metadata']['name']}): secrets are by reference only")
        if d["kind"] == "ConfigMap":
            text = json.dumps(d.get("data", {}))
            if re.search(r"password|secret|PRIVATE KEY|://[^/\s]*:[^@/\s]+@", text, re.I):
                fail(f"{name}: ConfigMap {d['metadata']['name']} holds something secret-looking")
        if d["kind"] == "ScaledObject":
            t = d["spec"]["triggers"][0]
            if t["type"] != "kafka" or not t["metadata"].get("consumerGroup") or \
               d["spec"]["scaleTargetRef"]["kind"] != "StatefulSet":
                fail(f"{name}: ScaledObject {d['metadata']['name']} malformed")
            check_keda_auth(name, docs, values, d)
        if d["kind"] == "ServiceMonitor" and d["spec"]["endpoints"][0]["port"] != "http-metrics":
            fail(f"{name}: ServiceMonitor {d['metadata']['name']} scrapes no metrics port")


KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


def check_keda_auth(name, docs, values, scaled):
    """A ScaledObject reads lag the way the stages connect: SASL and TLS as kafka.* say, the
    credentials and CA by reference through the chart's TriggerAuthentication."""
    kafka = values["kafka"]
    proto = kafka["securityProtocol"]
    t = scaled["spec"]["triggers"][0]
    where = f"{name}: ScaledObject {scaled['metadata']['name']}"
    want_sasl = KEDA_SASL[kafka["sasl"]["mechanism"]] if proto.startswith("sasl") else None
    if t["metadata"].get("sasl") != want_sasl:
        fail(f"{where}: sasl {t['metadata'].get('sasl')!r}, kafka.* say {want_sasl!r}")
    if t["metadata"].get("tls") != ("enable" if proto.endswith("ssl") else None):
        fail(f"{where}: tls {t['metadata'].get('tls')!r} for {proto}")
    want = set()
    if proto.startswith("sasl"):
        sasl = kafka["sasl"]
        want |= {("username", sasl["existingSecret"], sasl["usernameKey"]),
                 ("password", sasl["existingSecret"], sasl["passwordKey"])}
    if kafka["tls"]["existingSecret"]:
        want.add(("ca", kafka["tls"]["existingSecret"], kafka["tls"]["caKey"]))
    ref = (t.get("authenticationRef") or {}).get("name")
    auth = [d for d in docs if d["kind"] == "TriggerAuthentication" and d["metadata"]["name"] == ref]
    got = {(r["parameter"], r["name"], r["key"]) for a in auth for r in a["spec"]["secretTargetRef"]}
    if got != want or (want and len(auth) != 1):
        fail(f"{where}: authentication {sorted(got)} (via {ref!r}), kafka.* need {sorted(want)}")


def mirrored(values, ref):
    """An image reference with global.imageRegistry in place of its registry, as Docker reads one."""
    registry = (values.get("global") or {}).get("imageRegistry")
    if not registry:
        return ref
    parts = ref.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    return registry.rstrip("/") + "/" + "/".join(parts)


def check_platform(name, docs, values):
    """What an SRE's platform sets reaches every resource it should, and nothing else changes."""
    chart_name = values["nameOverride"] or "posflow"
    image = values["image"]
    want_image = mirrored(values, f"{image['repository']}@{image['digest']}" if image["digest"] else
                          f"{image['repository']}:{image['tag'] or chart_app_version()}")
    for d in docs:
        meta = d["metadata"]
        where = f"{name}: {d['kind']} {meta['name']}"
        if values["fullnameOverride"] and not meta["name"].startswith(values["fullnameOverride"]):
            fail(f"{where}: name without fullnameOverride {values['fullnameOverride']!r}")
        labels, notes = meta.get("labels", {}), meta.get("annotations") or {}
        if labels.get("app.kubernetes.io/name") != chart_name:
            fail(f"{where}: app.kubernetes.io/name {labels.get('app.kubernetes.io/name')!r}")
        for k, v in values["commonLabels"].items():
            if labels.get(k) != v:
                fail(f"{where}: commonLabels {k} missing")
        for k, v in values["commonAnnotations"].items():
            if notes.get(k) != v:
                fail(f"{where}: commonAnnotations {k} missing")
        if d["kind"] == "ServiceAccount" and any(
                notes.get(k) != v for k, v in values["serviceAccount"]["annotations"].items()):
            fail(f"{where}: serviceAccount.annotations missing")
        for spec in pod_specs(d):
            comp = labels.get("app.kubernetes.io/component")
            stage = values["stages"].get(comp) if d["kind"] == "StatefulSet" else None
            pod_labels = (d["spec"]["template"] if "template" in d["spec"] else d)["metadata"]["labels"]
            want_labels = {**values["commonLabels"], **values["podLabels"], **((stage or {}).get("podLabels") or {})}
            if any(pod_labels.get(k) != v for k, v in want_labels.items()):
                fail(f"{where}: pod labels {pod_labels} lack {want_labels}")
            want_pc = ((stage or {}).get("priorityClassName") or values["priorityClassName"]) or None
            if spec.get("priorityClassName") != want_pc:
                fail(f"{where}: priorityClassName {spec.get('priorityClassName')!r}, values say {want_pc!r}")
            for c in spec.get("initContainers", []) + spec["containers"]:
                if comp == "test":
                    if c["image"] != mirrored(values, values["tests"]["image"]):
                        fail(f"{where}: test image {c['image']}")
                elif c.get("command", [""])[0].startswith("posflow-") and c["image"] != want_image:
                    fail(f"{where}/{c['name']}: image {c['image']}, values say {want_image}")
            if stage:
                check_stage_extras(where, spec, values, stage)


def check_stage_extras(where, spec, values, stage):
    main = spec["containers"][0]
    names = lambda items: [i["name"] for i in items]  # noqa: E731
    if not all(e in main.get("env", []) for e in stage["extraEnv"]):
        fail(f"{where}: extraEnv not in the environment")
    if not all(e in main.get("envFrom", []) for e in stage["extraEnvFrom"]):
        fail(f"{where}: extraEnvFrom not in envFrom")
    if not set(names(stage["extraVolumes"])) <= set(names(spec.get("volumes", []))):
        fail(f"{where}: extraVolumes not mounted as volumes")
    if not all(m in main.get("volumeMounts", []) for m in stage["extraVolumeMounts"]):
        fail(f"{where}: extraVolumeMounts not in volumeMounts")
    if names(spec["containers"][1:]) != names(stage["extraContainers"]):
        fail(f"{where}: containers {names(spec['containers'])}, extraContainers {names(stage['extraContainers'])}")
    for probe, key in (("startupProbe", "startup"), ("livenessProbe", "liveness"), ("readinessProbe", "readiness")):
        want = {**values["probes"][key], **(stage["probes"].get(key) or {})}
        got = {k: v for k, v in main[probe].items() if k != "httpGet"}
        if got != want:
            fail(f"{where}: {probe} {got}, values say {want}")


def chart_app_version():
    return yaml.safe_load(open(os.path.join(CHART, "Chart.yaml")))["appVersion"]


def catalogue():
    text = open(os.path.join(ROOT, "docs", "metrics.md")).read()
    return set(re.findall(r"^\| `(posflow_[a-z_]+)` \|", text, re.M))


def monitoring_files():
    alerts = yaml.safe_load(open(os.path.join(CHART, "files", "alerts.yaml")))
    dashboard = json.load(open(os.path.join(CHART, "files", "dashboard.json")))
    return alerts, dashboard


def metric_names(expr, known):
    """The posflow metric families an expression reads (histogram series → their family)."""
    names = set()
    for n in re.findall(r"\bposflow_[a-z_]+", expr):
        base = re.sub(r"_(bucket|sum|count)$", "", n)
        names.add(base if base in known and n not in known else n)
    return names


def check_monitoring(alerts, dashboard):
    known = catalogue()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", open(os.path.join(ROOT, "docs", "operations.md")).read(), re.M)}
    rules = [r for g in alerts["groups"] for r in g["rules"]]
    if not rules:
        fail("alerts.yaml has no rules")
    for r in rules:
        name = r.get("alert", "?")
        for unknown in sorted(metric_names(r.get("expr", ""), known) - known):
            fail(f"alert {name}: {unknown} is not in docs/metrics.md")
        if r.get("labels", {}).get("severity") not in ("warning", "critical"):
            fail(f"alert {name}: severity must be warning or critical")
        if not r.get("for") or not r.get("annotations", {}).get("summary"):
            fail(f"alert {name}: needs a `for` and a summary")
        runbook = r.get("annotations", {}).get("runbook", "")
        if not runbook.startswith("docs/operations.md#") or runbook.split("#", 1)[1] not in anchors:
            fail(f"alert {name}: runbook {runbook!r} is no section of docs/operations.md")
    # promtool parses every expression: the alerts as they are, the panels' queries as
    # recording rules (what a Prometheus would refuse, it refuses).
    panels = [{"record": f"posflow:panel_{p['id']}_{i}", "expr": t.get("expr", "")}
              for p in dashboard["panels"] for i, t in enumerate(p.get("targets", []))]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump({"groups": alerts["groups"] + [{"name": "dashboard", "rules": panels}]}, f)
        f.flush()
        r = subprocess.run([PROMTOOL, "check", "rules", f.name], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"promtool check rules on the alerts and the dashboard's queries:\n{r.stdout}{r.stderr}")
    ids = [p["id"] for p in dashboard["panels"]]
    if len(ids) != len(set(ids)):
        fail("dashboard: panel ids repeat")
    for p in dashboard["panels"]:
        if not p.get("targets"):
            fail(f"dashboard panel {p['title']}: no queries")
        for t in p.get("targets", []):
            for unknown in sorted(metric_names(t.get("expr", ""), known) - known):
                fail(f"dashboard panel {p['title']}: {unknown} is not in docs/metrics.md")
    for f in ("alerts.yaml", "dashboard.json"):
        link = os.path.join(ROOT, "deploy", "observability", f)
        if os.path.realpath(link) != os.path.join(CHART, "files", f):
            fail(f"deploy/observability/{f} is not the chart's files/{f}")


def check_optional(name, docs, values):
    """The monitoring resources and tracing variables follow their values."""
    alerts, dashboard = monitoring_files()
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    if values["metrics"]["prometheusRule"]["enabled"]:
        if len(rules) != 1 or rules[0]["spec"] != alerts:
            fail(f"{name}: one PrometheusRule holding files/alerts.yaml expected")
    elif rules:
        fail(f"{name}: PrometheusRule rendered while disabled")
    boards = [d for d in docs if d["kind"] == "ConfigMap" and "posflow.json" in (d.get("data") or {})]
    if values["metrics"]["grafanaDashboard"]["enabled"]:
        want = values["metrics"]["grafanaDashboard"]["labels"]
        if len(boards) != 1 or json.loads(boards[0]["data"]["posflow.json"]) != dashboard or \
                any(boards[0]["metadata"]["labels"].get(k) != v for k, v in want.items()):
            fail(f"{name}: one dashboard ConfigMap with files/dashboard.json and its labels expected")
    elif boards:
        fail(f"{name}: dashboard ConfigMap rendered while disabled")
    lake = [d for d in docs if d["kind"] == "StatefulSet"
            and d["metadata"]["labels"].get("app.kubernetes.io/component") == "lake"]
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    if lake:
        pod = lake[0]["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        volume = next((v for v in pod["volumes"] if v["name"] == "lake"), {})
        claim = volume.get("persistentVolumeClaim", {}).get("claimName")
        if mounts.get("lake") != env.get("POSFLOW_LAKE_ROOT") or claim is None:
            fail(f"{name}: the lake's root {env.get('POSFLOW_LAKE_ROOT')} is not its volume's mount {mounts.get('lake')}")
        shared = values["lake"]["existingClaim"] or \
            (claim in claims and "ReadWriteMany" in claims[claim]["spec"]["accessModes"])
        several = lake[0]["spec"].get("replicas", 2) > 1
        if several and not shared:
            fail(f"{name}: several lake replicas on claim {claim}, which is not ReadWriteMany")
        if not values["lake"]["existingClaim"] and claim not in claims:
            fail(f"{name}: the lake's claim {claim} is not rendered")
        if claim in claims and claims[claim]["metadata"].get("annotations", {}).get("helm.sh/resource-policy") != "keep":
            fail(f"{name}: the lake's claim would be deleted on uninstall")
    elif claims:
        fail(f"{name}: a PersistentVolumeClaim without the lake: {sorted(claims)}")
    endpoint = values["tracing"]["otlpEndpoint"]
    for d in docs:
        if d["kind"] != "StatefulSet":
            continue
        env = {e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
        if env.get("POSFLOW_OTLP_ENDPOINT") != (endpoint or None):
            fail(f"{name}: {d['metadata']['name']} POSFLOW_OTLP_ENDPOINT {env.get('POSFLOW_OTLP_ENDPOINT')!r}, "
                 f"values say {endpoint!r}")


def first(docs, kind, component=None):
    return next(d for d in docs if d["kind"] == kind and
                (component is None or d["metadata"]["labels"].get("app.kubernetes.io/component") == component))


def sts_pod(docs):
    return first(docs, "StatefulSet", "bridge")["spec"]["template"]["spec"]


# One defect each, put into a copy of the default rendering: the checks must report every one.
DEFECTS = {
    "root user": lambda d: sts_pod(d)["securityContext"].update(runAsUser=0),
    "writable root filesystem": lambda d: sts_pod(d)["containers"][0]["securityContext"].update(
        readOnlyRootFilesystem=False),
    "binary not in the image": lambda d: sts_pod(d)["containers"][0].update(command=["posflow-gateway"]),
    "grace period within the drain": lambda d: sts_pod(d).update(terminationGracePeriodSeconds=20),
    "no readiness probe": lambda d: sts_pod(d)["containers"][0].pop("readinessProbe"),
    "replicas not spread": lambda d: sts_pod(d).pop("topologySpreadConstraints"),
    "unknown variable": lambda d: sts_pod(d)["containers"][0]["env"].append(
        {"name": "POSFLOW_TYPO", "value": "1"}),
    "a rendered Secret": lambda d: d.append({"kind": "Secret", "metadata": {"name": "leak"}}),
    "a password in a ConfigMap": lambda d: first(d, "ConfigMap").update(
        data={"smtp": "smtps://user:hunter2@mail:465"}),
}


# One defect each in a copy of the monitoring files: check_monitoring must report every one.
MONITORING_DEFECTS = {
    "an alert on an unknown metric": lambda a, d: a["groups"][0]["rules"][0].update(
        expr="rate(posflow_bridge_recieved_total[5m]) > 0"),
    "an alert without a runbook": lambda a, d: a["groups"][0]["rules"][0]["annotations"].pop("runbook"),
    "an alert without severity": lambda a, d: a["groups"][0]["rules"][0]["labels"].pop("severity"),
    "a panel on an unknown metric": lambda a, d: d["panels"][0]["targets"][0].update(
        expr="sum(rate(posflow_storage_writes_total[1m]))"),
    "an alert that is not PromQL": lambda a, d: a["groups"][0]["rules"][1].update(
        expr="sum by (stage (rate(posflow_processing_seconds_count[5m]))"),
}


def catches(check):
    """Whether `check` (run quietly) reports a failure; the real failures are left as they were."""
    global failures
    real, failures = failures, []
    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            check()
        finally:
            sys.stdout = stdout
    caught, failures = bool(failures), real
    return caught


def self_test(docs, binaries, known_env, bin_dir, values):
    def monitoring(put_in):
        alerts, dashboard = monitoring_files()
        put_in(alerts, dashboard)
        check_monitoring(alerts, dashboard)

    def rendering(put_in):
        mutated = json.loads(json.dumps(docs))
        put_in(mutated)
        check_pods("self-test", mutated, binaries, known_env, bin_dir)
        check_stages("self-test", mutated, values)

    cases = [(n, lambda p=p: monitoring(p)) for n, p in MONITORING_DEFECTS.items()] + \
            [(n, lambda p=p: rendering(p)) for n, p in DEFECTS.items()]
    for name, check in cases:
        if catches(check):
            print(f"ok   the checks catch {name}")
        else:
            fail(f"the checks miss {name}")


# One defect each in a copy of ci/sre-values.yaml's rendering: check_platform must report every one.
PLATFORM_DEFECTS = {
    "a resource without commonLabels": lambda d: first(d, "ConfigMap")["metadata"]["labels"].pop("team"),
    "a resource without commonAnnotations": lambda d: first(d, "Service")["metadata"].pop("annotations"),
    "a posflow image not from the mirror": lambda d: sts_pod(d)["containers"][0].update(
        image="ghcr.io/posflow/posflow:0.1.0"),
    "a pod without its PriorityClass": lambda d: sts_pod(d).pop("priorityClassName"),
    "a sidecar dropped": lambda d: sts_pod(d)["containers"].pop(),
    "a probe's timing lost": lambda d: sts_pod(d)["containers"][0]["startupProbe"].update(failureThreshold=60),
    "a ScaledObject without its TriggerAuthentication": lambda d: first(d, "ScaledObject")["spec"][
        "triggers"][0].pop("authenticationRef"),
    "the service account without its IAM annotation": lambda d: first(d, "ServiceAccount")["metadata"][
        "annotations"].clear(),
}


def platform_self_test(docs, values):
    def rendering(put_in):
        mutated = json.loads(json.dumps(docs))
        put_in(mutated)
        check_platform("self-test", mutated, values)
        check_stages("self-test", mutated, values)

    for name, put_in in PLATFORM_DEFECTS.items():
        if catches(lambda p=put_in: rendering(p)):
            print(f"ok   the checks catch {name}")
        else:
            fail(f"the checks miss {name}")


def merged_values(helm_bin, values_file):
    args = ["show", "values", CHART]
    base = yaml.safe_load(helm(helm_bin, *args).stdout)
    if not values_file:
        return base

    def merge(a, b):
        for k, v in b.items():
            if isinstance(v, dict) and isinstance(a.get(k), dict):
                merge(a[k], v)
            else:
                a[k] = v
        return a
    return merge(base, yaml.safe_load(open(values_file)) or {})


# Maps documented as one value (their keys are the user's).
OPAQUE = {"resources", "labels", "env", "nodeSelector", "affinity", "podAnnotations",
          "podSecurityContext", "securityContext", "commonLabels", "commonAnnotations", "podLabels",
          "annotations", "probes"}


def value_paths(values, prefix=""):
    """Every leaf of values.yaml as a dotted path; the stages share one shape, `stages.<stage>`."""
    for k, v in values.items():
        if prefix == "stages.":
            if k == STAGES[0]:
                yield from value_paths(v, "stages.<stage>.")
            continue
        if isinstance(v, dict) and k not in OPAQUE:
            yield from value_paths(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def main():
    global PROMTOOL
    helm_bin = sys.argv[1]
    PROMTOOL = sys.argv[2]
    bin_dir = sys.argv[3] if len(sys.argv) > 3 else None
    binaries = image_binaries()
    known_env = env_vars_read()
    scenarios = [("default", None)] + [
        (os.path.basename(f), f) for f in sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml")))]
    summary = {}
    for name, values_file in scenarios:
        lint = ["lint", "--strict", CHART] + (["-f", values_file] if values_file else [])
        r = helm(helm_bin, *lint, ok=False)
        if r.returncode != 0:
            fail(f"{name}: helm lint --strict:\n{r.stdout}{r.stderr}")
            continue
        docs = render(helm_bin, values_file)
        for d in docs:
            if d["kind"] in CRD_KINDS:
                continue
            try:
                kubernetes_validate.validate(d, K8S_VERSION, strict=True)
            except Exception as e:  # ValidationError, SchemaNotFoundError
                fail(f"{name}: {d['kind']} {d['metadata']['name']}: {str(e).splitlines()[0]}")
        check_pods(name, docs, binaries, known_env, bin_dir)
        values = merged_values(helm_bin, values_file)
        check_stages(name, docs, values)
        check_optional(name, docs, values)
        check_platform(name, docs, values)
        if values_file is None:
            self_test(docs, binaries, known_env, bin_dir, values)
        if name == "sre-values.yaml":
            platform_self_test(docs, values)
        counts = {}
        for d in docs:
            comp = d["metadata"].get("labels", {}).get("app.kubernetes.io/component", "shared")
            counts.setdefault(comp, {}).setdefault(d["kind"], 0)
            counts[comp][d["kind"]] += 1
        summary[name] = counts
        print(f"ok   {name}: {len(docs)} manifests valid against Kubernetes {K8S_VERSION}")

    check_monitoring(*monitoring_files())
    print("ok   alerts and dashboard name only catalogue metrics; every alert has its runbook")

    # The schema refuses what it should: each of these must make helm fail.
    for bad in ["stages.bridge.replicas=many", "kafka.securityProtocol=tls", "stages.fraud.color=blue",
                "image.pullPolicy=Sometimes", "stages.notifier.drainTimeoutSeconds=0", "unknownTopLevel=1",
                "tracing.otlpEndpoint=collector:4318", "tracing.sampleRatio=2", "image.digest=latest",
                "probes.liveness.exec=true", "stages.bridge.probes.startup.httpGet=x",
                "stages.bridge.extraContainers[0].image=x", "nameOverride=Not_A_Name"]:
        r = helm(helm_bin, "template", "posflow", CHART, "--set", bad, ok=False)
        if r.returncode == 0 or "schema" not in (r.stderr + r.stdout).lower():
            fail(f"the schema accepted --set {bad}")
        else:
            print(f"ok   schema refuses --set {bad}")

    readme = open(os.path.join(CHART, "README.md")).read()
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, re.M))
    paths = set(value_paths(yaml.safe_load(open(os.path.join(CHART, "values.yaml")))))
    for path in sorted(paths - documented):
        fail(f"README.md does not document `{path}`")
    for path in sorted(documented - paths):
        fail(f"README.md documents `{path}`, which values.yaml does not have")
    print("rendered kinds per component:")
    for name, counts in summary.items():
        print(f"  {name}: " + "; ".join(f"{c} " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
                                       for c, kinds in sorted(counts.items())))
    if failures:
        print(f"{len(failures)} chart checks failed")
        sys.exit(1)
    print("chart checks passed")


if __name__ == "__main__":
    main()
