"""`zerotune submit`: send a job to a running Ray cluster through the Jobs API and follow it.

The working directory travels with the job (the top-level packages import on every node), the
runtime_env comes from the spec, and the cluster runs `zerotune <command> <spec> [overrides]`.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from pathlib import Path

from trainers.console import say

from .config import ray_runtime_env
from .errors import ConnectError, UserError
from .spec import ExperimentSpec

# Never ship these with the job: the local venv, caches, results and VCS data.
EXCLUDES = [".venv", ".git", "**/__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "*.egg-info",
            "bench/results", "results", ".whl", ".gl"]
DEFAULT_ADDRESS = "http://127.0.0.1:8265"


def runtime_env(spec: ExperimentSpec, working_dir: str) -> dict:
    return ray_runtime_env(spec.cluster.runtime_env, working_dir=working_dir, excludes=EXCLUDES)


def _use_local_auth_token() -> None:
    """Ray 2.60 clusters require a token by default; like `ray job submit`, send the local one
    (~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH) when the user has not chosen a mode."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # an older Ray without token auth
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def submit(spec: ExperimentSpec, spec_file: str, overrides: list[str], *, command: str = "run",
           address: str | None = None, working_dir: str = ".", follow: bool = True) -> tuple[str, str]:
    """Submit the job; with follow=True, stream its logs until it ends. Returns (job id, status)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or DEFAULT_ADDRESS
    _use_local_auth_token()
    root = Path(working_dir).resolve()
    spec_path = Path(spec_file).resolve()
    if not spec_path.is_relative_to(root):
        raise UserError(f"the spec {spec_file} must sit inside the working directory {root}, which is what "
                        "travels to the cluster")
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ConnectError(f"no Ray Jobs API answers at {address!r} ({err}). Start a cluster with "
                           "`ray start --head` (dashboard on 127.0.0.1:8265) or pass --address") from None
    entrypoint = shlex.join(["zerotune", command, str(spec_path.relative_to(root)), *overrides])
    deadline = time.time() + 120
    while True:
        try:
            job_id = client.submit_job(
                entrypoint=entrypoint,
                runtime_env=runtime_env(spec, str(root)),
                submission_id=f"zerotune-{spec.name}-{int(time.time())}",
                metadata={"zerotune_spec": spec.name},
            )
            break
        except RuntimeError as err:
            # A freshly started head answers before its job agent is up; that passes in seconds.
            if "No available agent" not in str(err) or time.time() > deadline:
                raise
            time.sleep(2)
    say(f"submitted {job_id} to {address}: {entrypoint}")
    if not follow:
        return job_id, str(client.get_job_status(job_id))

    async def _tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)  # the job's own output, verbatim
            sys.stdout.flush()

    asyncio.run(_tail())
    status = client.get_job_status(job_id)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    return job_id, str(status)
