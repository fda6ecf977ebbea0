"""Time `import latent_residual` in fresh interpreters (target: <= 0.5 s on the 2-core CPU).

Run: python benchmarks/import_time.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import latent_residual"], check=True)
        times.append(time.perf_counter() - start)
    heavy = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sys, latent_residual; "
                "print(sorted(m for m in ('torch', 'mujoco', 'onnx', 'dm_control') if m in sys.modules))"
            ),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(
        f"import latent_residual: median {statistics.median(times):.3f} s, max {max(times):.3f} s "
        f"over {args.repeat} runs"
    )
    print(f"heavy modules imported: {heavy}")


if __name__ == "__main__":
    main()
