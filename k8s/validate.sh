#!/usr/bin/env bash
# Validates the manifests in this directory offline: the Kubernetes OpenAPI schemas bundled in
# the kubernetes-validate package (strict: unknown fields are errors), for the oldest version
# with native sidecars on by default (1.29) and the newest the package knows; then the rules
# of snapback's deployment that no schema knows (see README.md).
#
# The PrometheusRule (prometheus-rules.yaml) is a CRD of the Prometheus Operator, which
# kubernetes-validate has no schema for (it would only warn and pass it): it is left out of the
# schema check, and its rule groups are checked with promtool instead (check rules, and the unit
# cases in tests/prometheus/rules_test.yaml).
#
# Needs: pip install 'kubernetes-validate==1.37.0'   (PyYAML comes with it)
#        promtool (Debian's prometheus package; .ci/setup installs it)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
validator=$(command -v kubernetes-validate || true)
if [ -z "$validator" ] && [ -x "$HOME/.local/bin/kubernetes-validate" ]; then
    validator=$HOME/.local/bin/kubernetes-validate
fi
[ -n "$validator" ] || { echo "kubernetes-validate not installed: pip install 'kubernetes-validate==1.37.0'" >&2; exit 2; }
# The rules below need the Python that has PyYAML (kubernetes-validate's own). A pip script's
# shebang names it; a pyenv shim (a bash script) does not, and then python3 is that Python.
py=$(head -1 "$validator" | sed -n 's/^#!//p')
case "${py%% *}" in
    */python*) [ -x "${py%% *}" ] || py=python3 ;;
    *) py=python3 ;;
esac

