#!/bin/sh
# install-agent.sh: puts a vantage agent on a Debian host and keeps it
# running under systemd. One line on a fresh VPS, as root:
#
#   sh install-agent.sh --binary ./vantage-agent --token-file ./token --name fra-1
#
# It installs the agent (from a .deb or a bare binary), writes the token to
# /etc/vantage/agent.token (0600, root's), writes /etc/default/vantage-agent,
# installs deploy/systemd/vantage-agent.service (a copy is embedded below),
# then enables and (re)starts the unit. Running it again with the same
# arguments leaves the same files and restarts the agent; with other
# arguments it rewrites them. `--root DIR` does all of it under DIR instead
# of / and, instead of calling systemctl, makes the enable symlink itself
# and prints what it would run. `--help` lists every option.
#
# Exit status: 0 done, 1 the installation failed, 2 bad usage.
set -eu

prog=install-agent.sh
umask 022

usage() {
	cat <<'EOF'
Usage: install-agent.sh (--deb FILE | --binary FILE) (--token-file FILE | --token TOKEN)
                        [--coordinator ADDR] [--name NAME] [--label KEY=VALUE]...
                        [--root DIR]

Installs the vantage agent as the systemd service vantage-agent.service,
enables it and (re)starts it. Run it as root; it is safe to run again.

  --deb FILE           install the vantage-agent Debian package FILE
  --binary FILE        install FILE (a vantage-agent binary) as /usr/bin/vantage-agent
  --token-file FILE    the enrollment token from `vantage token create`, in a file
  --token TOKEN        the token itself (it shows in `ps` while this runs:
                       prefer --token-file)
  --coordinator ADDR   refuse a token that does not name this coordinator
                       address (host or host:port): catches a token pasted
                       from another coordinator before the agent enrolls
  --name NAME          the agent's name, unique per coordinator (default: the
                       host name); letters, digits, '.', '_', '-'
  --label KEY=VALUE    a label to enroll with (repeatable)
  --root DIR           dry mode: write everything under DIR instead of /, make
                       the enable symlink without systemctl and print the
                       commands it would run
  -h, --help           print this help

The token carries the coordinator's address and CA fingerprint, and the
coordinator gave it its region (`vantage token create --region R`), so
neither is set here. Files written:
  /usr/bin/vantage-agent                     (--binary; --deb installs the package)
  /etc/vantage/agent.token                   0600 root:root
  /etc/default/vantage-agent                 the unit's settings (rewritten on every run)
  /etc/systemd/system/vantage-agent.service  unless the package ships the unit
Then: systemctl daemon-reload; systemctl enable vantage-agent.service;
systemctl restart vantage-agent.service.
EOF
}

# Bad usage: one line naming the problem, exit 2.
usage_error() {
	printf '%s: %s\n' "$prog" "$1" >&2
	printf "Try '%s --help'.\n" "$prog" >&2
	exit 2
}

# The installation failed: one line, exit 1.
fail() {
	printf '%s: error: %s\n' "$prog" "$1" >&2
	exit 1
}

# Options that take a value: the value must be there.
need_value() {
	[ "$2" -ge 2 ] || usage_error "$1 needs a value"
}

# A name as the coordinator accepts it (vantage-proto's check_name).
valid_name() {
	case $1 in
	'' | *[!A-Za-z0-9._-]*) return 1 ;;
	esac
	[ "${#1}" -le 64 ]
}

