#!/usr/bin/env bash
# walkthrough.sh: walks the README's deployment sections ("Run the
# coordinator as a service", "Install on a VPS", and the `vantage agents` and
# `vantage diagnose` steps of "Running it for real") on a fresh Debian
# bookworm booted with systemd as PID 1, and fails on the first step that
# does not do what the README says.
#
#   deploy/walkthrough.sh [--debs DIR] [--base DIR] [--agent-binary] [--keep]
#
# Run by hand, as root, on a Debian host with debootstrap and
# systemd-container (systemd-nspawn), plus what build-packages.sh needs
# unless --debs is given. CI does not run it: it needs root, takes minutes
# and downloads a base system from deb.debian.org ($WALK_MIRROR).
#
#   1. builds the two .debs with deploy/debian/build-packages.sh (or takes
#      vantage_*.deb and vantage-agent_*.deb from --debs DIR);
#   2. debootstraps bookworm into a temporary directory (or copies --base
#      DIR, an earlier debootstrap with the same --include list);
#   3. boots it with systemd-nspawn (systemd as PID 1; its own loopback-only
#      network, so the default ports clash with nothing on the host) and
#      drives it with nsenter;
#   4. as the README says: apt installs the vantage package, sets
#      VANTAGE_SERVE_OPTS in /etc/default/vantage, `systemctl enable --now
#      vantage`, `vantage token create`, installs the agent with
#      `install-agent.sh --deb` (--agent-binary: `--binary`, the README's
#      literal line, which installs the unit embedded in the script), waits
#      until `vantage agents` shows it connected, runs `vantage diagnose`
#      against a loopback origin (python3 -m http.server; the agent gets
#      --allow-private), starts vantage-witness.service as
#      deploy/systemd/README.md does, and reinstalls the package (which must
#      restart the coordinator);
#   5. checks that the three hardened units are active, never restarted,
#      were not killed by their system call filter (SIGSYS), and run with
#      seccomp on, no new privileges and no capabilities.
#
# Every wait is bounded. On exit the container is powered off and the
# temporary directory removed (--keep leaves both, and prints where).
# Exit status: 0 the walk passed, 1 a step failed, 2 bad usage.
set -euo pipefail

prog=walkthrough.sh
repo=$(cd "$(dirname "$0")/.." && pwd)
mirror=${WALK_MIRROR:-http://deb.debian.org/debian}
# What the README's steps need beyond the base system: systemd to boot,
# curl for /healthz, python3 for the loopback origin.
include=systemd,systemd-sysv,dbus,curl,ca-certificates,adduser,iproute2,python3

debs='' base='' keep=no agent_binary=no
while [ "$#" -gt 0 ]; do
	case $1 in
	--debs)
		[ "$#" -ge 2 ] || { echo "$prog: --debs needs a directory" >&2; exit 2; }
		debs=$2
		shift 2
		;;
	--base)
		[ "$#" -ge 2 ] || { echo "$prog: --base needs a directory" >&2; exit 2; }
		base=$2
		shift 2
		;;
	--keep)
		keep=yes
		shift
		;;
	--agent-binary)
		agent_binary=yes
		shift
		;;
	-h | --help)
		sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "$prog: unknown argument: $1 (try --help)" >&2
		exit 2
		;;
	esac
done

say() { printf '== %s\n' "$*" >&2; }
fail() {
	printf '%s: FAILED: %s\n' "$prog" "$*" >&2
	exit 1
}

[ "$(id -u)" = 0 ] || fail "run it as root (debootstrap and systemd-nspawn need it)"
for tool in debootstrap systemd-nspawn nsenter; do
	command -v "$tool" >/dev/null || fail "$tool is missing (apt-get install debootstrap systemd-container util-linux)"
done

work=$(mktemp -d /var/tmp/vantage-walk.XXXXXX)
root=$work/root
nspawn_pid=''
leader=''

