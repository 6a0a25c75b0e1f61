"""``hydra/launcher=parallel``: Hydra's joblib launcher, made to survive a worker that dies.

With Hydra's ``hydra/launcher=joblib``, one worker killed (the OOM killer, a ``kill -9``) breaks
joblib's process pool: every point then in flight dies with it, the points not yet started never
run, and the sweep aborts without its summary. This launcher (same options: ``n_jobs``, ...) runs
the points through the same pool, takes results as they come, and when the pool breaks:

* the points whose runs were open (RUNNING in MLflow, tagged with this sweep) are recorded KILLED
  and not retried here: a point that takes its worker down may do it again;
* every other point not yet done is launched again in a fresh pool;

so the other points finish, the sweep ends with its summary and a non-zero exit, and rerunning
the same command completes only what is missing (the sweep resumes by run keys).
"""

# No `from __future__ import annotations`: Hydra imports plugins in a way that breaks string
# annotations on the dataclass below.
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_joblib_launcher._core import execute_job
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

log = logging.getLogger(__name__)


def _indexed(idx: int, *args: Any) -> tuple[int, JobReturn]:
    return idx, execute_job(idx, *args)


class ParallelLauncher(JoblibLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra.core.singleton import Singleton
        from joblib import Parallel, delayed
        from joblib.externals.loky.process_executor import TerminatedWorkerError

        from prunelab.redact import redact
        from prunelab.sweep import kill_open_points

        options = {k: v for k, v in self.joblib.items() if v is not None}
        options.update(backend="loky", return_as="generator_unordered")
        jobs = {initial_job_idx + i: list(o) for i, o in enumerate(job_overrides)}
        for idx, overrides in jobs.items():
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        done: dict[int, JobReturn] = {}
        while len(done) < len(jobs):
            todo = [i for i in jobs if i not in done]
            state = Singleton.get_state()
            try:
                for idx, result in Parallel(**options)(
                    delayed(_indexed)(i, jobs[i], self.hydra_context, self.config, self.task_function, state)
                    for i in todo
                ):
                    done[idx] = result
            except TerminatedWorkerError as e:
                open_points = kill_open_points(
                    self.config, {redact(" ".join(jobs[i])): i for i in todo if i not in done}
                )
                log.error(
                    "a worker died (%s); points stopped with it, recorded KILLED: %s; launching the other %d again",
                    str(e).splitlines()[0],
                    ", ".join(f"#{i}" for i in open_points) or "none",
                    len(todo) - len(open_points) - sum(i in done for i in todo),
                )
                for i in open_points:
                    done[i] = _lost(jobs[i])
                if not open_points and not any(i in done for i in todo):
                    # No progress and nothing to blame: give up on the rest rather than loop.
                    for i in todo:
                        done.setdefault(i, _lost(jobs[i]))
        return [done[i] for i in sorted(jobs)]


def _lost(overrides: list[str]) -> JobReturn:
    """The result of a point whose worker died: like a failed point, recorded in MLflow (KILLED)."""
    ret = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
    ret._return_value = None
    return ret


@dataclass
class ParallelLauncherConf(JobLibLauncherConf):
    _target_: str = "hydra_plugins.prunelab_launcher.ParallelLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="parallel", node=ParallelLauncherConf, provider="prunelab")