deb='' binary='' token='' token_file='' coordinator='' name='' root='' labels=''
while [ "$#" -gt 0 ]; do
	case $1 in
	-h | --help)
		usage
		exit 0
		;;
	--deb)
		need_value "$1" "$#"
		deb=$2
		shift 2
		;;
	--binary)
		need_value "$1" "$#"
		binary=$2
		shift 2
		;;
	--token)
		need_value "$1" "$#"
		token=$2
		shift 2
		;;
	--token-file)
		need_value "$1" "$#"
		token_file=$2
		shift 2
		;;
	--coordinator)
		need_value "$1" "$#"
		coordinator=$2
		shift 2
		;;
	--name)
		need_value "$1" "$#"
		name=$2
		shift 2
		;;
	--label)
		need_value "$1" "$#"
		labels="$labels --label $2"
		key=${2%%=*}
		value=${2#*=}
		[ "$key" != "$2" ] || usage_error "--label $2: expected KEY=VALUE"
		valid_name "$key" || usage_error "--label $2: the key must be 1-64 letters, digits, '.', '_' or '-'"
		case $value in
		*[!A-Za-z0-9._:/@+=-]*) usage_error "--label $2: the value may hold letters, digits and . _ : / @ + = - only" ;;
		esac
		[ "${#value}" -le 256 ] || usage_error "--label $2: the value is over 256 characters"
		shift 2
		;;
	--root)
		need_value "$1" "$#"
		root=$2
		shift 2
		;;
	--region | --region=*)
		usage_error "--region: the region is the token's (vantage token create --region R on the coordinator); drop this option"
		;;
	*)
		usage_error "unknown argument: $1"
		;;
	esac
done

if [ -n "$deb" ] && [ -n "$binary" ]; then
	usage_error "--deb and --binary: give one of them, not both"
fi
[ -n "$deb" ] || [ -n "$binary" ] || usage_error "give --deb FILE or --binary FILE"
if [ -n "$token" ] && [ -n "$token_file" ]; then
	usage_error "--token and --token-file: give one of them, not both"
fi
[ -n "$token" ] || [ -n "$token_file" ] || usage_error "give --token-file FILE (or --token TOKEN)"
if [ -n "$name" ] && ! valid_name "$name"; then
	usage_error "--name $name: 1-64 letters, digits, '.', '_' or '-'"
fi
if [ -n "$deb" ] && [ ! -f "$deb" ]; then
	usage_error "--deb $deb: no such file"
fi
if [ -n "$binary" ] && { [ ! -f "$binary" ] || [ ! -x "$binary" ]; }; then
	usage_error "--binary $binary: not an executable file"
fi
if [ -n "$token_file" ]; then
	if [ ! -f "$token_file" ] || [ ! -r "$token_file" ]; then
		usage_error "--token-file $token_file: not a readable file"
	fi
	token=$(cat "$token_file")
fi
# Surrounding whitespace (a trailing newline, a pasted space) is not the token's.
token=$(printf '%s' "$token" | tr -d ' \t\r\n')
case $token in
vtk1.?*) ;;
*) usage_error "the token is not a vantage enrollment token (it starts with vtk1.)" ;;
esac
case $token in
*[!A-Za-z0-9._-]*) usage_error "the token holds characters a token never has: was it copied whole?" ;;
esac
if [ -n "$root" ]; then
	[ -d "$root" ] || usage_error "--root $root: not a directory"
	root=$(cd "$root" && pwd)
	[ "$root" != / ] || usage_error "--root /: leave --root out to install for real"
fi

# --coordinator: the token's payload is base64url JSON naming the addresses.
if [ -n "$coordinator" ]; then
	command -v base64 >/dev/null || fail "--coordinator needs base64 (coreutils) to read the token"
	payload=$(printf '%s' "${token#vtk1.}" | tr '_-' '/+')
	case $((${#payload} % 4)) in
	2) payload="$payload==" ;;
	3) payload="$payload=" ;;
	esac
	json=$(printf '%s' "$payload" | base64 -d 2>/dev/null) || usage_error "the token is damaged (bad base64): was it copied whole?"
	# Only the address list: the rest holds the secret, never printed.
	addrs=$(printf '%s' "$json" | sed -n 's/.*"a":\[\([^]]*\)\].*/\1/p')
	[ -n "$addrs" ] || usage_error "the token is damaged (no coordinator address): was it copied whole?"
	case $addrs in
	*"\"$coordinator\""* | *"\"$coordinator:"*) ;;
	*) usage_error "--coordinator $coordinator: the token names another coordinator ($addrs)" ;;
	esac
fi

# Real installs need root and a running systemd; the dry mode needs neither.
if [ -z "$root" ]; then
	[ "$(id -u)" = 0 ] || fail "run it as root (sudo sh $prog ...), or try it with --root DIR"
	[ -d /run/systemd/system ] || fail "systemd is not running on this host (no /run/systemd/system)"
