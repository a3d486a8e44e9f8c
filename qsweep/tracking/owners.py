"""Which process owns a RUNNING run, and closing the runs whose owner died without ending them: each time
a store is opened to record in."""

from __future__ import annotations

import os
import socket
from typing import List, Optional

import psutil

from qsweep import console
from qsweep.config import TrackingConfig
from qsweep.tracking.names import TAG_ERROR, TAG_OWNER
from qsweep.tracking.store import Store, connect


def open_store(tracking: TrackingConfig, create: bool = True) -> Store:
    """The store and experiment to record in (created on first use unless create=False). Opening it to
    record also ends the runs that dead processes of this host left RUNNING."""
    store = connect(tracking, create)
    if create:
        close_orphans(store)
    return store


def host_id() -> str:
    """Where this process's pids mean something: the host name and, on Linux, the pid namespace (two
    containers with one host name share a store but not their pids)."""
    try:
        return f"{socket.gethostname()}/pidns-{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return socket.gethostname()


def this_process() -> str:
    """The qsweep.owner tag of runs this process must end."""
    me = psutil.Process()
    return f"{host_id()}:{me.pid}:{me.create_time():.3f}"


def _alive(owner: str) -> bool:
    _, pid, started = owner.rsplit(":", 2)
    try:  # the start time tells a reused pid from the original process
        return f"{psutil.Process(int(pid)).create_time():.3f}" == started
    except (psutil.NoSuchProcess, ValueError):
        return False


def close_orphans(store: Store, sweep_run_id: Optional[str] = None) -> List[str]:
    """End as KILLED the RUNNING runs whose process died without ending them (a SIGKILL, an OOM kill, a
    power cut; or, with sweep_run_id, the jobs of that interrupted sweep that ran in a parallel launcher's
    workers), so no run stays RUNNING forever. Only runs owned by processes of this host are judged: on a
    shared server, another machine's (or container's) runs may well be alive. Returns their names."""
    host = host_id()
    query = f"attributes.status = 'RUNNING' and tags.`{TAG_OWNER}` LIKE '{host}:%'"
    if sweep_run_id:
        query += f" and tags.mlflow.parentRunId = '{sweep_run_id}'"
    closed = []
    for run in store.client.search_runs([store.experiment_id], query, max_results=1000):
        owner = run.data.tags[TAG_OWNER]
        if owner.rsplit(":", 2)[0] != host or _alive(owner):  # LIKE treats "_" in a name as a wildcard
            continue
        pid = owner.rsplit(":", 2)[1]
        store.client.set_tag(run.info.run_id, TAG_ERROR, (
            f"interrupted: the sweep was stopped while this job ran in its worker (pid {pid})" if sweep_run_id else
            f"orphaned: its process (pid {pid} on {host}) ended without ending the run (killed by SIGKILL or out "
            "of memory?); closed by a later qsweep"))
        store.client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_name)
    if closed and not sweep_run_id:
        console.say(f"{len(closed)} run(s) left RUNNING by a process that no longer exists, now KILLED: "
                    + ", ".join(closed))
    return closed
