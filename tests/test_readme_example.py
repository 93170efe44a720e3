"""The README's example specialist, run verbatim as its own process, joins a campaign and proposes."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

from bus.connection import Bus
from cluster import ROOT, Cluster


def readme_specialist() -> str:
    section = (ROOT / "README.md").read_text().split("## Adding a specialist", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_specialist_proposes_on_the_incumbent(arx_env, tmp_path):
    script = tmp_path / "lower_lr.py"
    script.write_text(readme_specialist())
    cluster = Cluster(arx_env, tmp_path / "logs")
    assert cluster.arx("campaign", "start", "--task", "digits-speedrun", "--campaign", "doc").returncode == 0
    agent = subprocess.Popen([sys.executable, str(script)], env=arx_env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        async def first_proposal():
            async with await Bus.connect(role="admin") as bus:
                for _ in range(240):
                    async for batch in bus.read(subject="arx.ev.doc.trial.*.proposed"):
                        for msg in batch:
                            if "lower-lr" in msg.subject:
                                return msg
                    await asyncio.sleep(0.25)

        msg = asyncio.run(first_proposal())
    finally:
        agent.kill()
        output = agent.communicate()[0].decode(errors="replace")
    assert msg is not None, output[-2000:]
    event = msg.data.decode()
    assert '"specialist":"lower-lr"' in event and '"parent_id":"baseline"' in event
    assert "-LR = 0.01" in event and "+LR = 0.007" in event
    assert '"shown_ids":["baseline"]' in event
