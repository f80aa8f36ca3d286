"""The end-to-end demo on the embedded defaults: `make demo`.

Extracts the arith train and test splits with the packaged SmolLM2-135M-Instruct into ./stores
(a second run is a cache hit), then describes the stores.
"""

from __future__ import annotations

import subprocess
import sys

STEPS = [
    ["extract", "--split", "train", "--limit", "1000"],
    ["extract", "--split", "test", "--limit", "100"],
    ["featurestore", "ls", "stores"],
]


def main() -> None:
    for step in STEPS:
        print(f"\n$ {' '.join(step)}", flush=True)
        subprocess.run(step, check=True)


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as error:
        sys.exit(error.returncode)
