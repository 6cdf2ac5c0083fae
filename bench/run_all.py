"""Run every benchmark in this folder, one after another, printing their figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["token_verify.py", "http_embedded.py", "ml_bench.py", "gateway_bench.py"]

for name in BENCHES:
    path = HERE / name
    if not path.exists():
        continue
    print(f"\n=== {name} ===", flush=True)
    subprocess.run([sys.executable, str(path)], cwd=HERE, check=False)