cleanup() {
	status=$?
	# Best effort from here on: every step runs whatever the last one did.
	set +e
	if [ "$keep" = yes ]; then
		say "kept: $work (container leader pid ${leader:-none}; nsenter -t PID -a bash)"
		exit "$status"
	fi
	if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
		[ -z "$leader" ] || inside systemctl --no-block poweroff >/dev/null 2>&1 || true
		# Bounded: 30 s for a clean shutdown, then the container is killed.
		for _ in $(seq 30); do
			kill -0 "$nspawn_pid" 2>/dev/null || break
			sleep 1
		done
		if kill -0 "$nspawn_pid" 2>/dev/null; then
			kill -KILL "$nspawn_pid" 2>/dev/null || true
		fi
		wait "$nspawn_pid" 2>/dev/null || true
	fi
	# An interrupted debootstrap leaves its /proc and /sys mounts in the root.
	findmnt -rn -o TARGET | grep "^$work/" | sort -r | while read -r mnt; do
		umount -l "$mnt"
	done
	rm -rf --one-file-system "$work"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# inside CMD...: runs CMD inside the booted container, as root, with a clean
# environment (what a root shell on the server has).
inside() {
	nsenter -t "$leader" -a -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
		HOME=/root LANG=C.UTF-8 TERM=dumb "$@"
}

# until_ok SECONDS WHAT CMD...: runs CMD once a second until it succeeds,
# for at most SECONDS; fails naming WHAT.
until_ok() {
	limit=$1 what=$2
	shift 2
	for _ in $(seq "$limit"); do
		if "$@" >/dev/null 2>&1; then
			return 0
		fi
		sleep 1
	done
	fail "$what: not after ${limit}s"
}

# 1. The packages (README, "Run the coordinator as a service").
if [ -z "$debs" ]; then
	say "building the packages (deploy/debian/build-packages.sh)"
	debs=$work/debs
	"$repo/deploy/debian/build-packages.sh" "$debs" >/dev/null
fi
coordinator_deb=$(find "$debs" -maxdepth 1 -name 'vantage_*.deb' | sort | tail -n 1)
agent_deb=$(find "$debs" -maxdepth 1 -name 'vantage-agent_*.deb' | sort | tail -n 1)
[ -n "$coordinator_deb" ] || fail "no vantage_*.deb in $debs"
[ -n "$agent_deb" ] || fail "no vantage-agent_*.deb in $debs"

# 2. A fresh Debian 12.
if [ -n "$base" ]; then
	say "copying the base system $base"
	cp -a "$base" "$root"
else
	say "debootstrap bookworm into $root (a few minutes)"
	debootstrap --include="$include" bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
		fail "debootstrap (log: $work/debootstrap.log; --keep keeps it)"
fi
# What the README has the operator copy over to the server.
install -d -m 0700 "$root/root/walk"
cp "$coordinator_deb" "$agent_deb" "$repo/deploy/install-agent.sh" "$root/root/walk/"
if [ "$agent_binary" = yes ]; then
	# The bare binary, as a user copies it over: the one in the package.
	dpkg-deb -x "$agent_deb" "$work/agent-deb"
	cp "$work/agent-deb/usr/bin/vantage-agent" "$root/root/walk/vantage-agent"
	cp "$repo/deploy/systemd/vantage-witness.service" "$root/root/walk/"
fi

# 3. Boot it: systemd as PID 1. --register=no and --keep-unit: nspawn
# needs no systemd on the host; --private-network: only a loopback.
say "booting it with systemd-nspawn"
setsid systemd-nspawn -D "$root" -b --register=no --keep-unit --console=passive \
	--private-network --machine=vantage-walk >"$work/nspawn.log" 2>&1 </dev/null &
nspawn_pid=$!
leader_of() {
	leader=$(pgrep -P "$nspawn_pid" | head -n 1)
	[ -n "$leader" ] && [ "$(cat "/proc/$leader/comm" 2>/dev/null)" = systemd ]
}
until_ok 30 "the container's systemd to start (log: $work/nspawn.log)" leader_of
leader_of
booted() {
	state=$(inside systemctl is-system-running 2>/dev/null || true)
	[ "$state" = running ] || [ "$state" = degraded ]
}
until_ok 120 "the container to finish booting" booted
say "booted: systemd is PID 1 ($(inside systemctl is-system-running || true))"

# 4a. The coordinator as a service, as the README does it on the server.
say "apt install ./vantage_*.deb"
inside sh -c 'cd /root/walk && DEBIAN_FRONTEND=noninteractive apt-get install -y ./vantage_*.deb' \
	>"$work/apt-vantage.log" 2>&1 || fail "apt install of the vantage package (log: $work/apt-vantage.log)"
inside getent passwd vantage >/dev/null || fail "the package created no user vantage"
inside systemctl is-enabled vantage >/dev/null 2>&1 && fail "the package enabled vantage.service on a first install"
# The README's `editor /etc/default/vantage`: uncomment the line, name this
# host as the agents reach it (here: on the same loopback).
inside sed -i 's|^#VANTAGE_SERVE_OPTS=.*|VANTAGE_SERVE_OPTS="--advertise 127.0.0.1"|' /etc/default/vantage
inside grep -q '^VANTAGE_SERVE_OPTS="--advertise 127.0.0.1"$' /etc/default/vantage ||
	fail "/etc/default/vantage has no commented-out VANTAGE_SERVE_OPTS line to uncomment"
inside systemctl enable --now vantage
until_ok 60 "the coordinator's /healthz on 127.0.0.1:7480" inside curl -fsS http://127.0.0.1:7480/healthz

say "vantage token create --region eu"
cli() { inside runuser -u vantage -- vantage --data-dir /var/lib/vantage "$@"; }
token=$(cli token create --region eu) || fail "vantage token create"
case $token in
vtk1.?*) ;;
*) fail "vantage token create printed no token: $token" ;;
esac
printf '%s\n' "$token" >"$root/root/walk/token"

