"""Build the Sift image with podman on this machine: no registry image is needed.

The base image is Debian bookworm made by debootstrap from Debian's packages (kept in podman's
storage, made once per machine). pip inside the build uses this host's pip configuration (index,
find-links, constraints, certificate): it is written to a pip.conf mounted into the build together
with every local path it names. Prints the build time; exits non-zero when a step fails.

    python infra/deploy/podman_build.py [--tag localhost/sift:dev] [--base localhost/sift-base:bookworm]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BASE = "localhost/sift-base:bookworm"
DEFAULT_TAG = "localhost/sift:dev"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = "python3,python3-venv,ca-certificates"


def podman(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], check=check, text=True, capture_output=capture)


def ensure_base(name: str) -> float:
    """Debootstrap + import the base image unless podman already has it; returns seconds spent."""
    if podman("image", "exists", name, check=False).returncode == 0:
        return 0.0
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sift-base-", dir="/var/tmp") as tmp:
        root = Path(tmp) / "root"
        subprocess.run(["nice", "-n", "5", "debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}",
                        "bookworm", str(root), DEBIAN_MIRROR], check=True, stdout=subprocess.DEVNULL)
        for leftover in [*root.glob("var/cache/apt/archives/*.deb"), *root.glob("var/lib/apt/lists/*_*")]:
            leftover.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["podman", "import", "-", name], stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise RuntimeError("tar of the debootstrapped root failed")
    return time.monotonic() - start


def host_pip_config() -> dict[str, str]:
    """This host's effective pip settings (files and PIP_* variables), as `key -> value`."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], check=True, text=True,
                         capture_output=True).stdout
    config: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        config[key.rsplit(".", 1)[-1]] = value.strip().strip("'\"")
    return config


def build_mounts(config: dict[str, str], conf_file: Path) -> list[str]:
    """`--volume` options: the pip.conf, and every local file or folder that the config names."""
    lines = ["[global]"] + [f"{k} = {v}" for k, v in config.items()]
    conf_file.write_text("\n".join(lines) + "\n")
    mounts = ["--volume", f"{conf_file}:/etc/pip.conf:ro"]
    paths = set()
    for value in config.values():
        for item in value.split():
            path = item.removeprefix("file://")
            if path.startswith("/") and Path(path).exists():
                # mount a file index's root folder (file:///opt/pypi/simple -> /opt/pypi)
                paths.add(str(Path(path).parent) if path.endswith("/simple") else path)
    for path in sorted(paths):
        mounts += ["--volume", f"{path}:{path}:ro"]
    return mounts


def build(tag: str, base: str) -> float:
    """`podman build` with niceness 5; returns the build's seconds."""
    with tempfile.TemporaryDirectory(prefix="sift-build-") as tmp:
        mounts = build_mounts(host_pip_config(), Path(tmp) / "pip.conf")
        start = time.monotonic()
        subprocess.run([
            "nice", "-n", "5", "podman", "build", "--layers", "--format", "docker",  # docker: keeps HEALTHCHECK
            "-f", "infra/deploy/Dockerfile", "-t", tag,
            "--build-arg", f"BASE_IMAGE={base}",
            # the CPU wheel comes from the host's find-links/indexes, not from the PyTorch index
            "--build-arg", "TORCH_INDEX_URL=https://pypi.org/simple", *mounts, ".",
        ], cwd=ROOT, check=True)
        return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default=DEFAULT_TAG)
    parser.add_argument("--base", default=DEFAULT_BASE)
    args = parser.parse_args()
    base_s = ensure_base(args.base)
    build_s = build(args.tag, args.base)
    print(f"base image: {base_s:.0f} s ({'made' if base_s else 'cached'}); image build: {build_s:.0f} s")


if __name__ == "__main__":
    main()
