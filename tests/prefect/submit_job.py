"""Run one remove_backgrounds flow against the fleet's server (a child process of the fleet
test): save the key in a Secret block, run the flow, print its summary as the last line.

Usage: ``python submit_job.py '<json>'`` with ``{"secret": {"name": ..., "value_env": ...},
"parameters": {...}}``; the key is read from the environment variable ``value_env`` names.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys


async def main(spec: dict[str, object]) -> None:
    from prefect.blocks.system import Secret

    from photoroom_bg.prefect import JobFailed, remove_backgrounds

    secret = spec["secret"]
    assert isinstance(secret, dict)
    await Secret(value=os.environ.pop(str(secret["value_env"]))).asave(str(secret["name"]))
    parameters = spec["parameters"]
    assert isinstance(parameters, dict)
    state = await remove_backgrounds(**parameters, return_state=True)
    data = await state.aresult(raise_on_failure=False)
    summary = data.summary.to_dict() if isinstance(data, JobFailed) else data
    print("SUMMARY " + json.dumps({"state": state.type.value, "summary": summary}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
