#!/usr/bin/env bash
# The Kubernetes backend's scenario on a real cluster: create, scale, roll under a streaming load,
# a worker restarted, a crash loop shown as failed with its log lines, then clean up.
#
#   deploy/k8s/check.sh [NAMESPACE]     (kubectl's current context; KUBECONFIG=... to choose)
#
# Needs: kubectl, curl, a namespace where deploy/k8s is applied (kubectl apply -k deploy/k8s -n NS)
# with both Secrets of secret.example.yaml filled in, and the portal answering. It creates the
# deployments "check-echo" and "check-broken" (canned engine: no model download) and deletes them.
# Not run here: no cluster is reachable from the machines that test this project.
set -euo pipefail

ns=${1:-default}
k() { kubectl -n "$ns" "$@"; }
manage() { k exec deploy/portal -- python manage.py "$@"; }
say() { printf '== %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }

# shellcheck disable=SC2329  # run by the EXIT trap
cleanup() {
  [ -n "${forward:-}" ] && kill "$forward" 2>/dev/null || true
  manage deploy delete check-echo >/dev/null 2>&1 || true
  manage deploy delete check-broken >/dev/null 2>&1 || true
}
trap cleanup EXIT

say "runkubeagent is running with its ServiceAccount"
k rollout status deploy/runkubeagent --timeout=120s
k auth can-i patch deployments.apps --as="system:serviceaccount:$ns:runkubeagent" >/dev/null \
  || fail "the runkubeagent Role does not allow patching deployments"
if k auth can-i get secrets --as="system:serviceaccount:$ns:runkubeagent" >/dev/null 2>&1; then
  fail "runkubeagent may read Secrets: its Role should not allow it"
fi

say "create: one canned replica"
manage deploy create check-echo --model-path canned --backend canned --replicas 1 \
  --runs-on kubernetes --extra-args '--canned-token-delay 0.02'
manage deploy wait --timeout 300
k get deploy worker-check-echo -o jsonpath='{.metadata.managedFields[*].manager}' \
  | grep -q modelportal-runkubeagent || fail "not applied under the runkubeagent field manager"

say "scale: two replicas through the scale subresource"
manage deploy scale check-echo 2
manage deploy wait --timeout 300
[ "$(k get deploy worker-check-echo -o jsonpath='{.spec.replicas}')" = 2 ] || fail "spec.replicas is not 2"

say "roll under a streaming load: no failed request"
key=$(manage shell -c "from registry.services.keys import create_api_key; print(create_api_key(name='check')[1])" | tail -1)
k port-forward svc/portal 18080:80 >/dev/null 2>&1 &
forward=$!
sleep 3
results=$(mktemp)
stream() {
  local body='{"model":"check-echo","messages":[{"role":"user","content":"hi"}],"max_tokens":8,"stream":true}'
  while [ ! -e "$results.done" ]; do
    if curl -fsS -N http://127.0.0.1:18080/v1/chat/completions -H "Authorization: Bearer $key" \
      -H 'Content-Type: application/json' -d "$body" | grep -q 'data: \[DONE\]'; then
      echo ok >>"$results"
    else
      echo failed >>"$results"
    fi
  done
}
for _ in 1 2 3 4; do stream & done
manage deploy restart check-echo
k rollout status deploy/worker-check-echo --timeout=300s
manage deploy wait --timeout 300
touch "$results.done"
wait_streams() { for job in $(jobs -p); do [ "$job" = "$forward" ] || wait "$job"; done; }
wait_streams
ok=$(grep -c '^ok$' "$results" || true)
failed=$(grep -c '^failed$' "$results" || true)
say "$ok requests answered, $failed failed"
[ "$failed" = 0 ] && [ "$ok" -gt 0 ] || fail "requests failed during the roll"

say "a worker that exits is restarted, and its restart counted"
pod=$(k get pods -l fleet.modelportal.io/deployment=check-echo -o jsonpath='{.items[0].metadata.name}')
k exec "$pod" -- kill -TERM 1
for _ in $(seq 60); do
  restarts=$(k get pod "$pod" -o jsonpath='{.status.containerStatuses[0].restartCount}')
  [ "$restarts" -ge 1 ] && break
  sleep 2
done
[ "$restarts" -ge 1 ] || fail "the container was not restarted"
manage deploy wait --timeout 300

say "scale down to one"
manage deploy scale check-echo 1
for _ in $(seq 60); do
  [ "$(k get pods -l fleet.modelportal.io/deployment=check-echo --no-headers | wc -l)" = 1 ] && break
  sleep 2
done

say "a crash loop shows as failed, with its log lines"
manage deploy create check-broken --model-path canned --backend canned --role prefill --replicas 1 \
  --runs-on kubernetes
for _ in $(seq 90); do
  if manage deploy list | grep '"name": "check-broken"' | grep -q '"failed": 1'; then
    manage shell -c "from fleet.models import Instance; i = Instance.objects.get(deployment__name='check-broken'); print(i.detail); print(i.log_tail)" \
      | grep -q 'does not split prefill' || fail "the failed replica does not show its log lines"
    say "all checks passed"
    exit 0
  fi
  sleep 2
done
fail "the crash-looping replica never showed as failed"
