#!/usr/bin/env bash
# Peregrine on a local kind cluster: build the images, load them, install the kind overlay,
# provoke a few behaviours and show the alerts. Needs Docker, kind and kubectl.
# It cannot run on the project's CI machines (no Docker engine, no registry); CI checks the
# same manifests offline (deploy/check.py) and runs the agent image through containerd's CRI
# under the DaemonSet's security context (agent/tests/image.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=${CLUSTER:-peregrine}

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
docker build -f deploy/images/agent.Dockerfile -t localhost/peregrine-agent:dev .
docker build -f deploy/images/collector.Dockerfile -t localhost/peregrine-collector:dev .
kind load docker-image --name "$CLUSTER" localhost/peregrine-agent:dev localhost/peregrine-collector:dev

kubectl apply -k deploy/kustomize/overlays/kind
kubectl -n peregrine rollout status statefulset/peregrine-collector --timeout=180s
kubectl -n peregrine rollout status daemonset/peregrine-agent --timeout=180s

# Behaviours: a shadow-file read in a pod (rule "Read of a shadow password file"), a metadata
# service query (rule "Cloud metadata fetched from a container"; kind has no metadata service,
# the attempt is what counts).
kubectl run peregrine-demo --image=busybox:1.36 --restart=Never --command -- sleep 600
kubectl wait --for=condition=Ready pod/peregrine-demo --timeout=120s
kubectl exec peregrine-demo -- cat /etc/shadow >/dev/null || true
kubectl exec peregrine-demo -- wget -q -T 2 -O- http://169.254.169.254/metadata/instance >/dev/null 2>&1 || true

echo "--- alerts (collector stdout) ---"
for _ in $(seq 1 30); do
  if kubectl -n peregrine logs statefulset/peregrine-collector --tail=2000 | grep -q '"alert"'; then
    kubectl -n peregrine logs statefulset/peregrine-collector --tail=2000 | grep '"alert"'
    exit 0
  fi
  sleep 2
done
echo "no alert within 60 s; agent logs:" >&2
kubectl -n peregrine logs daemonset/peregrine-agent --tail=50 >&2
exit 1
