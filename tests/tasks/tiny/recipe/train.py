import os
import time
from pathlib import Path

VALUE = 5.0
SLEEP = 0.0

out = Path(os.environ.get("ARX_ARTIFACT_DIR", "artifact"))
out.mkdir(parents=True, exist_ok=True)
time.sleep(SLEEP)
(out / "value.txt").write_text(f"{VALUE}\n")
