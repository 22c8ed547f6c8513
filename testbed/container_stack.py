"""The testbed's service table run inside the service image, for scripts/container_smoke.sh.

``python -m testbed.container_stack --image IMG --name-prefix P --zoo DIR --state-dir DIR``
calls :func:`testbed.launcher.up` with a runner that starts every service of the table
(testbed/services.py, the one docker-compose.yml mirrors) as
``buildah run --isolation=chroot --network=host`` in a working container ``P-<service>`` of
the image, as the image's user (uid 10001): the zoo is mounted read-only and the state dir
read-write, each at its host path, so the table's paths hold inside and outside. Redis runs on
the host (compose takes it from the upstream ``redis`` image, which cannot be pulled here).

Once the testbed is ready (indexed, placed, applied), it fetches ``--model`` with the SDK through
the controller and with ``huggingface_hub.snapshot_download`` from the first edge, and compares
each copy's sha256 with the zoo's file. Prints one line per step; exits 0 only when every copy is
byte-identical, and always stops what it started (the working containers are the script's to
remove). The caller owns ``buildah`` clean-up and the image.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from testbed.services import ServiceSpec, local_argv

IMAGE_UID = 10001  # the Dockerfile's `trimcache` user
WEIGHTS = "model.safetensors"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _hand_over(directory: Path) -> None:
    """Create ``directory`` and give it (and what it holds) to the image's user."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in [directory, *directory.rglob("*")]:
        os.chown(path, IMAGE_UID, IMAGE_UID, follow_symlinks=False)


def buildah_runner(
    image: str, prefix: str, *, zoo: Path, state_dir: Path
) -> Callable[[ServiceSpec], list[str]]:
    """A ``LaunchOptions.runner``: each non-Redis service in its own working container."""
    mounts = [f"--volume={zoo}:{zoo}:ro", f"--volume={state_dir}:{state_dir}:rw"]

    def argv(spec: ServiceSpec) -> list[str]:
        if spec.kind == "redis":
            return local_argv(spec)
        name = f"{prefix}-{spec.name}"
        subprocess.run(
            ["buildah", "from", "--pull=never", "--name", name, image],
            check=True,
            capture_output=True,
        )
        for directory in spec.writes:
            _hand_over(Path(directory))
        env = [f"--env={key}={value}" for key, value in sorted(spec.env.items())]
        return [
            "buildah", "run", "--isolation=chroot", "--network=host",
            f"--user={IMAGE_UID}:{IMAGE_UID}", *mounts, *env, name, "--", *spec.command,
        ]  # fmt: skip

    return argv


def _fail(message: str) -> None:
    sys.stderr.write(message + "\n")


def run(args: argparse.Namespace) -> int:
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from huggingface_hub import snapshot_download

    from client import fetch_model
    from testbed import launcher

    state_dir = Path(args.state_dir).resolve()
    zoo = Path(args.zoo).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o755)
    started = time.monotonic()

    def say(message: str) -> None:
        sys.stdout.write(f"[stack {time.monotonic() - started:5.1f}s] {message}\n")
        sys.stdout.flush()

    options = launcher.LaunchOptions(
        state_dir=state_dir,
        edges=3,
        zoo_dir=zoo,
        profile="test",
        controller_port=0,
        timeout_s=args.timeout_s,
        ready_timeout_s=args.timeout_s,
        manifest_cache_dir=state_dir / "manifests",
        runner=buildah_runner(args.image, args.name_prefix, zoo=zoo, state_dir=state_dir),
    )
    try:
        state = launcher.up(options, on_progress=say)
    except (launcher.TestbedError, subprocess.CalledProcessError) as exc:
        _fail(f"stack failed: {exc}")
        return 1
    try:
        healthy = launcher.status(state_dir)
        for row in healthy:
            say(f"service {row.name:<10} {row.url:<28} healthy={row.healthy} ({row.detail})")
        if not all(row.healthy for row in healthy):
            _fail("stack failed: a service is not healthy")
            return 1
        repo_id = f"trimcache-zoo/{args.model}"
        want = sha256_of(zoo / "repos" / repo_id / WEIGHTS)
        fetched = fetch_model(
            args.model,
            controller_url=state["controller_url"],
            cache_dir=state_dir / "client-cache",
            load=False,
            auth_token=state["auth_token"],
        )
        via_sdk = sha256_of(Path(fetched.path) / WEIGHTS)
        by_source = json.dumps(fetched.report["bytes_by_source"])
        say(f"SDK fetch of {args.model}, bytes by source: {by_source}")
        edge = state["edge_urls"][0]
        snapshot = snapshot_download(
            repo_id, endpoint=edge, cache_dir=state_dir / "hf-client", token=False
        )
        via_edge = sha256_of(Path(snapshot) / WEIGHTS)
        say(f"zoo      {WEIGHTS} sha256 {want}")
        say(f"SDK      {WEIGHTS} sha256 {via_sdk}")
        say(f"edge-1   {WEIGHTS} sha256 {via_edge} (snapshot_download from {edge})")
        if not via_sdk == via_edge == want:
            _fail(f"stack failed: {args.model} differs from the zoo's file")
            return 1
        say(f"sha256 equal: the SDK's and the edge's {args.model} are the zoo's bytes")
        return 0
    finally:
        stopped = launcher.down(state_dir)
        say(f"stopped {', '.join(stopped)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.container_stack")
    parser.add_argument("--image", required=True)
    parser.add_argument("--name-prefix", required=True, help="prefix of the working containers")
    parser.add_argument("--zoo", required=True, help="a built zoo (mounted read-only)")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--model", default="bert-sst2")
    parser.add_argument("--timeout-s", type=float, default=240.0)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
