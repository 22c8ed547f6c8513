#!/usr/bin/env bash
# The container images built and run for real (issue #20), with buildah only: no daemon.
#
#   scripts/container_smoke.sh [--dockerfile PATH] [--keep-logs]     (make test-containers)
#
# 1. buildah + debootstrap (apt-get installs them when missing and we may);
# 2. a base image: `debootstrap --variant=minbase bookworm` + Debian's python3/venv, its rootfs
#    tarball cached in ~/.cache/trimcache-containers (TRIMCACHE_CONTAINER_CACHE), imported under a
#    name of this run and passed as the Dockerfile's BASE_IMAGE;
# 3. the Dockerfile's `service` target, built in chroot isolation with host networking. pip
#    inside the build reads this machine's pip settings and CA bundle through read-only build
#    mounts (the package proxy re-signs TLS); nothing of the host lands in the image;
# 4. the stack from that image: testbed/launcher.py's service table (the one compose mirrors)
#    run by testbed/container_stack.py, each service `buildah run --isolation=chroot
#    --network=host` as the image's user, the host-built test zoo mounted read-only; Redis (the
#    upstream redis image in compose, unreachable here) runs on the host. Then: healthy, indexed,
#    placed, `bert-sst2` fetched with the SDK and `snapshot_download`-ed from an edge, sha256
#    equal to the zoo's file;
# 5. clean-up: every container and image this run made is removed (the base tarball stays).
#
# Any failure prints one `container smoke FAILED: ...` line (plus the log's tail) and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-$REPO/.venv/bin/python}
DOCKERFILE=$REPO/Dockerfile
KEEP_LOGS=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --dockerfile) DOCKERFILE=$(realpath "$2"); shift 2 ;;
        --keep-logs) KEEP_LOGS=1; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "container smoke FAILED: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

STARTED=$SECONDS
say() { printf '[container-smoke %4ds] %s\n' "$((SECONDS - STARTED))" "$*"; }
fail() {
    echo "container smoke FAILED: $1" >&2
    if [[ -n ${2:-} && -f $2 ]]; then echo "--- last lines of $2:" >&2; tail -n 25 "$2" >&2; fi
    exit 1
}

# ---------------------------------------------------------------- 1. tools
if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
    if [[ $(id -u) -eq 0 ]]; then APT=(apt-get); elif sudo -n true 2>/dev/null; then
        APT=(sudo -n apt-get); else fail "buildah/debootstrap missing and apt-get needs root"; fi
    say "installing buildah and debootstrap"
    "${APT[@]}" install -y -q buildah debootstrap >/dev/null || fail "apt-get install failed"
fi

RUN_ID=trimcache-smoke-$$-$RANDOM
WORK=$(mktemp -d "/tmp/$RUN_ID.XXXX")
chmod 755 "$WORK"
BASE_IMAGE=localhost/$RUN_ID-base:latest
IMAGE=localhost/$RUN_ID:latest
# buildah reads its defaults from here instead of /etc/containers (left untouched): this machine
# cannot raise its open-file limit to buildah's default.
export CONTAINERS_CONF=$WORK/containers.conf
printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n' \
    >"$CONTAINERS_CONF"

cleanup() {
    local code=$?
    set +e
    local ctrs
    ctrs=$(buildah containers --format '{{.ContainerID}} {{.ContainerName}}' 2>/dev/null \
        | awk -v p="$RUN_ID" 'index($2, p) == 1 {print $1}')
    for ctr in $ctrs; do buildah rm "$ctr" >/dev/null; done
    for image in "$IMAGE" "$BASE_IMAGE"; do
        buildah rmi -f "$image" >/dev/null 2>&1
    done
    left=$(buildah images --format '{{.Name}}' 2>/dev/null | grep -c "$RUN_ID")
    left_ctrs=$(buildah containers --format '{{.ContainerName}}' 2>/dev/null | grep -c "$RUN_ID")
    left_procs=$(pgrep -f -c "$RUN_ID-" 2>/dev/null)
    say "clean-up: removed $(wc -w <<<"$ctrs") container(s) and this run's images;" \
        "left: ${left} image(s), ${left_ctrs} container(s), ${left_procs:-0} process(es) of $RUN_ID"
    if [[ $KEEP_LOGS -eq 1 || $code -ne 0 ]]; then
        # Logs only: the zoo links, block stores and downloads go.
        find "$WORK" -mindepth 1 -maxdepth 1 ! -name '*.log' ! -name stack -exec rm -rf {} +
        [[ -d $WORK/stack ]] && find "$WORK/stack" -mindepth 1 -maxdepth 1 ! -name logs \
            -exec rm -rf {} +
        say "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$code"
}
trap cleanup EXIT

