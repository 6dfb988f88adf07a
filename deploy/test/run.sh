#!/usr/bin/env bash
# make deploy-test: the operators' rollout on three booted Debian 12 hosts (lab.sh), checked
# end to end. Needs root, systemd-nspawn and debootstrap (installed when missing), the
# wheel of `make wheel` in dist/, and ansible (installed into $LAB/ansible-venv when
# missing). Prints PASS/FAIL lines; exits 1 when any check failed. The hosts are powered
# off and unmounted at the end, also on failure or Ctrl-C (KEEP_HOSTS=1 leaves them up).
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
LAB=${LAB:-/var/tmp/rayd-lab}
export LAB
LABSH=$REPO/deploy/test/lab.sh
WORK=$(mktemp -d /tmp/rayd-deploy-test.XXXXXX)
HOSTS=(head1 worker1 worker2)
declare -A IP=([head1]=127.0.0.11 [worker1]=127.0.0.12 [worker2]=127.0.0.13)
PASSWORD=lab-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
FAILED=0
STARTED=$(date +%s)

log() { echo "[$(($(date +%s) - STARTED))s] $*"; }
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; FAILED=$((FAILED + 1)); }
on() { local h=$1; shift; "$LABSH" sh "$h" "$@"; }
# Waits until `cmd` succeeds, at most $1 seconds; returns its last status.
wait_for() {
  local limit=$1 deadline; shift
  deadline=$(($(date +%s) + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 1
  done
}
units_of() { if [ "$1" = head1 ]; then echo rayd-redis-shard rayd-global-scheduler rayd-plasma rayd-raylet; else echo rayd-plasma rayd-raylet; fi; }
main_pid() { on "$1" systemctl show -p MainPID --value "$2.service"; }
status_json() { on head1 /opt/rayd/bin/rayd status --json 2>/dev/null; }
# The number of nodes alive in rayd status, and whether the cluster is healthy.
alive_nodes() { status_json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(sum(n["alive"] for n in s["nodes"]), s["healthy"])'; }
cluster_ok() { [ "$(alive_nodes)" = "3 True" ]; }
units_active() { local h=$1; on "$h" systemctl is-active --quiet $(units_of "$h"); }
# Whether unit $2 on host $1 runs again, under a main pid other than $3.
restarted() { local p; p=$(main_pid "$1" "$2"); [ "$p" != 0 ] && [ "$p" != "$3" ] && on "$1" systemctl is-active --quiet "$2"; }
driver() { on "$1" timeout 120 /opt/rayd/bin/python /usr/local/share/rayd-test/driver.py "${@:2}"; }

cleanup() {
  if [ "${KEEP_HOSTS:-0}" = 1 ]; then log "hosts left up (KEEP_HOSTS=1): $LABSH down"; else "$LABSH" down >/dev/null 2>&1; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- prerequisites -------------------------------------------------------------------------
WHEEL=$(ls dist/rayd-*.whl 2>/dev/null | head -1)
[ -n "$WHEEL" ] && [ -d dist/deps ] || { echo "FAIL no dist/rayd-*.whl and dist/deps: run make wheel"; exit 1; }
"$LABSH" base | tail -1
ANSIBLE=$LAB/ansible-venv/bin/ansible-playbook
if [ ! -x "$ANSIBLE" ]; then
  python3 -m venv "$LAB/ansible-venv" && "$LAB/ansible-venv/bin/pip" install --quiet ansible-core || { echo "FAIL cannot install ansible"; exit 1; }
fi
log "wheel $WHEEL ($(du -h "$WHEEL" | cut -f1)); $("$ANSIBLE" --version | sed -n 1p)"

# --- the hosts -------------------------------------------------------------------------------
"$LABSH" down >/dev/null 2>&1
"$LABSH" up || { echo "FAIL the hosts did not boot"; exit 1; }
pass "three Debian 12 hosts booted with systemd ($(on head1 systemctl --version | head -1))"
for h in "${HOSTS[@]}"; do install -D -m 644 deploy/test/driver.py "$LAB/hosts/$h/root/usr/local/share/rayd-test/driver.py"; done

cat >"$WORK/inventory.ini" <<INV
[rayd_head]
head1 ansible_host=127.0.0.11 node_ip_address=127.0.0.11 rayd_resources='{"on_head1": 1}'

[rayd_workers]
worker1 ansible_host=127.0.0.12 node_ip_address=127.0.0.12 rayd_resources='{"on_worker1": 1}'
worker2 ansible_host=127.0.0.13 node_ip_address=127.0.0.13 rayd_resources='{"on_worker2": 1}'

[rayd:children]
rayd_head
rayd_workers

[rayd:vars]
ansible_user=root
ansible_ssh_private_key_file=$LAB/id_ed25519
ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'
ansible_python_interpreter=/usr/bin/python3
rayd_dist=$REPO/dist
rayd_redis_password=$PASSWORD
rayd_num_cpus=2
rayd_object_store_memory=268435456
INV
export ANSIBLE_HOST_KEY_CHECKING=False ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
playbook() { "$ANSIBLE" -i "$WORK/inventory.ini" "$@"; }
recap_changed() { grep -E '^\S+ +: ok=' "$1" | sed -E 's/.*changed=([0-9]+).*failed=([0-9]+).*/\1 \2/' | awk '{c+=$1; f+=$2} END {print c, f}'; }

# --- deploy twice ----------------------------------------------------------------------------
log "playbook, first run"
if playbook deploy/ansible/playbook.yml >"$WORK/run1.log" 2>&1; then
  pass "playbook first run: $(grep -E '^\S+ +: ok=' "$WORK/run1.log" | tr -s ' ' | paste -sd ';')"
else
  fail "playbook first run"; tail -40 "$WORK/run1.log"
  echo "1 FAILED (nothing else is worth checking)"; exit 1
fi
log "playbook, second run"
playbook deploy/ansible/playbook.yml >"$WORK/run2.log" 2>&1
rc=$?; read -r changed failed < <(recap_changed "$WORK/run2.log")
if [ "$rc" = 0 ] && [ "$changed" = 0 ] && [ "$failed" = 0 ]; then pass "playbook second run: changed=0"; else fail "playbook second run: rc=$rc changed=$changed failed=$failed"; grep -E 'changed:|FAILED|fatal' "$WORK/run2.log" | head -20; fi
playbook --check deploy/ansible/playbook.yml >"$WORK/check.log" 2>&1
rc=$?; read -r changed failed < <(recap_changed "$WORK/check.log")
if [ "$rc" = 0 ] && [ "$changed" = 0 ]; then pass "playbook --check on the deployed cluster: changed=0"; else fail "playbook --check: rc=$rc changed=$changed"; grep -E 'changed:|FAILED|fatal' "$WORK/check.log" | head -20; fi

# --- the deployed cluster --------------------------------------------------------------------
for h in "${HOSTS[@]}"; do
  if units_active "$h"; then pass "$h: units active: $(units_of "$h")"; else fail "$h: units not all active: $(on "$h" systemctl is-active $(units_of "$h") | paste -sd ' ')"; fi
done
if wait_for 60 cluster_ok; then pass "rayd status: 3 nodes alive, healthy"; else fail "rayd status: $(alive_nodes)"; fi
on head1 /opt/rayd/bin/rayd status | sed 's/^/    /'
for h in "${HOSTS[@]}"; do
  # (readelf from this machine: the hosts have no binutils)
  w=$(readelf -d "$LAB/hosts/$h/root/opt/rayd/bin/rayd-worker" | sed -nE 's/.*\((RUNPATH|RPATH)\).*\[(.*)\]/\2/p')
  lib=$(on "$h" ldd /opt/rayd/bin/rayd-worker | awk '/libpython/ {print $3}')
  if [ -n "$lib" ] && [ "$w" = '$ORIGIN/../lib' ]; then pass "$h: rayd-worker RUNPATH $w, libpython from $lib"; else fail "$h: rayd-worker RUNPATH '$w', libpython '$lib'"; fi
done

run_driver() { # host what args...
  local h=$1 what=$2 out; shift 2
  if out=$(driver "$h" "$@" 2>&1); then pass "$what: $(echo "$out" | tail -1 | cut -c1-300)"; else fail "$what: $(echo "$out" | tail -5)"; fi
}
run_driver head1 "driver on head1 (address=auto): a task on each node, 2 MiB argument, temp files" auto
run_driver worker1 "driver on worker1 (redis_address=head): a task on each node" 127.0.0.11:6379
# A user of group rayd may drive the cluster; one outside it is told why not.
on worker2 sh -c 'id alice >/dev/null 2>&1 || useradd -m -G rayd alice; id bob >/dev/null 2>&1 || useradd -m bob'
if out=$(on worker2 runuser -u alice -- timeout 120 /opt/rayd/bin/python /usr/local/share/rayd-test/driver.py auto 2>&1); then
  pass "driver on worker2 as alice (group rayd): $(echo "$out" | tail -1 | cut -c1-120)"
else fail "driver as alice (group rayd): $(echo "$out" | tail -3)"; fi
out=$(on worker2 runuser -u bob -- timeout 60 /opt/rayd/bin/python -c "import ray; ray.init(redis_address='127.0.0.11:6379', redis_password='$PASSWORD')" 2>&1)
if echo "$out" | grep -q 'group `rayd`'; then pass "a user outside group rayd is told to join it: $(echo "$out" | tail -1 | cut -c1-200)"; else fail "user outside group rayd: $(echo "$out" | tail -3)"; fi

# Every journal entry of a daemon names its node.
for h in head1 worker1; do
  bad=$(on "$h" journalctl -o json --no-pager _SYSTEMD_UNIT=rayd-raylet.service _SYSTEMD_UNIT=rayd-plasma.service SYSLOG_IDENTIFIER=rayd-raylet SYSLOG_IDENTIFIER=rayd-plasma |
    python3 -c 'import json,sys; rows=[json.loads(l) for l in sys.stdin]; ids={r.get("RAYD_NODE_ID") for r in rows}; print(len(rows), len(ids), None in ids)')
  read -r n ids missing <<<"$bad"
  if [ "${n:-0}" -gt 0 ] && [ "$ids" = 1 ] && [ "$missing" = False ]; then pass "$h: $n journal entries of raylet and plasma, each with RAYD_NODE_ID"; else fail "$h: journal RAYD_NODE_ID: entries=$n distinct=$ids missing=$missing"; fi
done

# rayd status in a pipe that closes early.
out=$(on head1 bash -c '/opt/rayd/bin/rayd status | head -1; echo "rc=${PIPESTATUS[0]}"' 2>&1)
if ! echo "$out" | grep -q panicked && echo "$out" | grep -q 'rc=[01]$'; then pass "rayd status | head -1: no panic ($(echo "$out" | head -1 | cut -c1-80))"; else fail "rayd status | head: $out"; fi

# --- systemd-analyze -------------------------------------------------------------------------
if out=$(on head1 sh -c 'systemd-analyze verify /etc/systemd/system/rayd.target /etc/systemd/system/rayd-*.service' 2>&1) && [ -z "$out" ]; then
  pass "systemd-analyze verify: the target and four units are clean"
else fail "systemd-analyze verify: $out"; fi
for u in rayd-redis-shard rayd-global-scheduler rayd-plasma rayd-raylet; do
  score=$(on head1 systemd-analyze security --no-pager "$u.service" | sed -nE 's/.*Overall exposure level for [^:]*: ([0-9.]+).*/\1/p')
  if awk -v s="$score" 'BEGIN {exit !(s != "" && s <= 2.0)}'; then pass "systemd-analyze security $u: $score (<= 2.0)"; else fail "systemd-analyze security $u: $score (> 2.0)"; fi
done

# --- configuration errors end the restarts ---------------------------------------------------
on head1 sh -c 'mkdir -p /run/systemd/system/rayd-global-scheduler.service.d && printf "[Service]\nEnvironment=RAYD_LOG_LEVEL=loud\n" > /run/systemd/system/rayd-global-scheduler.service.d/bad.conf && systemctl daemon-reload && systemctl restart rayd-global-scheduler' >/dev/null 2>&1
sleep 6 # long enough for several RestartSec=2 restarts, were there any
st=$(on head1 systemctl show -p ActiveState -p ExecMainStatus -p NRestarts rayd-global-scheduler | sort | paste -sd ' ')
if [ "$st" = "ActiveState=failed ExecMainStatus=64 NRestarts=0" ]; then pass "a bad config (log_level=loud): exit 64, failed, not restarted ($st)"; else fail "bad config: $st"; fi
on head1 sh -c 'rm -rf /run/systemd/system/rayd-global-scheduler.service.d && systemctl daemon-reload && systemctl reset-failed rayd-global-scheduler; systemctl start rayd-global-scheduler'
wait_for 60 cluster_ok || fail "the cluster did not recover from the bad-config check: $(alive_nodes)"

# --- kill -9 of each daemon ------------------------------------------------------------------
for h in "${HOSTS[@]}"; do
  for u in $(units_of "$h"); do
    before=$(main_pid "$h" "$u"); t0=$(date +%s)
    on "$h" kill -9 "$before"
    if wait_for 60 restarted "$h" "$u" "$before" && wait_for 90 cluster_ok && wait_for 60 units_active "$h"; then
      pass "kill -9 $h/$u (pid $before): restarted (pid $(main_pid "$h" "$u")), 3 nodes alive again in $(($(date +%s) - t0)) s"
    else
      fail "kill -9 $h/$u: pid $(main_pid "$h" "$u"), $(on "$h" systemctl is-active $(units_of "$h") | paste -sd ' '), status $(alive_nodes)"
    fi
  done
done
run_driver head1 "driver on head1 after the kills" auto

# --- restart rayd.target on the head, 20 times -----------------------------------------------
ok=0
for i in $(seq 20); do
  t0=$(date +%s)
  on head1 systemctl restart rayd.target
  if wait_for 60 units_active head1 && wait_for 60 cluster_ok && out=$(driver head1 auto 2>&1); then
    ok=$((ok + 1)); log "restart $i: usable after $(($(date +%s) - t0)) s"
  else
    log "restart $i: NOT usable: $(on head1 systemctl is-active $(units_of head1) | paste -sd ' '); $(alive_nodes); $(echo "${out:-}" | tail -2)"
  fi
done
if [ "$ok" = 20 ]; then pass "systemctl restart rayd.target on head1 20 times: usable after each (driver tasks on all 3 nodes)"; else fail "restart rayd.target: usable after $ok of 20"; fi

# --- a hung raylet (SIGSTOP) -----------------------------------------------------------------
before=$(main_pid worker1 rayd-raylet); t0=$(date +%s)
on worker1 kill -STOP "$before"
if wait_for 90 restarted worker1 rayd-raylet "$before" && wait_for 90 cluster_ok; then
  why=$(on worker1 journalctl -u rayd-raylet --no-pager --since "-3min" | grep -m1 -o 'Watchdog timeout.*' || true)
  if [ -n "$why" ]; then pass "SIGSTOP worker1/rayd-raylet: the watchdog restarted it in $(($(date +%s) - t0)) s (journal: $why); node alive again"; else fail "SIGSTOP: restarted but no watchdog timeout in the journal"; fi
else fail "SIGSTOP worker1/rayd-raylet: not restarted ($(main_pid worker1 rayd-raylet))"; fi
run_driver worker1 "driver on worker1 after the watchdog restart" 127.0.0.11:6379

# --- uninstall -------------------------------------------------------------------------------
if playbook deploy/ansible/uninstall.yml >"$WORK/uninstall.log" 2>&1 &&
  ! on worker1 test -e /opt/rayd && ! on head1 systemctl cat rayd-raylet.service >/dev/null 2>&1; then
  pass "uninstall playbook: units, /opt/rayd and /etc/rayd gone"
else fail "uninstall playbook"; tail -20 "$WORK/uninstall.log"; fi

log "done: $FAILED failed"
[ "$FAILED" = 0 ] && echo "ALL PASS" || echo "$FAILED FAILED"
exit $((FAILED > 0))