# 4b. The agent (README, "Install on a VPS"), here on the same host.
if [ "$agent_binary" = yes ]; then
	from='--binary ./vantage-agent'
else
	from='--deb ./vantage-agent_*.deb'
fi
say "sh install-agent.sh $from --token-file ./token --name walk-1"
# $from unquoted on purpose: the container's shell expands the glob.
inside sh -c "cd /root/walk && sh install-agent.sh $from --token-file ./token --name walk-1" \
	>"$work/install-agent.log" 2>&1 || fail "install-agent.sh (log: $work/install-agent.log)"
[ "$(stat -c '%a %U' "$root/etc/vantage/agent.token")" = "600 root" ] ||
	fail "/etc/vantage/agent.token is not 0600 root's"
inside systemctl is-enabled vantage-agent >/dev/null || fail "install-agent.sh did not enable vantage-agent"

# walk-1 listed and connected (`vantage agents --json`, read by the
# container's python3).
connected() {
	agents=$(cli agents --json) || return 1
	printf '%s' "$agents" | inside python3 -c '
import json, sys
agents = json.load(sys.stdin)
sys.exit(0 if any(a["name"] == "walk-1" and a["connected"] for a in agents) else 1)'
}
until_ok 60 "vantage agents to list walk-1" connected
say "vantage agents: walk-1 is there"
cli agents

# "Running it again is safe: same files, and a restart."
say "install-agent.sh again, same arguments"
again=$(inside sh -c "cd /root/walk && sh install-agent.sh $from --token-file ./token --name walk-1" 2>&1) ||
	fail "install-agent.sh, the second time: $again"
if printf '%s\n' "$again" | grep '^wrote '; then
	fail "install-agent.sh rewrote files with the same arguments"
fi
until_ok 60 "walk-1 to reconnect after the second install" connected

# 4c. One diagnosis against an origin on the loopback. The agent refuses
# loopback and private targets unless it runs with --allow-private, which
# /etc/default/vantage-agent takes (its header says how).
inside sed -i 's|^VANTAGE_AGENT_OPTS="\(.*\)"$|VANTAGE_AGENT_OPTS="\1 --allow-private"|' /etc/default/vantage-agent
inside systemctl restart vantage-agent
until_ok 60 "walk-1 to reconnect after the restart" connected
install -d -m 0755 "$root/srv/origin"
printf 'walk\n' >"$root/srv/origin/a.jpg"
inside systemd-run --unit=walk-origin \
	python3 -m http.server --bind 127.0.0.1 --directory /srv/origin 8080 >/dev/null 2>&1
until_ok 30 "the loopback origin on 127.0.0.1:8080" inside curl -fsS -o /dev/null http://127.0.0.1:8080/a.jpg