# ---------------------------------------------------------------- 2. base image
CACHE=${TRIMCACHE_CONTAINER_CACHE:-$HOME/.cache/trimcache-containers}
BASE_TAR=$CACHE/bookworm-minbase-python3.tar
mkdir -p "$CACHE"
if [[ ! -s $BASE_TAR ]]; then
    say "debootstrap bookworm (minbase + python3, python3-venv, ca-certificates) into $BASE_TAR"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm \
        "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
        || fail "debootstrap failed" "$WORK/debootstrap.log"
    tar -C "$WORK/rootfs" --numeric-owner -cf "$BASE_TAR.tmp-$$" . && mv "$BASE_TAR.tmp-$$" "$BASE_TAR"
    rm -rf "$WORK/rootfs"
else
    say "base rootfs cached: $BASE_TAR"
fi
ctr=$(buildah from --name "$RUN_ID-base" scratch)
buildah add --quiet "$ctr" "$BASE_TAR" / >/dev/null
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 "$ctr"
buildah commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
say "base image $BASE_IMAGE imported"

# ---------------------------------------------------------------- 3. the service image
# pip settings of this machine, as a pip.conf of plain [global] keys, and every local path they
# name (CA bundle, wheel dirs, file:// indexes, constraints) mounted read-only at the same place.
mapfile -t MOUNTS < <(python3 - "$WORK/pip.conf" <<'EOF'
import os, re, subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                     text=True).stdout
settings = {}
for line in out.splitlines():
    key, _, value = line.partition("=")
    settings[key.split(".", 1)[-1]] = value.strip().strip("'\"")
for name, value in os.environ.items():  # PIP_FIND_LINKS, PIP_CERT, ...: pip reads these too
    if name.startswith("PIP_") and name not in ("PIP_CONFIG_FILE",):
        settings.setdefault(name[4:].lower().replace("_", "-"), value)
with open(sys.argv[1], "w") as fh:
    fh.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(settings.items())))
paths = set()
for value in settings.values():
    for word in value.split():
        path = re.sub(r"^file://", "", word)
        if word.startswith("file://") and path.rstrip("/").endswith("/simple"):
            path = os.path.dirname(path.rstrip("/"))  # a PEP 503 tree links ../files/...
        if path.startswith("/") and os.path.exists(path):
            paths.add(os.path.realpath(path) if os.path.isfile(path) else path)
for path in sorted(paths):
    print(f"--volume={path}:{path}:ro")
EOF
)
MOUNTS+=("--volume=$WORK/pip.conf:/etc/pip.conf:ro")
say "building the service target of $DOCKERFILE (build log: $WORK/build.log)"
BUILD_START=$SECONDS
buildah build --isolation=chroot --network=host --layers=false --target service \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" "${MOUNTS[@]}" -f "$DOCKERFILE" -t "$IMAGE" "$REPO" \
    >"$WORK/build.log" 2>&1 || fail "image build failed ($DOCKERFILE, target service)" "$WORK/build.log"
DIGEST=$(buildah inspect --type image --format '{{.FromImageDigest}}' "$IMAGE")
say "image $IMAGE built in $((SECONDS - BUILD_START)) s, digest $DIGEST"
# The image's own CMD must run too (compose and the table override it for every service).
mapfile -t CMD < <(buildah inspect --type image "$IMAGE" \
    | python3 -c 'import json, sys; [print(a) for a in json.load(sys.stdin)["OCIv1"]["config"].get("Cmd") or []]')
[[ ${#CMD[@]} -gt 0 ]] || fail "the image has no CMD"
buildah from --pull=never --name "$RUN_ID-cmd" "$IMAGE" >/dev/null
buildah run --isolation=chroot --network=host "$RUN_ID-cmd" -- "${CMD[@]}" >"$WORK/cmd.log" 2>&1 \
    || fail "the image's CMD (${CMD[*]}) failed" "$WORK/cmd.log"
say "the image's CMD (${CMD[*]}) exits 0"

# ---------------------------------------------------------------- 4. the stack from the image
ZOO=$("$PY" -c 'from testbed.zoo import ensure_zoo; print(ensure_zoo("test"))') \
    || fail "the host's test zoo could not be built"
# The zoo cache lives under ~ (mode 0700 inside the image, closed to its user): hard links
# under $WORK give the same files a path that user can reach (a copy when across devices).
cp -al "$ZOO" "$WORK/zoo" 2>/dev/null || cp -a "$ZOO" "$WORK/zoo"
say "zoo (test profile, $ZOO) mounted read-only at $WORK/zoo"
"$PY" -m testbed.container_stack --image "$IMAGE" --name-prefix "$RUN_ID" --zoo "$WORK/zoo" \
    --state-dir "$WORK/stack" --model bert-sst2 \
    || fail "the stack from $IMAGE did not serve bert-sst2 (service logs: $WORK/stack/logs)"
say "PASSED: image $DIGEST served bert-sst2 byte-identical to the zoo"