fi
is_root=no
[ "$(id -u)" = 0 ] && is_root=yes

# Runs a command, or in dry mode prints it.
run() {
	if [ -n "$root" ]; then
		printf 'would run: %s\n' "$*"
	else
		"$@"
	fi
}

# write_file MODE PATH: PATH gets stdin's bytes and MODE, replaced in one
# rename, and is left alone (mtime and all) when it already has both.
write_file() {
	dir=$(dirname "$2")
	tmp=$(mktemp "$dir/.install-agent.XXXXXX")
	cat >"$tmp"
	chmod "$1" "$tmp"
	[ "$is_root" = no ] || chown root:root "$tmp"
	if [ -f "$2" ] && cmp -s "$tmp" "$2" && [ "$(stat -c %a "$2")" = "$(stat -c %a "$tmp")" ]; then
		rm -f "$tmp"
		return 0
	fi
	mv -f "$tmp" "$2"
	printf 'wrote %s\n' "$2"
}

# 1. The binary.
if [ -n "$binary" ]; then
	version=$("$binary" --version 2>/dev/null) || fail "--binary $binary: does not run ($binary --version failed)"
	case $version in
	vantage-agent\ *) ;;
	*) fail "--binary $binary: not vantage-agent (it says: $version)" ;;
	esac
	install -d -m 0755 "$root/usr/bin"
	write_file 0755 "$root/usr/bin/vantage-agent" <"$binary"
