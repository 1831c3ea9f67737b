#!/usr/bin/env bash
# libvirtd-lab.sh - run a REAL, throwaway libvirtd (Debian 12, libvirt 9.0) by
# hand, without systemd, reachable over unix (rw + ro), TCP+SASL and TLS, with
# only libvirt's built-in "test" driver loaded (no hypervisor, no KVM needed).
# It is the pyvirtrpc test harness; tests/harness/lab.py drives it.
#
#   libvirtd-lab.sh [start]   [OPTIONS] [DIR]   generate everything in DIR and start
#   libvirtd-lab.sh prepare   [OPTIONS] [DIR]   generate everything, print the command, don't start
#   libvirtd-lab.sh restart   DIR               restart DIR's daemon with its existing config,
#                                               PKI, SASL db and ports (after stop or a crash)
#   libvirtd-lab.sh stop      DIR               stop the daemon of DIR (by its pid file only)
#   libvirtd-lab.sh status    DIR               exit 0 if the daemon of DIR is alive
#   libvirtd-lab.sh check     DIR               run virsh over every transport (smoke test)
#   libvirtd-lab.sh env       DIR               print the shell variables (same as DIR/lab.env)
#
# DIR defaults to a fresh `mktemp -d /tmp/libvirtd-lab.XXXXXX`.  Everything the
# lab needs is written under DIR (libvirtd's one write outside it,
# /run/libvirt/common/system.token, goes to a private /run when possible).
#
# Options (each also settable through the environment variable shown):
#   --tcp-port N|auto     LAB_TCP_PORT      (auto)  TCP listener, auth_tcp
#   --tls-port N|auto     LAB_TLS_PORT      (auto)  TLS listener, auth_tls
#                         auto = a free port chosen by the kernel on the listen
#                         address (retried if another process takes it first)
#   --listen-addr ADDR    LAB_LISTEN_ADDR   (127.0.0.1; ::1 works, URIs get [::1])
#   --auth-tcp none|sasl  LAB_AUTH_TCP      (sasl)
#   --auth-tls none|sasl  LAB_AUTH_TLS      (none)
#   --auth-unix-rw none|sasl LAB_AUTH_UNIX_RW (none)
#   --auth-unix-ro none|sasl LAB_AUTH_UNIX_RO (none)
#   --user NAME           LAB_SASL_USER     (alice)
#   --password PW         LAB_SASL_PASS     (wonderland)
#   --mechs "M1 M2"       LAB_SASL_MECHS    ("digest-md5 scram-sha-256 scram-sha-1 plain")
#   --no-tcp / --no-tls   LAB_TCP=0 / LAB_TLS=0
#   --keepalive I:C       LAB_KEEPALIVE     (5:5, libvirt's default interval:count)
#   --server-cert good|expired|notyet|wrongname|revoked  LAB_SERVER_CERT (good)
#                         which server certificate the daemon presents; all of
#                         them are always generated (pki/server*/).  Any but
#                         "good" sets tls_no_sanity_certificate=1, otherwise
#                         libvirtd refuses to start with it.
#   --no-crl              LAB_CRL=0         don't give the daemon pki/ca/cacrl.pem
#                                           (by default it refuses pki/client-revoked)
#   --set KEY=VALUE       (repeatable)      extra libvirtd.conf line, VALUE verbatim
#                                           (quote strings: --set 'tls_priority="NORMAL"')
#   --env KEY=VALUE       (repeatable)      extra variable in libvirtd's environment
#                                           (e.g. KRB5_KTNAME=FILE:/path; kept by restart)
#   --drivers none|all    LAB_DRIVERS       (none: test driver only, via an empty
#                                            LIBVIRT_DRIVER_DIR; all: the stock
#                                            module dir - fails without the
#                                            libvirt-qemu user)
#   --cert-tool auto|certtool|openssl  LAB_CERT_TOOL (auto: certtool if present)
#   --debug               LAB_DEBUG=1       debug log for SASL/TLS/dispatch (slow)
#   --private-run / --no-private-run  LAB_PRIVATE_RUN=1|0 (auto: on when
#                         `unshare -m` works and DIR is not under /run) run
#                         libvirtd in a private mount namespace with a tmpfs on
#                         /run, so /run/libvirt/common/system.token stays off the host
#   --timeout SECS        LAB_START_TIMEOUT (20)  readiness wait
#   --restart                                stop a daemon already running in DIR first
#   --watch-pid PID                          stop the daemon when process PID ends (a
#                                            background watcher; how lab.py makes sure a
#                                            killed test run leaves no daemon behind)
#
# PKI (pki/, every client dir is a libvirt ?pkipath= dir: cacert.pem,
# clientcert.pem, clientkey.pem):
#   ca/ (cacert, cakey, cacrl.pem revoking client-revoked and server-revoked)
#   server/ (CN=localhost, SAN DNS:localhost IP:127.0.0.1 IP:::1), server-expired/,
#   server-notyet/, server-wrongname/ (CN/SAN wronghost.example), server-revoked/
#   client/ (CN=alice), client-expired/, client-revoked/, client-crl/ (client +
#   cacrl.pem), client-untrusted/ (signed by rogue-ca/), client-wrongca/ (good
#   client cert, trusts only rogue-ca/)
#
# Requires root (the read-only socket only exists for a privileged daemon) and
# the Debian packages: libvirt-daemon libvirt-clients sasl2-bin
# libsasl2-modules (+ gnutls-bin for certtool, or openssl).
set -euo pipefail

PROG=${0##*/}
SELF=$(readlink -f "$0")
HELP_LINES='2,73p'
die()  { echo "$PROG: error: $*" >&2; exit 1; }
warn() { echo "$PROG: warning: $*" >&2; }
log()  { [ "${LAB_QUIET:-0}" = 1 ] || echo "$PROG: $*" >&2; }

# ---------------------------------------------------------------- arguments
CMD=start
WATCH_ARGS=()
case "${1:-}" in
    start|prepare|restart|stop|status|check|env) CMD=$1; shift ;;
    __watch) CMD=__watch; shift; WATCH_ARGS=("$@"); set -- ;;
    -h|--help|help) sed -n "$HELP_LINES" "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac

DIR=""
TCP_PORT=${LAB_TCP_PORT:-auto}
TLS_PORT=${LAB_TLS_PORT:-auto}
LISTEN_ADDR=${LAB_LISTEN_ADDR:-127.0.0.1}
AUTH_TCP=${LAB_AUTH_TCP:-sasl}
AUTH_TLS=${LAB_AUTH_TLS:-none}
AUTH_UNIX_RW=${LAB_AUTH_UNIX_RW:-none}
AUTH_UNIX_RO=${LAB_AUTH_UNIX_RO:-none}
SASL_USER=${LAB_SASL_USER:-alice}
SASL_PASS=${LAB_SASL_PASS:-wonderland}
SASL_MECHS=${LAB_SASL_MECHS:-digest-md5 scram-sha-256 scram-sha-1 plain}
WANT_TCP=${LAB_TCP:-1}
WANT_TLS=${LAB_TLS:-1}
KEEPALIVE=${LAB_KEEPALIVE:-5:5}
SERVER_CERT=${LAB_SERVER_CERT:-good}
WANT_CRL=${LAB_CRL:-1}
DRIVERS=${LAB_DRIVERS:-none}
CERT_TOOL=${LAB_CERT_TOOL:-auto}
DEBUG=${LAB_DEBUG:-0}
PRIVATE_RUN=${LAB_PRIVATE_RUN:-auto}
START_TIMEOUT=${LAB_START_TIMEOUT:-20}
RESTART=0
WATCH_PID=""
EXTRA_CONF=()
DAEMON_EXTRA_ENV=()