say "vantage diagnose http://127.0.0.1:8080/a.jpg --origin 127.0.0.1:8080 --regions all"
set +e
cli diagnose http://127.0.0.1:8080/a.jpg --origin 127.0.0.1:8080 --regions all --json >"$work/report.json" 2>"$work/diagnose.err"
rc=$?
set -e
# 0 healthy, 1 findings, 3 inconclusive (one region is never decisive);
# 2 is an error.
case $rc in
0 | 1 | 3) ;;
*) fail "vantage diagnose exited $rc: $(cat "$work/diagnose.err")" ;;
esac
# The probes really ran: region eu's direct baseline got the origin's 200.
summary=$(inside python3 -c '
import json, sys
report = json.load(sys.stdin)
eu = [r for r in report["regions"] if r["region"] == "eu"]
ok = [p for r in eu for p in r["probes"]
      if p["route"] == "direct" and p["variant"] == "baseline" and p["status"] == 200]
print(report["status"], len(eu[0]["probes"]) if eu else 0)
sys.exit(0 if ok else 1)' <"$work/report.json") ||
	fail "no 200 from the direct baseline in region eu: $(head -c 600 "$work/report.json")"
say "vantage diagnose exited $rc (status and probes of eu: $summary)"

# 4d. The origin witness, as deploy/systemd/README.md installs it by hand
# (the package carries the unit): its own token, 0600 in /etc/vantage, an
# access log the group adm reads, then enable --now.
say "vantage-witness.service with a token of region origin"
cli token create --region origin >"$work/witness.token" || fail "vantage token create --region origin"
install -d -m 0755 "$root/var/log/nginx"
inside install -m 0640 -g adm /dev/null /var/log/nginx/access.log
inside sh -c 'umask 077; cat > /etc/vantage/witness.token' <"$work/witness.token"
if [ "$agent_binary" = yes ]; then
	inside install -m 0644 /root/walk/vantage-witness.service /etc/systemd/system/
	inside systemctl daemon-reload
fi
inside systemctl enable --now vantage-witness
witness_connected() {
	agents=$(cli agents --json) || return 1
	printf '%s' "$agents" | inside python3 -c '
import json, sys
agents = json.load(sys.stdin)
sys.exit(0 if any(a["region"] == "origin" and a["connected"] for a in agents) else 1)'
}
until_ok 60 "the witness to connect" witness_connected

# 4e. "An upgrade restarts the service if it runs": reinstalling the package
# runs the same postinst an upgrade does.
say "apt-get install --reinstall ./vantage_*.deb restarts vantage"
before=$(inside systemctl show -p MainPID --value vantage)
inside sh -c 'cd /root/walk && DEBIAN_FRONTEND=noninteractive apt-get install -y --reinstall ./vantage_*.deb' \
	>>"$work/apt-vantage.log" 2>&1 || fail "apt-get install --reinstall (log: $work/apt-vantage.log)"
until_ok 30 "the coordinator's /healthz after the reinstall" inside curl -fsS http://127.0.0.1:7480/healthz
after=$(inside systemctl show -p MainPID --value vantage)
[ "$after" != "$before" ] || fail "reinstalling the package did not restart vantage (pid $before)"

# 5. The hardened units ran: active, never restarted, no seccomp kill.
for unit in vantage vantage-agent vantage-witness; do
	state=$(inside systemctl show -p ActiveState --value "$unit")
	restarts=$(inside systemctl show -p NRestarts --value "$unit")
	fragment=$(inside systemctl show -p FragmentPath --value "$unit")
	say "$unit: $state, $restarts restarts, unit file $fragment"
	[ "$state" = active ] || fail "$unit is $state"
	[ "$restarts" = 0 ] || fail "$unit restarted $restarts times"
	if inside journalctl -u "$unit" --no-pager | grep -E 'SIGSYS|status=31'; then
		fail "$unit was killed by its system call filter"
	fi
	# And the hardening is really on: a seccomp filter (mode 2), no new
	# privileges, an empty capability bounding set.
	pid=$(inside systemctl show -p MainPID --value "$unit")
	inside grep -q '^Seccomp:[[:space:]]*2$' "/proc/$pid/status" || fail "$unit runs without a seccomp filter"
	inside grep -q '^NoNewPrivs:[[:space:]]*1$' "/proc/$pid/status" || fail "$unit may gain privileges"
	inside grep -q '^CapBnd:[[:space:]]*0*$' "/proc/$pid/status" || fail "$unit holds capabilities"
done
say "PASSED: vantage, vantage-agent and vantage-witness ran hardened under systemd; the agent connected; diagnose exited $rc"