shopt -s nullglob
files=("$here"/*.yaml)
[ ${#files[@]} -gt 0 ] || { echo "no manifests in $here" >&2; exit 1; }
schema_files=()
for f in "${files[@]}"; do
    if grep -q '^apiVersion: monitoring.coreos.com/' "$f"; then
        echo "$(basename "$f"): Prometheus Operator CRD, no bundled schema: schema not checked, rules checked with promtool below"
    else
        schema_files+=("$f")
    fi
done
for version in 1.29.0 ""; do
    "$validator" --strict --quiet ${version:+-k "$version"} "${schema_files[@]}"
done

promtool=$(command -v promtool || true)
[ -n "$promtool" ] || { echo "promtool not installed: run .ci/setup (Debian's prometheus package)" >&2; exit 2; }
rules_dir=$(mktemp -d)
trap 'rm -rf "$rules_dir"' EXIT
# The spec of each PrometheusRule is a Prometheus rules file.
$py - "$rules_dir" "${files[@]}" <<'PY'
import sys, yaml
out = sys.argv[1]
n = 0
for path in sys.argv[2:]:
    with open(path) as f:
        for d in (d for d in yaml.safe_load_all(f) if d):
            if d.get("kind") != "PrometheusRule":
                continue
            spec = d.get("spec", {})
            if set(spec) != {"groups"}:
                sys.exit(f"{path}: a PrometheusRule spec has only groups, not {sorted(spec)}")
            for g in spec["groups"]:
                for r in g.get("rules", []):
                    if "alert" in r and "severity" not in r.get("labels", {}):
                        sys.exit(f"{path}: alert {r['alert']} has no severity label")
            with open(f"{out}/snapback-rules.yaml", "w") as f:
                yaml.safe_dump(spec, f)
            n += 1
if n != 1:
    sys.exit(f"expected one PrometheusRule, found {n}")
PY
"$promtool" check rules "$rules_dir/snapback-rules.yaml"
cp "$here/../tests/prometheus/rules_test.yaml" "$rules_dir/"
"$promtool" test rules "$rules_dir/rules_test.yaml"

$py - "${files[@]}" <<'PY'
import sys, yaml

errors = []
def check(cond, msg):
    if not cond:
        errors.append(msg)

def check_cronjob(path, d):
    """Maintenance Jobs: never two at once, wait for the lock, password only as a file."""
    name = f"{path}: cronjob/{d['metadata']['name']}"
    check(d["spec"].get("concurrencyPolicy") == "Forbid", f"{name}: concurrencyPolicy Forbid")
    pod = d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, f"{name}: runAsNonRoot")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: seccomp RuntimeDefault")
    secret_vols = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        cname = f"{name}/{c['name']}"
        a = c.get("args", [])
        check("--retry-lock" in a, f"{cname}: --retry-lock, to wait for a sidecar's lock")
        env = {e["name"]: e for e in c.get("env", [])}
        check("RESTIC_PASSWORD" not in env, f"{cname}: the password as a file, not a literal env value")
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        pf = env.get("RESTIC_PASSWORD_FILE", {}).get("value", "")
        check(any(pf.startswith(p.rstrip("/") + "/") and n in secret_vols for p, n in mounts.items()),
              f"{cname}: RESTIC_PASSWORD_FILE in a volume mounted from a Secret")
        check(any(e.get("secretRef", {}).get("name") == "snapback-s3" for e in c.get("envFrom", [])),
              f"{cname}: the repository from the snapback-s3 Secret, as the sidecar")
        sc = c.get("securityContext", {})
        check(sc.get("allowPrivilegeEscalation") is False, f"{cname}: allowPrivilegeEscalation false")
        check(sc.get("readOnlyRootFilesystem") is True, f"{cname}: readOnlyRootFilesystem")
        check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{cname}: drop ALL capabilities")
        check("memory" in c.get("resources", {}).get("limits", {}), f"{cname}: memory limit")

for path in sys.argv[1:]:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for d in docs:
        if d.get("kind") == "CronJob":
            check_cronjob(path, d)
            continue
        if d.get("kind") != "StatefulSet":
            continue
        name = f"{path}: statefulset/{d['metadata']['name']}"
        pod = d["spec"]["template"]["spec"]
        inits = pod.get("initContainers", [])
        sidecars = [c for c in inits if c.get("restartPolicy") == "Always"]
        init = [c for c in inits if "init" in c.get("args", [])[:1]]
        check(len(sidecars) == 1 and sidecars[0]["args"][0] == "sidecar",
              f"{name}: one native sidecar (restartPolicy: Always) running `snapback sidecar`")
        check(len(init) == 1, f"{name}: one init container running `snapback init`")
        if init and sidecars:
            check(inits.index(init[0]) < inits.index(sidecars[0]),
                  f"{name}: the init container must come before the sidecar")
        for c in init + sidecars:
            a = c.get("args", [])
            check("--key-file" in a, f"{name}/{c['name']}: --key-file")
            check("--retry-lock" in a, f"{name}/{c['name']}: --retry-lock, to wait for a prune")
            env = {e["name"]: e for e in c.get("env", [])}
            for var, field in [("POD_UID", "metadata.uid"), ("POD_NAME", "metadata.name"),
                               ("POD_NAMESPACE", "metadata.namespace")]:
                got = env.get(var, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
                check(got == field, f"{name}/{c['name']}: {var} from the downward API ({field})")
            # The warm key is sealed to the Pod UID *and* a key secret from a mounted Secret.
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            secret_vols = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
            ksf = env.get("SNAPBACK_KEY_SECRET_FILE", {}).get("value", "")
            check(any(ksf.startswith(p.rstrip("/") + "/") and n in secret_vols for p, n in mounts.items()),
                  f"{name}/{c['name']}: SNAPBACK_KEY_SECRET_FILE in a volume mounted from a Secret")
            check("SNAPBACK_KEY_SECRET" not in env,
                  f"{name}/{c['name']}: the key secret as a file, not a literal env value")
            sc = c.get("securityContext", {})
            check(sc.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}: allowPrivilegeEscalation false")
            check(sc.get("readOnlyRootFilesystem") is True, f"{name}/{c['name']}: readOnlyRootFilesystem")
            check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}/{c['name']}: drop ALL capabilities")
            check("memory" in c.get("resources", {}).get("limits", {}), f"{name}/{c['name']}: memory limit")
        for c in sidecars:
            text = yaml.safe_dump(c)
            check("RESTIC_PASSWORD" not in text and "snapback-password" not in text,
                  f"{name}/{c['name']}: the sidecar must not get the repository password")
            env = {e["name"]: e for e in c.get("env", [])}
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            secret_vols = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
            tf = env.get("SNAPBACK_API_TOKEN_FILE", {}).get("value", "")
            check(any(tf.startswith(p.rstrip("/") + "/") and n in secret_vols for p, n in mounts.items()),
                  f"{name}/{c['name']}: SNAPBACK_API_TOKEN_FILE in a volume mounted from a Secret")
            check(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz",
                  f"{name}/{c['name']}: liveness on /healthz")
            check(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz",
                  f"{name}/{c['name']}: readiness on /readyz")
        psc = pod.get("securityContext", {})
        check(psc.get("runAsNonRoot") is True, f"{name}: runAsNonRoot")
        check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: seccomp RuntimeDefault")
        keyvols = [v for v in pod.get("volumes", [])
                   if v.get("emptyDir", {}).get("medium") == "Memory"]
        check(any(v["emptyDir"].get("sizeLimit") == "1Mi" for v in keyvols),
              f"{name}: the key volume is an emptyDir in memory with sizeLimit 1Mi")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"k8s manifests: schemas and snapback rules OK ({len(sys.argv) - 1} files)")
PY