need_arg() { [ $# -ge 2 ] || die "option $1 needs an argument"; }
while [ $# -gt 0 ]; do
    case $1 in
        --tcp-port) need_arg "$@"; TCP_PORT=$2; shift ;;
        --tls-port) need_arg "$@"; TLS_PORT=$2; shift ;;
        --listen-addr) need_arg "$@"; LISTEN_ADDR=$2; shift ;;
        --auth-tcp) need_arg "$@"; AUTH_TCP=$2; shift ;;
        --auth-tls) need_arg "$@"; AUTH_TLS=$2; shift ;;
        --auth-unix-rw) need_arg "$@"; AUTH_UNIX_RW=$2; shift ;;
        --auth-unix-ro) need_arg "$@"; AUTH_UNIX_RO=$2; shift ;;
        --user) need_arg "$@"; SASL_USER=$2; shift ;;
        --password) need_arg "$@"; SASL_PASS=$2; shift ;;
        --mechs) need_arg "$@"; SASL_MECHS=$2; shift ;;
        --no-tcp) WANT_TCP=0 ;;
        --no-tls) WANT_TLS=0 ;;
        --keepalive) need_arg "$@"; KEEPALIVE=$2; shift ;;
        --server-cert) need_arg "$@"; SERVER_CERT=$2; shift ;;
        --no-crl) WANT_CRL=0 ;;
        --set) need_arg "$@"; EXTRA_CONF+=("$2"); shift ;;
        --env) need_arg "$@"; DAEMON_EXTRA_ENV+=("$2"); shift ;;
        --drivers) need_arg "$@"; DRIVERS=$2; shift ;;
        --cert-tool) need_arg "$@"; CERT_TOOL=$2; shift ;;
        --debug) DEBUG=1 ;;
        --private-run) PRIVATE_RUN=1 ;;
        --no-private-run) PRIVATE_RUN=0 ;;
        --timeout) need_arg "$@"; START_TIMEOUT=$2; shift ;;
        --restart) RESTART=1 ;;
        --watch-pid) need_arg "$@"; WATCH_PID=$2; shift ;;
        -h|--help) sed -n "$HELP_LINES" "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1 (try --help)" ;;
        *) [ -z "$DIR" ] || die "only one DIR argument allowed"; DIR=$1 ;;
    esac
    shift
done

for a in "$AUTH_TCP" "$AUTH_TLS" "$AUTH_UNIX_RW" "$AUTH_UNIX_RO"; do
    case $a in none|sasl) ;; *) die "auth must be none or sasl, not '$a' (polkit needs dbus)";; esac
done
case $DRIVERS in none|all) ;; *) die "--drivers must be none or all";; esac
case $KEEPALIVE in -[0-9]*:*[0-9]|[0-9]*:*[0-9]) ;; *) die "--keepalive wants INTERVAL:COUNT";; esac
case $SERVER_CERT in good|expired|notyet|wrongname|revoked) ;;
    *) die "--server-cert must be good, expired, notyet, wrongname or revoked";; esac
for p in "$TCP_PORT" "$TLS_PORT"; do
    case $p in auto) ;; ''|*[!0-9]*) die "ports must be a number or auto, not '$p'";; esac
done
for kv in ${EXTRA_CONF[@]+"${EXTRA_CONF[@]}"}; do
    case $kv in [a-z_]*=*) ;; *) die "--set wants KEY=VALUE, not '$kv'";; esac
done
for kv in ${DAEMON_EXTRA_ENV[@]+"${DAEMON_EXTRA_ENV[@]}"}; do
    case $kv in [A-Za-z_]*=*[[:cntrl:]]*) die "--env values must not contain control characters";;
                [A-Za-z_]*=*) ;; *) die "--env wants KEY=VALUE, not '$kv'";; esac
done
case $WATCH_PID in ''|[1-9]*) ;; *) die "--watch-pid wants a pid";; esac
case $WATCH_PID in *[!0-9]*) die "--watch-pid wants a pid";; esac
case $SASL_USER$SASL_PASS in *[[:cntrl:]]*) die "user and password must not contain control characters";; esac

# ------------------------------------------------------------------ helpers
# A pid counts as "our daemon" only if it is a live (non-zombie) libvirtd
# started with DIR's config file: we never signal anything else.
is_our_daemon() {   # pid conf
    local pid=$1 conf=$2 st a found=0
    local -a argv=()
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    st=$(awk '/^State:/{print $2}' "/proc/$pid/status" 2>/dev/null || true)
    case $st in ''|Z|X) return 1 ;; esac
    mapfile -d '' argv < "/proc/$pid/cmdline" 2>/dev/null || return 1
    [ "${#argv[@]}" -gt 0 ] || return 1
    case ${argv[0]} in *libvirtd) ;; *) return 1 ;; esac
    for a in "${argv[@]}"; do [ "$a" = "$conf" ] && found=1; done
    [ $found = 1 ]
}

read_pid() { if [ -s "$1/libvirtd.pid" ]; then tr -dc '0-9' < "$1/libvirtd.pid"; fi; }

port_in_use() {     # port ; true if some socket LISTENs on that TCP port
    # (reads /proc/net/tcp{,6} instead of connecting, so the daemon's log
    # does not fill with aborted-handshake errors; any address counts)
    local hex
    hex=$(printf '%04X' "$1")
    awk -v h=":$hex" 'NR > 1 && $4 == "0A" && substr($2, length($2) - 4) == h {f=1} END {exit !f}' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

free_ports() {      # count ; print COUNT distinct free ports on the listen address
    # All sockets stay bound until every port is picked, so the ports differ.
    # getaddrinfo gives the right family for 127.0.0.1 as well as ::1.
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$LISTEN_ADDR" "$1" <<'PY'
import socket, sys
addr, n = sys.argv[1], int(sys.argv[2])
fam, typ, proto, _, sa = socket.getaddrinfo(addr, 0, type=socket.SOCK_STREAM)[0]
held = []
for _ in range(n):
    s = socket.socket(fam, typ, proto)
    s.bind(sa)
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held))
PY
    else
        local p out="" i
        for i in $(seq "$1"); do
            for _ in $(seq 200); do
                p=$(( 30000 + RANDOM % 30000 ))
                port_in_use "$p" && continue
                case " $out " in *" $p "*) continue ;; esac
                break
            done
            out="$out $p"; : "$i"
        done
        echo "$out"
    fi
}

uri_host() { case $1 in *:*) printf '[%s]' "$1" ;; *) printf '%s' "$1" ;; esac; }

