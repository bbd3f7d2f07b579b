"""A Docker engine and the images for the Docker paths (compose-test, testcontainers).

Each image is named by a variable defaulting to the official image. An official image that
cannot be pulled (Docker Hub is out of reach on these machines) is replaced by a local
stand-in built by scripts/stand-in-images.sh, and the run says so: the stand-ins are not the
official images.

    python -m tests.docker_images [VAR ...]    prints VAR=image lines, for `env $(...)`
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# variable -> (official image, stand-in name for scripts/stand-in-images.sh)
IMAGES = {
    "XCLOUD_POSTGRES_IMAGE": ("postgres:15", "postgres"),
    "XCLOUD_KAFKA_IMAGE": ("apache/kafka:3.9.1", "kafka"),
    "XCLOUD_PYTHON_IMAGE": ("python:3.11-slim", "python"),
}


def say(message: str) -> None:
    print(f"docker-images: {message}", file=sys.stderr, flush=True)


def ensure_engine() -> None:
    """scripts/docker-engine.sh start: says whether it found an engine or started dockerd."""
    subprocess.run([str(ROOT / "scripts" / "docker-engine.sh"), "start"], check=True)


def _available(image: str) -> bool:
    def quiet(*args: str, timeout: float) -> bool:
        try:
            done = subprocess.run(["docker", *args], capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    return quiet("image", "inspect", image, timeout=30) or quiet("pull", "-q", image, timeout=180)


def resolve(variables: list[str]) -> dict[str, str]:
    """VAR -> image for each variable: as set by the caller, else the official image when it
    is there or can be pulled, else the local stand-in (built when missing)."""
    chosen: dict[str, str] = {}
    missing: list[str] = []
    for var in variables:
        official, _ = IMAGES[var]
        if os.environ.get(var):
            chosen[var] = os.environ[var]
        elif _available(official):
            chosen[var] = official
        else:
            missing.append(var)
    if missing:
        names = [IMAGES[var][1] for var in missing]
        say(f"cannot pull {', '.join(IMAGES[v][0] for v in missing)}: using local stand-ins")
        out = subprocess.run(
            [str(ROOT / "scripts" / "stand-in-images.sh"), *names],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout
        built = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        chosen.update({var: built[var] for var in missing})
    for var in variables:
        kind = "official" if chosen[var] == IMAGES[var][0] else "NOT the official image"
        say(f"{var}={chosen[var]} ({kind})")
    return chosen


def main() -> int:
    variables = sys.argv[1:] or list(IMAGES)
    ensure_engine()
    for var, image in resolve(variables).items():
        print(f"{var}={image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