else
	case $deb in
	/*) ;;
	*) deb="$(pwd)/$deb" ;;
	esac
	if [ -n "$root" ]; then
		command -v dpkg-deb >/dev/null || fail "--deb with --root needs dpkg-deb"
		dpkg-deb -x "$deb" "$root" || fail "--deb $deb: cannot unpack it"
		printf 'unpacked %s into %s\n' "$deb" "$root"
		printf 'would run: apt-get install -y %s\n' "$deb"
	else
		DEBIAN_FRONTEND=noninteractive apt-get install -y "$deb" || fail "--deb $deb: apt-get could not install it"
	fi
	[ -x "$root/usr/bin/vantage-agent" ] || fail "--deb $deb: it installed no /usr/bin/vantage-agent"
fi

# 2. The token: root's alone, read by systemd (LoadCredential=), never on a
# command line.
install -d -m 0700 "$root/etc/vantage"
printf '%s\n' "$token" | write_file 0600 "$root/etc/vantage/agent.token"

# 3. The unit's settings: the whole file, from this run's arguments.
opts=
[ -z "$name" ] || opts="--name $name"
opts="${opts}${labels}"
opts=${opts# }
install -d -m 0755 "$root/etc/default"
write_file 0644 "$root/etc/default/vantage-agent" <<EOF
# Settings of vantage-agent.service, written by install-agent.sh (running it
# again rewrites this file; edit it and \`systemctl restart vantage-agent\`).
#
# VANTAGE_AGENT_OPTS: extra flags of \`vantage-agent run\`, split on spaces
#   (no quoting), e.g. --name fra-1 --label dc=fra1 --max-concurrency 512;
#   see \`vantage-agent run --help\`.
# VANTAGE_LOG: the log filter (default info), e.g. debug.
#
# The coordinator's address and the region are not set here: the token
# (/etc/vantage/agent.token) names the coordinator, which gave it its region.
VANTAGE_AGENT_OPTS="$opts"
EOF

# 4. The unit, unless the package ships it.
unit_path=
for dir in /usr/lib/systemd/system /lib/systemd/system; do
	if [ -f "$root$dir/vantage-agent.service" ]; then
		unit_path=$dir/vantage-agent.service
		break
	fi
done
if [ -z "$unit_path" ]; then
	unit_path=/etc/systemd/system/vantage-agent.service
	install -d -m 0755 "$root/etc/systemd/system"
	write_file 0644 "$root$unit_path" <<'UNIT'
# vantage-agent.service: a vantage agent. It enrolls with the coordinator on
# its first start (the one-time token below), then keeps one mTLS session to
# it and runs the probe plans it receives. Installed by
# deploy/install-agent.sh or the vantage-agent Debian package; see
# deploy/systemd/README.md. Check the hardening with
#   systemd-analyze security vantage-agent.service
[Unit]
Description=vantage agent (probes for a vantage coordinator)
Documentation=man:vantage-agent-run(1)
Wants=network-online.target
After=network-online.target
# Stop retrying after 10 failed starts in 5 minutes (e.g. a refused token):
# `systemctl reset-failed vantage-agent` after fixing it.
StartLimitIntervalSec=300
StartLimitBurst=10

[Service]
Type=exec
# Settings an operator chooses, from /etc/default/vantage-agent (written by
# deploy/install-agent.sh; it may be absent):
#   VANTAGE_AGENT_OPTS  extra flags of `vantage-agent run`, split on spaces
#                       (no quoting), e.g. "--name fra-1 --label dc=fra1
#                       --max-concurrency 512"; see `vantage-agent run --help`
#   VANTAGE_LOG         log filter (default info), e.g. debug
# The coordinator's address and the region are not set here: see the token.
EnvironmentFile=-/etc/default/vantage-agent
# The enrollment token, root-only (0600) on disk, handed to the service as a
# credential: it is never on the command line, and only this service's
# dynamic user can read its copy. The token carries the coordinator's
# address and CA fingerprint; the region is the one the token was created
# for (`vantage token create --region R`). Once enrolled, the process
# ignores it (its key and certificate are in the state directory), but the
# file must stay for the unit to start.
LoadCredential=token:/etc/vantage/agent.token
ExecStart=/usr/bin/vantage-agent run --token-file ${CREDENTIALS_DIRECTORY}/token --state-dir /var/lib/vantage-agent $VANTAGE_AGENT_OPTS
# The agent stops cleanly on SIGINT (its spool survives any stop: results
# are on disk until the coordinator acknowledges them).
KillSignal=SIGINT
TimeoutStopSec=30s
Restart=on-failure
RestartSec=5s

# Identity and files: an unprivileged user allocated at start, whose only
# writable place is the state directory (/var/lib/vantage-agent: key,
# certificate, result spool), created 0700.
DynamicUser=yes
StateDirectory=vantage-agent
StateDirectoryMode=0700
UMask=0077
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateUsers=yes
PrivateIPC=yes
PrivateMounts=yes
ProtectProc=invisible
RemoveIPC=yes

# Privileges: none. Probes are ordinary TCP/UDP sockets.
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
DevicePolicy=closed
KeyringMode=private
NotifyAccess=none

# Resources: 27 MiB peak RSS with 1,000 probes in flight
# (docs/BENCHMARKS.md, "Agent footprint" and "Probe engine"); the limit
# leaves 4x that. Each probe in flight holds one descriptor (at most
# --max-concurrency, 256 by default, 10,000 at most).
MemoryMax=128M
LimitNOFILE=16384
# tokio's blocking pool (system DNS lookups) tops out at 512 threads.
TasksMax=1024

[Install]
WantedBy=multi-user.target
UNIT
fi

# 5. Enabled and (re)started.
run systemctl daemon-reload
if [ -n "$root" ]; then
	# What `systemctl --root=DIR enable` does for WantedBy=multi-user.target.
	install -d -m 0755 "$root/etc/systemd/system/multi-user.target.wants"
	link=$root/etc/systemd/system/multi-user.target.wants/vantage-agent.service
	if [ "$(readlink "$link" 2>/dev/null)" != "$unit_path" ]; then
		ln -sfn "$unit_path" "$link"
		printf 'linked %s -> %s\n' "$link" "$unit_path"
	fi
	printf 'would run: systemctl enable vantage-agent.service\n'
	printf 'would run: systemctl restart vantage-agent.service\n'
	printf 'dry run done: everything is under %s\n' "$root"
else
	systemctl enable vantage-agent.service
	systemctl restart vantage-agent.service
	printf 'vantage-agent is running: journalctl -u vantage-agent -f; on the coordinator, vantage agents\n'
fi