json_str() {        # a JSON string literal (control characters were refused above)
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}
json_bool() { if [ "$1" = 1 ]; then printf true; else printf false; fi; }

proc_start() {      # pid ; the process start time (field 22 of /proc/PID/stat), '' if gone
    local stat rest
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    rest=${stat##*) }       # drop "pid (comm) ", comm may hold spaces
    # shellcheck disable=SC2086
    set -- $rest
    echo "${20}"
}

# The watcher: a `__watch WPID WSTART DIR` copy of this script that stops DIR's
# daemon once process WPID (same start time, so not a reused pid) is gone,
# and exits by itself once the daemon is gone.
stop_watcher() {    # dir
    local w
    w=$(if [ -s "$1/watcher.pid" ]; then tr -dc '0-9' < "$1/watcher.pid"; fi)
    if [ -n "$w" ] && [ "$w" != "$$" ] && tr '\0' ' ' < "/proc/$w/cmdline" 2>/dev/null | grep -qF -- "__watch" \
       && tr '\0' '\n' < "/proc/$w/cmdline" 2>/dev/null | grep -qxF -- "$1"; then
        kill -TERM "$w" 2>/dev/null || true
    fi
    rm -f "$1/watcher.pid"
}
start_watcher() {   # dir wpid wstart
    [ -n "$2" ] && [ -n "$3" ] && [ "$(proc_start "$2")" = "$3" ] || return 0
    stop_watcher "$1"
    setsid "$SELF" __watch "$2" "$3" "$1" </dev/null >/dev/null 2>&1 &
    echo $! > "$1/watcher.pid"
}

stop_daemon() {     # dir
    local dir=$1 conf pid
    conf="$dir/libvirtd.conf"
    [ "$CMD" = __watch ] || stop_watcher "$dir"
    pid=$(read_pid "$dir")
    if [ -z "$pid" ]; then log "no pid file in $dir: nothing to stop"; return 0; fi
    if ! is_our_daemon "$pid" "$conf"; then
        log "pid $pid from $dir/libvirtd.pid is not a live libvirtd of this lab: nothing to stop"
        rm -f "$dir/libvirtd.pid"
        return 0
    fi
    # a frozen (SIGSTOPped) daemon must be thawed or it never sees SIGTERM
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do           # 10 s; a zombie counts as gone (PID 1 may reap late)
        is_our_daemon "$pid" "$conf" || break
        sleep 0.1
    done
    if is_our_daemon "$pid" "$conf"; then
        warn "libvirtd $pid ignored SIGTERM for 10 s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for _ in $(seq 50); do is_our_daemon "$pid" "$conf" || break; sleep 0.1; done
    fi
    rm -f "$dir/libvirtd.pid"
    log "stopped libvirtd pid $pid ($dir)"
}

# ------------------------------------------------------------------ watcher
if [ "$CMD" = __watch ]; then
    [ ${#WATCH_ARGS[@]} = 3 ] || die "__watch WPID WSTART DIR"
    wpid=${WATCH_ARGS[0]} wstart=${WATCH_ARGS[1]} DIR=${WATCH_ARGS[2]}
    while sleep 1; do
        if [ "$(proc_start "$wpid")" != "$wstart" ]; then
            LAB_QUIET=1 stop_daemon "$DIR"
            rm -f "$DIR/watcher.pid"
            exit 0
        fi
        is_our_daemon "$(read_pid "$DIR")" "$DIR/libvirtd.conf" || exit 0
    done
    exit 0
fi

# --------------------------------------------------------- stop/status/env
if [ "$CMD" != start ] && [ "$CMD" != prepare ]; then
    [ -n "$DIR" ] || die "$CMD needs the lab DIR"
    [ -d "$DIR" ] || die "no such directory: $DIR"
    DIR=$(cd "$DIR" && pwd -P)
fi
case $CMD in
    stop) stop_daemon "$DIR"; exit 0 ;;
    status)
        pid=$(read_pid "$DIR")
        if is_our_daemon "$pid" "$DIR/libvirtd.conf"; then echo "running pid $pid"; exit 0; fi
        echo "not running"; exit 1 ;;
    env) [ -r "$DIR/lab.env" ] || die "$DIR/lab.env missing (not prepared?)"; cat "$DIR/lab.env"; exit 0 ;;
    check|restart) ;;  # handled below
esac

# -------------------------------------------------------------------- check
run_check() {
    # shellcheck disable=SC1091
    . "$DIR/lab.env"
    command -v virsh >/dev/null || die "virsh (libvirt-clients) is needed for check"
    local fails=0 n=0 host
    host=$(uri_host "$LAB_LISTEN_ADDR")
    try() {     # expect(ok|fail) label command...
        local expect=$1 label=$2 out rc; shift 2
        n=$((n + 1))
        set +e; out=$("$@" 2>&1); rc=$?; set -e
        if [ "$expect" = ok ] && [ $rc -eq 0 ]; then
            printf 'PASS  %-50s %s\n' "$label" "$(echo "$out" | grep -v '^$' | head -n1)"
        elif [ "$expect" = fail ] && [ $rc -ne 0 ]; then
            printf 'PASS  %-50s %s\n' "$label" "$(echo "$out" | grep -v '^$' | tail -n1)"
        else
            fails=$((fails + 1))
            printf 'FAIL  %-50s rc=%d %s\n' "$label" "$rc" "$(echo "$out" | tr '\n' ' ' | cut -c1-200)"
        fi
    }
    export LIBVIRT_AUTH_FILE="$LAB_AUTH_FILE"
    try ok   "unix rw: hostname"                   virsh -c "$LAB_URI_UNIX" hostname
    try ok   "unix rw: list --all shows 'test'"     sh -c "virsh -c '$LAB_URI_UNIX' list --all --name | grep -qx test && echo test"
    try ok   "unix ro (virsh -r): nodeinfo"         virsh -r -c "$LAB_URI_UNIX_RO" nodeinfo
    try fail "unix ro: write op (suspend) refused"  virsh -c "$LAB_URI_UNIX_RO" suspend test
    if [ "$LAB_TCP" = 1 ]; then
        try ok   "tcp: hostname"                    virsh -c "$LAB_URI_TCP" hostname
        if [ "$LAB_AUTH_TCP" = sasl ]; then
            try ok   "tcp+sasl DIGEST-MD5 (forced)"          virsh -c "$LAB_URI_TCP?auth=sasl.DIGEST-MD5" hostname
            try fail "tcp+sasl SCRAM-SHA-256 refused (SSF)"  virsh -c "$LAB_URI_TCP?auth=sasl.SCRAM-SHA-256" hostname
            try fail "tcp+sasl wrong password refused"       env LIBVIRT_AUTH_FILE="$LAB_DIR/auth-wrong.conf" virsh -c "$LAB_URI_TCP" hostname
        fi
    fi
    if [ "$LAB_TLS" = 1 ]; then
        local base="test+tls://$host:$LAB_TLS_PORT/default?pkipath=$LAB_PKI"
        if [ "$LAB_SERVER_CERT" = good ]; then
            try ok   "tls: hostname"                    virsh -c "$LAB_URI_TLS" hostname
            # (the server cert also carries DNS:localhost; skipped when /etc/hosts
            # does not map localhost to the listen address, e.g. in a bare chroot)
            if [ "$LAB_LISTEN_ADDR" = 127.0.0.1 ] && getent ahostsv4 localhost 2>/dev/null | grep -q '^127\.0\.0\.1 '; then
                try ok "tls via the name localhost"     virsh -c "test+tls://localhost:$LAB_TLS_PORT/default?pkipath=$LAB_PKI/client" hostname
            fi
            if [ "$LAB_AUTH_TLS" = sasl ]; then
                local m
                for m in SCRAM-SHA-256 SCRAM-SHA-1 DIGEST-MD5 PLAIN; do
                    case " $(echo "$LAB_SASL_MECHS" | tr '[:lower:]' '[:upper:]') " in *" $m "*) ;; *) continue ;; esac
                    try ok "tls+sasl $m (forced)"       virsh -c "$LAB_URI_TLS&auth=sasl.$m" hostname
                done
                try fail "tls+sasl wrong password refused"   env LIBVIRT_AUTH_FILE="$LAB_DIR/auth-wrong.conf" virsh -c "$LAB_URI_TLS" hostname
            fi
            # no_sanity=1 skips the C client's check of its *own* cert against its
            # own CA file, so the handshake really happens and the peer refuses.
            try fail "tls: server refuses cert from rogue CA"   virsh -c "$base/client-untrusted&no_sanity=1" hostname
            try fail "tls: server refuses expired client cert"  virsh -c "$base/client-expired&no_sanity=1" hostname
            if [ "$LAB_CRL" = 1 ]; then
                try fail "tls: server refuses revoked client cert (CRL)" virsh -c "$base/client-revoked&no_sanity=1" hostname
            fi
            try fail "tls: client refuses server (wrong CA)"    virsh -c "$base/client-wrongca&no_sanity=1" hostname
        else
            # the client must refuse this server certificate
            try fail "tls: client refuses $LAB_SERVER_CERT server cert" virsh -c "$base/client-crl" hostname
        fi
    fi
    echo "$((n - fails)) passed, $fails failed"
    [ "$fails" -eq 0 ]
}
if [ "$CMD" = check ]; then run_check; exit $?; fi

# -------------------------------------------------------------- prerequisites
[ "$(id -u)" = 0 ] || die "run as root: only a privileged libvirtd has the read-only socket"
LIBVIRTD=$(command -v libvirtd || echo /usr/sbin/libvirtd)
[ -x "$LIBVIRTD" ] || die "libvirtd not found (apt-get install libvirt-daemon)"

# ------------------------------------------------------------ daemon launch
# Uses: DIR LIBVIRTD PRIVATE_RUN DRIVERS WANT_TCP WANT_TLS TCP_PORT TLS_PORT
#       AUTH_UNIX_RW START_TIMEOUT.  Sets: pid, BIND_FAILED.
launch_daemon() {
    local -a denv dargs
    local rc deadline ready=0 sock_rw=$DIR/run/libvirt-sock sock_ro=$DIR/run/libvirt-sock-ro
    BIND_FAILED=0
    denv=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "SASL_CONF_PATH=$DIR/sasl2")
    [ "$DRIVERS" = none ] && denv+=("LIBVIRT_DRIVER_DIR=$DIR/nodrivers")
    [ ${#DAEMON_EXTRA_ENV[@]} -eq 0 ] || denv+=("${DAEMON_EXTRA_ENV[@]}")
    dargs=("$LIBVIRTD" --daemon --listen --config "$DIR/libvirtd.conf" --pid-file "$DIR/libvirtd.pid")
    if [ "$CMD" = prepare ]; then
        printf 'prepared %s; start it with (add --daemon or drop it as you like):\n  ' "$DIR"
        printf '%q ' "${denv[@]}" "${dargs[@]}"; echo
        return 0
    fi
    # --daemon: libvirtd forks, and the parent exits only once the child has
    # taken the pid file and bound every socket (status pipe), rc!=0 on failure.
    set +e
    if [ "$PRIVATE_RUN" = 1 ]; then
        unshare -m --propagation private sh -c 'mount -t tmpfs -o mode=0755 lab-run /run && exec "$@"' lab \
            "${denv[@]}" "${dargs[@]}" </dev/null >"$DIR/libvirtd.stderr" 2>&1
    else
        "${denv[@]}" "${dargs[@]}" </dev/null >"$DIR/libvirtd.stderr" 2>&1
    fi
    rc=$?
    set -e
    if [ $rc -ne 0 ]; then
        if grep -q 'Address already in use' "$DIR/libvirtd.stderr" 2>/dev/null; then BIND_FAILED=1; return 1; fi
        cat "$DIR/libvirtd.stderr" >&2 || true
        tail -n 20 "$DIR/libvirtd.log" >&2 2>/dev/null || true
        die "libvirtd failed to start (rc=$rc); see $DIR/libvirtd.stderr and $DIR/libvirtd.log"
    fi

    # readiness: live pid from the pid file, sockets present, ports listening,
    # RPC round trip on the rw socket (no TCP connect: it would pollute the log)
    deadline=$(( $(date +%s) + START_TIMEOUT ))
    while [ "$(date +%s)" -le "$deadline" ]; do
        pid=$(read_pid "$DIR")
        # --daemon returned 0, so the pid file exists; if that process is gone
        # the daemon died later (e.g. driver state init failed): fail fast.
        if [ -z "$pid" ] || ! is_our_daemon "$pid" "$DIR/libvirtd.conf"; then
            sleep 0.2
            pid=$(read_pid "$DIR")
            if [ -z "$pid" ] || ! is_our_daemon "$pid" "$DIR/libvirtd.conf"; then
                tail -n 20 "$DIR/libvirtd.log" >&2 2>/dev/null || true
                die "libvirtd exited right after starting (see $DIR/libvirtd.log)"
            fi
        fi
        if [ -S "$sock_rw" ] && [ -S "$sock_ro" ] \
           && { [ "$WANT_TCP" != 1 ] || port_in_use "$TCP_PORT"; } \
           && { [ "$WANT_TLS" != 1 ] || port_in_use "$TLS_PORT"; }; then
            if [ "$AUTH_UNIX_RW" != none ] || ! command -v virsh >/dev/null \
               || virsh -q -c "test+unix:///default?socket=$sock_rw" hostname >/dev/null 2>&1; then
                ready=1; break
            fi
        fi
        sleep 0.1
    done
    if [ $ready != 1 ]; then
        tail -n 20 "$DIR/libvirtd.log" >&2 2>/dev/null || true
        die "libvirtd did not become ready within ${START_TIMEOUT}s (see $DIR/libvirtd.log)"
    fi
}

# ------------------------------------------------- lab.env / lab.json / banner
write_outputs() {   # pid ('' when only prepared)
    local pid=$1 host p=$DIR/pki v
    local sock_rw=$DIR/run/libvirt-sock sock_ro=$DIR/run/libvirt-sock-ro sock_admin=$DIR/run/libvirt-admin-sock
    host=$(uri_host "$LISTEN_ADDR")
    local uri_unix="test+unix:///default?socket=$sock_rw"
    local uri_unix_ro="test+unix:///default?socket=$sock_ro"
    local uri_tcp="test+tcp://$host:$TCP_PORT/default"
    local uri_tls="test+tls://$host:$TLS_PORT/default?pkipath=$p/client"
    local uri_admin="libvirtd:///system?socket=$sock_admin"
    {
        echo "# generated by $PROG; sourced by '$PROG restart|check'"
        for v in DIR:"$DIR" CONF:"$DIR/libvirtd.conf" PIDFILE:"$DIR/libvirtd.pid" LOG:"$DIR/libvirtd.log" \
                 SOCK_RW:"$sock_rw" SOCK_RO:"$sock_ro" SOCK_ADMIN:"$sock_admin" \
                 TCP:"$WANT_TCP" TLS:"$WANT_TLS" LISTEN_ADDR:"$LISTEN_ADDR" \
                 TCP_PORT:"$TCP_PORT" TLS_PORT:"$TLS_PORT" \
                 AUTH_TCP:"$AUTH_TCP" AUTH_TLS:"$AUTH_TLS" AUTH_UNIX_RW:"$AUTH_UNIX_RW" AUTH_UNIX_RO:"$AUTH_UNIX_RO" \
                 SASL_USER:"$SASL_USER" SASL_PASS:"$SASL_PASS" SASL_MECHS:"$SASL_MECHS" \
                 AUTH_FILE:"$DIR/auth.conf" KEEPALIVE:"$KEEPALIVE" SERVER_CERT:"$SERVER_CERT" CRL:"$WANT_CRL" \
                 DRIVERS:"$DRIVERS" PRIVATE_RUN:"$PRIVATE_RUN" DEBUG:"$DEBUG" \
                 PKI:"$p" PKI_CLIENT:"$p/client" PKI_CA:"$p/ca/cacert.pem" \
                 URI_UNIX:"$uri_unix" URI_UNIX_RO:"$uri_unix_ro" URI_TCP:"$uri_tcp" URI_TLS:"$uri_tls" \
                 URI_ADMIN:"$uri_admin" PID:"$pid" WATCH_PID:"$WATCH_PID" WATCH_START:"$WATCH_START"; do
            printf 'LAB_%s=%q\n' "${v%%:*}" "${v#*:}"
        done
        # one KEY=VALUE per line (restart reads it back)
        printf 'LAB_DAEMON_ENV=%q\n' "$(printf '%s\n' ${DAEMON_EXTRA_ENV[@]+"${DAEMON_EXTRA_ENV[@]}"})"
    } > "$DIR/lab.env"

    local pki_json="" d
    for d in ca rogue-ca server server-expired server-notyet server-wrongname server-revoked \
             client client-expired client-revoked client-crl client-untrusted client-wrongca; do
        pki_json="$pki_json, $(json_str "$d"): $(json_str "$p/$d")"
    done
    cat > "$DIR/lab.json.tmp" <<EOF
{"dir": $(json_str "$DIR"), "pid": ${pid:-null}, "pidfile": $(json_str "$DIR/libvirtd.pid"),
 "conf": $(json_str "$DIR/libvirtd.conf"), "log": $(json_str "$DIR/libvirtd.log"),
 "stderr": $(json_str "$DIR/libvirtd.stderr"), "private_run": $(json_bool "$PRIVATE_RUN"),
 "sockets": {"rw": $(json_str "$sock_rw"), "ro": $(json_str "$sock_ro"), "admin": $(json_str "$sock_admin")},
 "listen_addr": $(json_str "$LISTEN_ADDR"),
 "tcp": {"enabled": $(json_bool "$WANT_TCP"), "host": $(json_str "$LISTEN_ADDR"), "port": $TCP_PORT, "auth": $(json_str "$AUTH_TCP")},
 "tls": {"enabled": $(json_bool "$WANT_TLS"), "host": $(json_str "$LISTEN_ADDR"), "port": $TLS_PORT, "auth": $(json_str "$AUTH_TLS"),
         "server_cert": $(json_str "$SERVER_CERT"), "crl": $(json_bool "$WANT_CRL"),
         "pkipath": $(json_str "$p/client"), "cacert": $(json_str "$p/client/cacert.pem"),
         "clientcert": $(json_str "$p/client/clientcert.pem"), "clientkey": $(json_str "$p/client/clientkey.pem")},
 "pki": {"root": $(json_str "$p")$pki_json, "cacrl": $(json_str "$p/ca/cacrl.pem")},
 "auth_unix_rw": $(json_str "$AUTH_UNIX_RW"), "auth_unix_ro": $(json_str "$AUTH_UNIX_RO"),
 "keepalive": {"interval": ${KEEPALIVE%%:*}, "count": ${KEEPALIVE##*:}},
 "sasl": {"user": $(json_str "$SASL_USER"), "password": $(json_str "$SASL_PASS"), "mechs": $(json_str "$SASL_MECHS"),
          "authfile": $(json_str "$DIR/auth.conf"), "authfile_wrong": $(json_str "$DIR/auth-wrong.conf")},
 "uris": {"unix": $(json_str "$uri_unix"), "unix_ro": $(json_str "$uri_unix_ro"), "tcp": $(json_str "$uri_tcp"),
          "tls": $(json_str "$uri_tls"), "admin": $(json_str "$uri_admin")}}
EOF
    mv -f "$DIR/lab.json.tmp" "$DIR/lab.json"
    [ -n "$pid" ] || return 0

    cat <<EOF
libvirtd lab up: pid $pid, dir $DIR (drivers: $DRIVERS, private /run: $PRIVATE_RUN, server cert: $SERVER_CERT)
  unix rw : $uri_unix            (auth $AUTH_UNIX_RW)
  unix ro : $uri_unix_ro         (auth $AUTH_UNIX_RO; use virsh -r / openReadOnly)
EOF
    [ "$WANT_TCP" = 1 ] && echo "  tcp     : $uri_tcp   (auth $AUTH_TCP; SASL user $SASL_USER / $SASL_PASS)"
    [ "$WANT_TLS" = 1 ] && echo "  tls     : $uri_tls   (auth $AUTH_TLS)"
    cat <<EOF
  creds   : export LIBVIRT_AUTH_FILE=$DIR/auth.conf   (or append &authfile=... / ?authfile=...)
  env     : . $DIR/lab.env     json: $DIR/lab.json
  stop    : $SELF stop $DIR
EOF
}

# ------------------------------------------------------------------ restart
if [ "$CMD" = restart ]; then
    if [ ! -r "$DIR/lab.env" ] || [ ! -r "$DIR/libvirtd.conf" ]; then
        die "$DIR is not a prepared lab (no lab.env/libvirtd.conf)"
    fi
    # shellcheck disable=SC1091
    . "$DIR/lab.env"
    LISTEN_ADDR=$LAB_LISTEN_ADDR TCP_PORT=$LAB_TCP_PORT TLS_PORT=$LAB_TLS_PORT WANT_TCP=$LAB_TCP WANT_TLS=$LAB_TLS
    AUTH_TCP=$LAB_AUTH_TCP AUTH_TLS=$LAB_AUTH_TLS AUTH_UNIX_RW=$LAB_AUTH_UNIX_RW AUTH_UNIX_RO=$LAB_AUTH_UNIX_RO
    SASL_USER=$LAB_SASL_USER SASL_PASS=$LAB_SASL_PASS SASL_MECHS=$LAB_SASL_MECHS KEEPALIVE=$LAB_KEEPALIVE
    SERVER_CERT=$LAB_SERVER_CERT WANT_CRL=$LAB_CRL DRIVERS=$LAB_DRIVERS PRIVATE_RUN=$LAB_PRIVATE_RUN DEBUG=$LAB_DEBUG
    DAEMON_EXTRA_ENV=()
    [ -z "${LAB_DAEMON_ENV:-}" ] || mapfile -t DAEMON_EXTRA_ENV <<<"$LAB_DAEMON_ENV"
    WATCH_PID=${LAB_WATCH_PID:-} WATCH_START=${LAB_WATCH_START:-}
    stop_daemon "$DIR"
    if ! launch_daemon; then
        cat "$DIR/libvirtd.stderr" >&2 || true
        die "libvirtd could not bind its old ports again; start the lab afresh"
    fi
    write_outputs "$pid"
    start_watcher "$DIR" "$WATCH_PID" "$WATCH_START"
    exit 0
fi

# -------------------------------------------------------------- start/prepare
command -v saslpasswd2 >/dev/null || die "saslpasswd2 not found (apt-get install sasl2-bin)"
ls /usr/lib/*/sasl2/libdigestmd5.so >/dev/null 2>&1 \
    || warn "DIGEST-MD5/SCRAM plugins not found (apt-get install libsasl2-modules)"
case $CERT_TOOL in
    auto) if command -v certtool >/dev/null; then CERT_TOOL=certtool
          elif command -v openssl >/dev/null; then CERT_TOOL=openssl
          else die "need certtool (gnutls-bin) or openssl"; fi ;;
    certtool|openssl) command -v "$CERT_TOOL" >/dev/null || die "$CERT_TOOL not installed" ;;
    *) die "--cert-tool must be auto, certtool or openssl" ;;
esac

if [ -z "$DIR" ]; then
    DIR=$(mktemp -d /tmp/libvirtd-lab.XXXXXX)
else
    mkdir -p "$DIR"
fi
DIR=$(cd "$DIR" && pwd -P)
case $DIR in *[[:space:]\"\'\\]*) die "DIR must not contain spaces or quotes: $DIR" ;; esac
# sun_path holds 107 bytes; the longest socket name is run/libvirt-admin-sock
[ $(( ${#DIR} + 23 )) -le 107 ] || die "DIR is too long for unix socket paths (max 84 chars): $DIR"
case $PRIVATE_RUN in
    1)  case $DIR/ in /run/*) die "--private-run hides /run: put DIR elsewhere" ;; esac
        command -v unshare >/dev/null || die "--private-run needs unshare (util-linux)" ;;
    auto) PRIVATE_RUN=0
        case $DIR/ in /run/*) ;; *)
            if command -v unshare >/dev/null && unshare -m --propagation private true 2>/dev/null; then
                PRIVATE_RUN=1
            fi ;;
        esac ;;
    0) ;;
    *) die "LAB_PRIVATE_RUN must be 0, 1 or auto" ;;
esac

WATCH_START=""
if [ -n "$WATCH_PID" ]; then
    WATCH_START=$(proc_start "$WATCH_PID")
    [ -n "$WATCH_START" ] || die "--watch-pid $WATCH_PID: no such process"
fi

oldpid=$(read_pid "$DIR")
if is_our_daemon "$oldpid" "$DIR/libvirtd.conf"; then
    if [ "$RESTART" = 1 ]; then stop_daemon "$DIR"
    else die "a lab libvirtd (pid $oldpid) already runs in $DIR; use '$PROG stop $DIR' or --restart"; fi
fi

# Fresh generated state (the dir itself may hold other files of the caller).
rm -rf "$DIR/run" "$DIR/sasl2" "$DIR/pki" "$DIR/nodrivers"
rm -f "$DIR/libvirtd.conf" "$DIR/auth.conf" "$DIR/auth-wrong.conf" "$DIR/lab.env" "$DIR/lab.json" \
      "$DIR/libvirtd.log" "$DIR/libvirtd.stderr" "$DIR/libvirtd.pid"
umask 022
chmod 0755 "$DIR"
P=$DIR/pki
mkdir -p "$DIR/run" "$DIR/sasl2" "$DIR/nodrivers" "$P/ca" "$P/rogue-ca"
for d in server server-expired server-notyet server-wrongname server-revoked \
         client client-expired client-revoked client-crl client-untrusted client-wrongca; do
    mkdir -p "$P/$d"
done

# --------------------------------------------------------------------- PKI
# libvirt checks: CA has CA:TRUE + keyCertSign; server cert has TLS WWW server
# purpose and a SAN/CN matching the host the client dialled (127.0.0.1, ::1 or
# localhost); client cert has TLS WWW client purpose.  The client reads
# cacert.pem, clientcert.pem, clientkey.pem (and cacrl.pem if present) from
# ?pkipath=DIR.  One key per role is shared by that role's variants: only the
# certificates differ, and key generation is the slow part.
PAST_START="2020-01-01 00:00:00"; PAST_END="2021-01-01 00:00:00"
FUTURE_START="2099-01-01 00:00:00"; FUTURE_END="2100-01-01 00:00:00"

gen_pki_certtool() {
    local t=$P/templates
    mkdir -p "$t"
    printf 'cn = %s\nca\ncert_signing_key\ncrl_signing_key\nexpiration_days = 3650\n' "libvirt lab CA" > "$t/ca.info"
    printf 'cn = %s\nca\ncert_signing_key\ncrl_signing_key\nexpiration_days = 3650\n' "libvirt lab ROGUE CA" > "$t/rogue-ca.info"
    local server_good='organization = libvirt lab
cn = localhost
dns_name = localhost
ip_address = 127.0.0.1
ip_address = ::1
tls_www_server
encryption_key
signing_key'
    local server_wrong='organization = libvirt lab
cn = wronghost.example
dns_name = wronghost.example
tls_www_server
encryption_key
signing_key'
    local client="country = XX
organization = libvirt lab
cn = $SASL_USER
tls_www_client
encryption_key
signing_key"
    local days='expiration_days = 3650'
    local expired="activation_date = \"$PAST_START\"
expiration_date = \"$PAST_END\""
    local notyet="activation_date = \"$FUTURE_START\"
expiration_date = \"$FUTURE_END\""
    printf '%s\n%s\n' "$server_good" "$days"    > "$t/server.info"
    printf '%s\n%s\n' "$server_good" "$expired" > "$t/server-expired.info"
    printf '%s\n%s\n' "$server_good" "$notyet"  > "$t/server-notyet.info"
    printf '%s\n%s\n' "$server_wrong" "$days"   > "$t/server-wrongname.info"
    printf '%s\n%s\n' "$server_good" "$days"    > "$t/server-revoked.info"
    printf '%s\n%s\n' "$client" "$days"         > "$t/client.info"
    printf '%s\n%s\n' "$client" "$expired"      > "$t/client-expired.info"
    printf '%s\n%s\n' "$client" "$days"         > "$t/client-revoked.info"
    printf 'crl_next_update = 3650\ncrl_number = 1\n' > "$t/crl.info"

    local q=(--bits 2048) ca
    for ca in ca rogue-ca; do
        certtool --generate-privkey "${q[@]}" --outfile "$P/$ca/cakey.pem" 2>/dev/null
        certtool --generate-self-signed --load-privkey "$P/$ca/cakey.pem" --template "$t/$ca.info" \
            --outfile "$P/$ca/cacert.pem" >/dev/null 2>&1
    done
    certtool --generate-privkey "${q[@]}" --outfile "$P/server/serverkey.pem" 2>/dev/null
    certtool --generate-privkey "${q[@]}" --outfile "$P/client/clientkey.pem" 2>/dev/null
    sign_certtool() {   # key template ca-dir out
        certtool --generate-certificate --load-privkey "$1" \
            --load-ca-certificate "$3/cacert.pem" --load-ca-privkey "$3/cakey.pem" \
            --template "$2" --outfile "$4" >/dev/null 2>&1 || die "certtool failed for $4"
    }
    local v
    for v in server server-expired server-notyet server-wrongname server-revoked; do
        sign_certtool "$P/server/serverkey.pem" "$t/$v.info" "$P/ca" "$P/$v/servercert.pem"
    done
    for v in client client-expired client-revoked; do
        sign_certtool "$P/client/clientkey.pem" "$t/$v.info" "$P/ca" "$P/$v/clientcert.pem"
    done
    # a client cert signed by the rogue CA (the server must refuse it)
    sign_certtool "$P/client/clientkey.pem" "$t/client.info" "$P/rogue-ca" "$P/client-untrusted/clientcert.pem"
    cat "$P/client-revoked/clientcert.pem" "$P/server-revoked/servercert.pem" > "$t/revoked.pem"
    certtool --generate-crl --load-ca-privkey "$P/ca/cakey.pem" --load-ca-certificate "$P/ca/cacert.pem" \
        --load-certificate "$t/revoked.pem" --template "$t/crl.info" --outfile "$P/ca/cacrl.pem" >/dev/null 2>&1 \
        || die "certtool --generate-crl failed"
}

gen_pki_openssl() {
    # `openssl ca` (not `x509 -req`): OpenSSL 3.0 can set arbitrary validity
    # dates only there (-startdate/-enddate), and it keeps the index for the CRL.
    local t=$P/templates ca
    mkdir -p "$t"
    for ca in ca rogue-ca; do
        : > "$P/$ca/index.txt"
        echo 'unique_subject = no' > "$P/$ca/index.txt.attr"
        od -An -N8 -tx1 /dev/urandom | tr -d ' \n' > "$P/$ca/serial"; echo >> "$P/$ca/serial"
        mkdir -p "$P/$ca/newcerts"
        cat > "$P/$ca/openssl.cnf" <<EOF
[ca]
default_ca = lab
[lab]
dir = $P/$ca
database = \$dir/index.txt
new_certs_dir = \$dir/newcerts
serial = \$dir/serial
certificate = \$dir/cacert.pem
private_key = \$dir/cakey.pem
default_md = sha256
default_days = 3650
default_crl_days = 3650
policy = anything
copy_extensions = none
[anything]
countryName = optional
organizationName = optional
commonName = supplied
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1,IP:::1
[server_wrongname]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:wronghost.example
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
EOF
    done
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj "/CN=libvirt lab CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$P/ca/cakey.pem" -out "$P/ca/cacert.pem" 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj "/CN=libvirt lab ROGUE CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$P/rogue-ca/cakey.pem" -out "$P/rogue-ca/cacert.pem" 2>/dev/null
    openssl genrsa -out "$P/server/serverkey.pem" 2048 2>/dev/null
    openssl genrsa -out "$P/client/clientkey.pem" 2048 2>/dev/null
    ossl_date() { date -u -d "$1" +%Y%m%d%H%M%SZ; }
    sign_openssl() {    # key subject section ca-dir out [start end]
        local csr=$5.csr
        local -a when=(-days 3650)
        [ $# -ge 7 ] && when=(-startdate "$(ossl_date "$6")" -enddate "$(ossl_date "$7")")
        openssl req -new -key "$1" -subj "$2" -out "$csr" 2>/dev/null
        openssl ca -batch -notext -config "$4/openssl.cnf" -extensions "$3" "${when[@]}" \
            -in "$csr" -out "$5" >/dev/null 2>&1 || die "openssl ca failed for $5"
        rm -f "$csr"
    }
    local sk=$P/server/serverkey.pem ck=$P/client/clientkey.pem
    local srv="/O=libvirt lab/CN=localhost" cli="/C=XX/O=libvirt lab/CN=$SASL_USER"
    sign_openssl "$sk" "$srv" server "$P/ca" "$P/server/servercert.pem"
    sign_openssl "$sk" "$srv" server "$P/ca" "$P/server-expired/servercert.pem" "$PAST_START" "$PAST_END"
    sign_openssl "$sk" "$srv" server "$P/ca" "$P/server-notyet/servercert.pem" "$FUTURE_START" "$FUTURE_END"
    sign_openssl "$sk" "/O=libvirt lab/CN=wronghost.example" server_wrongname "$P/ca" "$P/server-wrongname/servercert.pem"
    sign_openssl "$sk" "$srv" server "$P/ca" "$P/server-revoked/servercert.pem"
    sign_openssl "$ck" "$cli" client "$P/ca" "$P/client/clientcert.pem"
    sign_openssl "$ck" "$cli" client "$P/ca" "$P/client-expired/clientcert.pem" "$PAST_START" "$PAST_END"
    sign_openssl "$ck" "$cli" client "$P/ca" "$P/client-revoked/clientcert.pem"
    sign_openssl "$ck" "$cli" client "$P/rogue-ca" "$P/client-untrusted/clientcert.pem"
    local c
    for c in "$P/client-revoked/clientcert.pem" "$P/server-revoked/servercert.pem"; do
        openssl ca -config "$P/ca/openssl.cnf" -revoke "$c" >/dev/null 2>&1 || die "openssl ca -revoke failed"
    done
    openssl ca -config "$P/ca/openssl.cnf" -gencrl -out "$P/ca/cacrl.pem" >/dev/null 2>&1 || die "openssl ca -gencrl failed"
}

"gen_pki_$CERT_TOOL"
rm -rf "$P/templates"
for d in server-expired server-notyet server-wrongname server-revoked; do
    cp "$P/server/serverkey.pem" "$P/$d/"
done
for d in server server-expired server-notyet server-wrongname server-revoked \
         client client-expired client-revoked client-crl client-untrusted; do
    cp "$P/ca/cacert.pem" "$P/$d/cacert.pem"
done
for d in client-expired client-revoked client-crl client-untrusted client-wrongca; do
    cp "$P/client/clientkey.pem" "$P/$d/"
done
# client-crl: the good client, plus the CRL (libvirt's client loads
# pkipath/cacrl.pem when present, and then refuses server-revoked)
cp "$P/client/clientcert.pem" "$P/client-wrongca/"
cp "$P/client/clientcert.pem" "$P/ca/cacrl.pem" "$P/client-crl/"
# valid client cert, but trusting the rogue CA: the client must refuse the server
cp "$P/rogue-ca/cacert.pem" "$P/client-wrongca/cacert.pem"
cp "$P/ca/cacrl.pem" "$P/server/cacrl.pem"
chmod 0600 "$P"/*/*key.pem
# The variants must really be what they claim (a tool that silently clamps
# dates would make the TLS tests pass for the wrong reason).
if command -v openssl >/dev/null; then
    openssl x509 -checkend 0 -noout -in "$P/server/servercert.pem" >/dev/null || die "server cert is not valid now"
    ! openssl x509 -checkend 0 -noout -in "$P/server-expired/servercert.pem" >/dev/null || die "server-expired is not expired"
    ! openssl x509 -checkend 0 -noout -in "$P/client-expired/clientcert.pem" >/dev/null || die "client-expired is not expired"
    [ "$(openssl crl -in "$P/ca/cacrl.pem" -noout -text | grep -c 'Serial Number')" = 2 ] || die "CRL does not list 2 serials"
fi

# -------------------------------------------------------------------- SASL
# libvirtd calls sasl_server_init(NULL, "libvirt"), so cyrus-sasl reads
# "libvirt.conf" from $SASL_CONF_PATH (default /etc/sasl2): we point that
# variable at DIR/sasl2 in libvirtd's environment.
cat > "$DIR/sasl2/libvirt.conf" <<EOF
mech_list: $SASL_MECHS
sasldb_path: $DIR/sasl2/passwd.db
EOF
printf '%s' "$SASL_PASS" | SASL_CONF_PATH="$DIR/sasl2" saslpasswd2 -p -c -a libvirt -f "$DIR/sasl2/passwd.db" "$SASL_USER"

# client credentials for libvirt's auth.conf lookup ([auth-libvirt-HOST],
# falling back to [auth-libvirt-default]); use with LIBVIRT_AUTH_FILE or ?authfile=
for f in auth.conf auth-wrong.conf; do
    pw=$SASL_PASS; [ $f = auth.conf ] || pw="not-$SASL_PASS"
    {
        printf '[credentials-lab]\nauthname=%s\npassword=%s\n' "$SASL_USER" "$pw"
        for h in 127.0.0.1 localhost ::1 default; do
            printf '\n[auth-libvirt-%s]\ncredentials=lab\n' "$h"
        done
    } > "$DIR/$f"
    chmod 0600 "$DIR/$f"
done

# ------------------------------------------------------------ libvirtd.conf
if [ "$DEBUG" = 1 ]; then
    LOG_FILTERS="1:daemon.remote 1:rpc.netsaslcontext 1:rpc.nettlscontext 1:rpc.netserverclient 1:rpc.keepalive 3:rpc 3:util 3:object 3:event"
    LOG_OUTPUTS="1:file:$DIR/libvirtd.log"
else
    LOG_FILTERS=""
    LOG_OUTPUTS="3:file:$DIR/libvirtd.log"
fi
SRV_DIR=$P/server
[ "$SERVER_CERT" = good ] || SRV_DIR=$P/server-$SERVER_CERT
write_conf() {
    cat > "$DIR/libvirtd.conf" <<EOF
# generated by $PROG - a throwaway lab daemon, not a system config
listen_tls = $WANT_TLS
listen_tcp = $WANT_TCP
listen_addr = "$LISTEN_ADDR"
tcp_port = "$TCP_PORT"
tls_port = "$TLS_PORT"

# libvirtd names its sockets libvirt-sock, libvirt-sock-ro, libvirt-admin-sock
# inside unix_sock_dir; the individual names are not configurable.
unix_sock_dir = "$DIR/run"
unix_sock_group = "root"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0770"
unix_sock_admin_perms = "0700"

# polkit (the compiled-in default) needs dbus + polkitd: never here
auth_unix_ro = "$AUTH_UNIX_RO"
auth_unix_rw = "$AUTH_UNIX_RW"
auth_tcp = "$AUTH_TCP"
auth_tls = "$AUTH_TLS"

# server certificate variant: $SERVER_CERT
key_file = "$SRV_DIR/serverkey.pem"
cert_file = "$SRV_DIR/servercert.pem"
ca_file = "$P/server/cacert.pem"
tls_no_verify_certificate = 0
tls_no_sanity_certificate = $([ "$SERVER_CERT" = good ] && echo 0 || echo 1)
EOF
    [ "$WANT_CRL" = 1 ] && echo "crl_file = \"$P/ca/cacrl.pem\"" >> "$DIR/libvirtd.conf"
    cat >> "$DIR/libvirtd.conf" <<EOF

keepalive_interval = ${KEEPALIVE%%:*}
keepalive_count = ${KEEPALIVE##*:}

log_filters = "$LOG_FILTERS"
log_outputs = "$LOG_OUTPUTS"
EOF
    if [ ${#EXTRA_CONF[@]} -gt 0 ]; then
        printf '\n# --set\n' >> "$DIR/libvirtd.conf"
        local kv
        for kv in "${EXTRA_CONF[@]}"; do printf '%s = %s\n' "${kv%%=*}" "${kv#*=}" >> "$DIR/libvirtd.conf"; done
    fi
}

# ------------------------------------------------- pick ports, write, start
WANT_TCP_PORT=$TCP_PORT WANT_TLS_PORT=$TLS_PORT
pid=""
for attempt in 1 2 3 4 5; do
    if [ "$WANT_TCP_PORT" = auto ] || [ "$WANT_TLS_PORT" = auto ]; then
        read -r p1 p2 <<<"$(free_ports 2)"
        [ "$WANT_TCP_PORT" = auto ] && TCP_PORT=$p1
        [ "$WANT_TLS_PORT" = auto ] && TLS_PORT=$p2
    fi
    if [ "$CMD" = start ]; then
        [ "$WANT_TCP" != 1 ] || ! port_in_use "$TCP_PORT" || die "TCP port $TCP_PORT is already in use"
        [ "$WANT_TLS" != 1 ] || ! port_in_use "$TLS_PORT" || die "TLS port $TLS_PORT is already in use"
    fi
    write_conf
    if launch_daemon; then break; fi
    # only a lost race for an auto port is retried
    if [ "$BIND_FAILED" = 1 ] && { [ "$WANT_TCP_PORT" = auto ] || [ "$WANT_TLS_PORT" = auto ]; } && [ "$attempt" -lt 5 ]; then
        warn "port taken between choosing and binding (attempt $attempt), choosing again"
        continue
    fi
    cat "$DIR/libvirtd.stderr" >&2 || true
    die "libvirtd failed to start: a port is already in use"
done
write_outputs "$pid"
[ "$CMD" != start ] || start_watcher "$DIR" "$WATCH_PID" "$WATCH_START"
