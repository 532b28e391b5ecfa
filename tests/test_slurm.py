"""Against a real SLURM: a two-node cluster on this machine (Debian's slurmctld + two slurmd, AuthType=auth/none,
its own ports and state under a temporary folder) runs slurm/train.sbatch with DDP on CPU (gloo), requeues it on
SIGUSR1, runs it over two nodes, and runs Hydra sweeps through the submitit launcher (conf/hydra/launcher/slurm.yaml).

Run with ``pytest -m slurm`` (excluded from the default run). Without the daemons, or without root to run them,
the tests are skipped; HALTON_REQUIRE_SLURM=1 (CI) turns the skip into a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900),
              pytest.mark.xdist_group("slurm")]  # one pytest-xdist worker: one cluster

ROOT = Path(__file__).resolve().parent.parent
SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])
NEEDED = ("slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel", "squeue", "sinfo")
NODES = ("n0", "n1")  # two slurmd on this host: two SLURM nodes for multi-node jobs
STEPS = 200           # of the tiny digits model, enough for a signal to land mid-run
TINY = ("data=digits trainer.accelerator=cpu trainer.precision=32-true model.net.depth=1 model.net.hidden_dim=32 "
        "model.net.heads=2 model.net.mlp_dim=64 data.batch_size=8 model.sample_grid=null "
        f"trainer.max_steps={STEPS} callbacks.model_checkpoint.every_n_train_steps=50 callbacks.ema.decay=0.9")


def unavailable(reason: str) -> None:
    if os.environ.get("HALTON_REQUIRE_SLURM") == "1":
        pytest.fail(f"{reason} (HALTON_REQUIRE_SLURM=1: the SLURM tests must run here)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalCluster:
    """slurmctld and one slurmd per node of NODES, all on this host, configured and kept under ``folder``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.conf = folder / "slurm.conf"
        self.host = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
        # Root runs the daemons (slurmd starts the jobs' processes); a user with passwordless sudo works too.
        self.as_root = [] if os.geteuid() == 0 else ["sudo", "-n"]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        self.env.update(SLURM_CONF=str(self.conf), PATH=SBIN)

    def write_config(self) -> None:
        cpus = os.cpu_count() or 1
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2 ** 20 // (2 * len(NODES))
        nodes = "\n".join(f"NodeName={name} NodeHostname={self.host} NodeAddr=127.0.0.1 Port={free_port()} "
                          f"CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN" for name in NODES)
        folder = self.folder
        self.conf.write_text(f"""\
ClusterName=halton-test
SlurmctldHost={self.host}
SlurmctldPort={free_port()}
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmUser=root
SlurmdUser=root
ReturnToService=2
SchedulerParameters=sched_interval=2
KillWait=10
MinJobAge=3600
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool-%n
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd-%n.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd-%n.log
{nodes}
PartitionName=debug Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
""")
        for name in NODES:
            (folder / f"spool-{name}").mkdir(parents=True, exist_ok=True)
        (folder / "state").mkdir(exist_ok=True)

    def start(self) -> None:
        self.write_config()
        self.run(*self.as_root, "slurmctld", "-c", "-f", str(self.conf))
        for name in NODES:
            self.run(*self.as_root, "slurmd", "-c", "-f", str(self.conf), "-N", name)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False).stdout.split()
            if states.count("idle") == len(NODES):
                return
            time.sleep(0.5)
        raise AssertionError(f"the local SLURM cluster did not come up; sinfo: {states}\n{self.logs()}")

    def stop(self) -> None:
        self.run("scancel", "--partition=debug", check=False)
        # Let the jobs end while slurmctld still listens: their slurmstepd would otherwise linger, retrying.
        deadline = time.monotonic() + 30
        while self.run("squeue", "-h", check=False).stdout.strip() and time.monotonic() < deadline:
            time.sleep(0.5)
        pids = [int(p.read_text()) for p in self.folder.glob("*.pid") if p.read_text().strip().isdigit()]
        for pid in pids:
            self.run(*self.as_root, "kill", "-TERM", str(pid), check=False)
        deadline = time.monotonic() + 20
        while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in pids:
            if Path(f"/proc/{pid}").exists():
                self.run(*self.as_root, "kill", "-KILL", str(pid), check=False)

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in sorted(self.folder.glob("*.log")))

    def run(self, *command: str, check: bool = True, env: dict | None = None, timeout: float = 120,
            cwd: Path = ROOT) -> subprocess.CompletedProcess:
        result = subprocess.run(command, cwd=cwd, env={**self.env, **(env or {})}, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                                 f"{result.stderr[-3000:]}")
        return result

    def job_field(self, job_id: str, field: str) -> str:
        shown = self.run("scontrol", "show", "job", job_id, check=False).stdout
        match = re.search(rf"\b{field}=(\S+)", shown)
        return match.group(1) if match else ""

    def wait_for(self, condition, what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.logs()}")
            time.sleep(0.5)

    def wait_done(self, job_id: str, timeout: float = 300) -> str:
        self.wait_for(lambda: self.job_field(job_id, "JobState") not in ("PENDING", "RUNNING", "COMPLETING",
                                                                          "CONFIGURING", "REQUEUED"),
                      f"job {job_id} to end", timeout)
        return self.job_field(job_id, "JobState")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = [name for name in NEEDED if shutil.which(name, path=SBIN) is None]
    if missing:
        unavailable(f"SLURM is not installed ({', '.join(missing)} not found); "
                    "apt-get install slurmctld slurmd slurm-client")
    if os.geteuid() != 0 and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode != 0:
        unavailable("the SLURM daemons need root (or passwordless sudo) to start jobs")
    local = LocalCluster(tmp_path_factory.mktemp("slurm"))
    try:
        local.start()
        yield local
    finally:
        local.stop()


def train_env(root: Path, name: str, *overrides: str) -> dict[str, str]:
    """slurm/train.sbatch's documented variables for a tiny digits run on CPU under ``root``/runs/``name``."""
    return {"HALTON_EXPERIMENT": "digits", "HALTON_NAME": name, "HALTON_ROOT": str(root),
            "HALTON_PYTHON": sys.executable, "HALTON_MASTER_ADDR": "127.0.0.1",  # node names n0, n1 do not resolve
            # rank 0's port: Lightning's SLURM default (15000 + the job id) repeats with every fresh test cluster,
            # whose job ids restart at 1, and a run just before may still hold it
            "MASTER_PORT": str(free_port()), "HALTON_OVERRIDES": " ".join([TINY, *overrides])}


def submit(cluster: LocalCluster, script: str, env: dict, *sbatch_args: str) -> tuple[str, Path]:
    log = Path(env["HALTON_ROOT"]) / f"{env.get('HALTON_NAME', 'job')}-%j.out"
    job_id = cluster.run("sbatch", "--parsable", "--gpus-per-node=0", "--cpus-per-task=1", "--time=20",
                         f"--output={log}", *sbatch_args, script, env=env).stdout.strip().split(";")[0]
    return job_id, Path(str(log).replace("%j", job_id))


def last_checkpoint(root: Path, name: str) -> dict:
    return torch.load(root / "runs" / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_same_weights_and_optimizer(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] == STEPS
    for key in ("current_model_state", "state_dict"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}[{name}] differs"
    for state_a, state_b in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(state_a[k], state_b[k]) for k in ("exp_avg", "exp_avg_sq"))


@pytest.fixture(scope="module")
def straight_run(cluster, tmp_path_factory):
    """sbatch slurm/train.sbatch: one node, 2 tasks doing DDP on CPU, STEPS steps without interruption."""
    root = tmp_path_factory.mktemp("straight")
    job_id, log = submit(cluster, "slurm/train.sbatch", train_env(root, "ddp"), "--nodes=1", "--ntasks-per-node=2")
    state = cluster.wait_done(job_id)
    output = log.read_text()
    assert state == "COMPLETED", output[-4000:]
    return root, output


def test_sbatch_trains_with_two_ddp_tasks(straight_run):
    root, output = straight_run
    # srun --label: every line starts with the rank that wrote it
    assert "1 node(s) x 2 task(s)" in output
    assert "0: Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2" in output
    assert "1: Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in output
    assert "distributed_backend=gloo" in output
    assert f"0: rank 0/2: trained to step {STEPS}" in output and f"1: rank 1/2: trained to step {STEPS}" in output
    assert last_checkpoint(root, "ddp")["global_step"] == STEPS
    assert len(last_checkpoint(root, "ddp")["rng_states"]) == 2  # both ranks' generators
    assert [p.name for p in (root / "runs" / "ddp" / "logs").iterdir()] == ["version_0"]  # rank 0 logs alone
    assert sorted(p.name for p in (root / "runs" / "ddp").glob("train_rank*.log")) == ["train_rank0.log",
                                                                                      "train_rank1.log"]


def test_sigusr1_saves_requeues_and_resumes_exactly(cluster, straight_run, tmp_path):
    job_id, log = submit(cluster, "slurm/train.sbatch", train_env(tmp_path, "requeued"), "--nodes=1",
                         "--ntasks-per-node=2")
    first = tmp_path / "runs" / "requeued" / "checkpoints" / "step_0000050.ckpt"
    cluster.wait_for(first.exists, "the first checkpoint", timeout=300)
    # What `#SBATCH --signal=SIGUSR1@90` does before the time limit: SIGUSR1 to every task of the job.
    cluster.run("scancel", "--signal=USR1", job_id)
    cluster.wait_for(lambda: cluster.job_field(job_id, "Restarts") == "1", "the requeue", timeout=120)
    # SLURM holds a requeued job back for two minutes (its BeginTime); let it start now.
    cluster.wait_for(lambda: cluster.job_field(job_id, "JobState") == "PENDING", "the job to be pending", 120)
    cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
    state = cluster.wait_done(job_id)
    output = log.read_text()
    details = cluster.run("scontrol", "show", "job", job_id).stdout
    assert state == "COMPLETED", f"{output[-6000:]}\n{details}\n{cluster.logs()}"
    stopped = re.search(r"0: SIGUSR1: saved \S+last\.ckpt at step (\d+)", output)
    assert stopped and 50 <= int(stopped.group(1)) < STEPS, output[-4000:]
    step = stopped.group(1)
    assert f"0: rank 0/2: stopped at step {step} (SIGUSR1)" in output
    assert f"1: rank 1/2: stopped at step {step} (SIGUSR1)" in output
    assert f"requeued SLURM job {job_id}" in output
    assert "(restart 1)" in output and "0: resuming from" in output and "1: resuming from" in output
    assert f"0: rank 0/2: trained to step {STEPS}" in output and f"1: rank 1/2: trained to step {STEPS}" in output
    # Interrupted at an arbitrary step, requeued and resumed: bitwise the uninterrupted run.
    straight_root, _ = straight_run
    assert_same_weights_and_optimizer(last_checkpoint(straight_root, "ddp"), last_checkpoint(tmp_path, "requeued"))


def test_two_nodes(cluster, straight_run, tmp_path):
    job_id, log = submit(cluster, "slurm/train.sbatch", train_env(tmp_path, "two_nodes"), "--nodes=2",
                         "--ntasks-per-node=1")
    state = cluster.wait_done(job_id)
    output = log.read_text()
    assert state == "COMPLETED", output[-4000:]
    assert f"on {NODES[0][:-1]}[0-1]: 2 node(s) x 1 task(s)" in output
    assert "1: Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in output
    assert f"0: rank 0/2: trained to step {STEPS}" in output and f"1: rank 1/2: trained to step {STEPS}" in output
    # 2 nodes x 1 task is the same computation as 1 node x 2 tasks.
    straight_root, _ = straight_run
    assert_same_weights_and_optimizer(last_checkpoint(straight_root, "ddp"), last_checkpoint(tmp_path, "two_nodes"))


def test_submitit_sweep_runs_one_slurm_job_per_scheduler(cluster, straight_run, tmp_path):
    straight_root, _ = straight_run
    checkpoint = straight_root / "runs" / "ddp" / "checkpoints" / "last.ckpt"
    sweep = tmp_path / "sweep"
    env = {"HALTON_SWEEP_GPUS": "0", "HALTON_SWEEP_CPUS": "1", "HALTON_SWEEP_TIME_MIN": "10"}
    result = cluster.run(sys.executable, "sample.py", "-m", "hydra/launcher=slurm", "experiment=digits", "data=digits",
                         "scheduler=halton,confidence", f"checkpoint={checkpoint}", "model.net.depth=1",
                         "model.net.hidden_dim=32", "model.net.heads=2", "model.net.mlp_dim=64", "steps=4",
                         "per_class=1", "device=cpu", f"out_dir={tmp_path / 'grids'}", f"hydra.sweep.dir={sweep}",
                         env=env, timeout=600)
    assert "Submitit 'slurm' sweep output dir" in result.stdout + result.stderr
    for scheduler in ("halton", "confidence"):
        assert (tmp_path / "grids" / f"{scheduler}_steps4_cfg1_seed0.png").is_file()
    # One array task per cell, each a SLURM job that ran on a node of the cluster
    jobs = sorted(p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d", p.name))
    assert len(jobs) == 2 and jobs[0].endswith("_0") and jobs[1].endswith("_1"), jobs
    for job in jobs:
        output = next((sweep / ".submitit" / job).glob("*_log.out")).read_text()
        assert re.search(r"wrote \S+_steps4_cfg1_seed0\.png", output), output[-2000:]
        assert cluster.wait_done(job) == "COMPLETED"  # the result file is written just before the process exits


# The evaluation tests share paths.data_dir (under the straight run's folder): the digits reference features are
# computed once and cached there.
EVAL_TINY = ["experiment=digits", "data=digits", "accelerator=cpu", "model.net.depth=1", "model.net.hidden_dim=32",
             "model.net.heads=2", "model.net.mlp_dim=64", "num_images=20", "batch_size=10"]


def result_cells(results: Path) -> list[tuple[str, str]]:
    rows = [line.split(",") for line in results.read_text().splitlines()]
    header = rows[0]
    return sorted((row[header.index("scheduler")], row[header.index("steps")]) for row in rows[1:])


def test_evaluate_sbatch_sweeps_the_cells_over_two_tasks(cluster, straight_run, tmp_path):
    straight_root, _ = straight_run
    env = {"HALTON_EXPERIMENT": "digits", "HALTON_NAME": "eval", "HALTON_ROOT": str(tmp_path),
           "HALTON_PYTHON": sys.executable, "HALTON_MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "HALTON_CHECKPOINT": str(straight_root / "runs" / "ddp" / "checkpoints" / "last.ckpt"),
           "HALTON_SCHEDULERS": "halton,confidence", "HALTON_STEPS": "4",
           "HALTON_OVERRIDES": " ".join([*EVAL_TINY[1:], f"paths.data_dir={straight_root / 'data'}"])}
    job_id, log = submit(cluster, "slurm/evaluate.sbatch", env, "--nodes=1", "--ntasks-per-node=2")
    state = cluster.wait_done(job_id)
    output = log.read_text()
    assert state == "COMPLETED", output[-4000:]
    assert "1: Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in output  # each cell split over both tasks
    assert result_cells(tmp_path / "runs" / "eval" / "eval" / "results.csv") == [("confidence", "4"), ("halton", "4")]


def test_evaluate_submitit_sweep_runs_one_slurm_job_per_cell(cluster, straight_run, tmp_path):
    straight_root, _ = straight_run
    checkpoint = straight_root / "runs" / "ddp" / "checkpoints" / "last.ckpt"
    env = {"HALTON_SWEEP_GPUS": "0", "HALTON_SWEEP_CPUS": "1", "HALTON_SWEEP_TIME_MIN": "10"}
    cluster.run(sys.executable, "evaluate.py", "-m", "hydra/launcher=slurm", *EVAL_TINY, f"checkpoint={checkpoint}",
                "scheduler=halton,random", "steps=4", f"paths.runs_dir={tmp_path}",
                f"paths.data_dir={straight_root / 'data'}", "name=eval", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                env=env, timeout=600)
    assert result_cells(tmp_path / "eval" / "eval" / "results.csv") == [("halton", "4"), ("random", "4")]
    jobs = [p.name for p in (tmp_path / "sweep" / ".submitit").iterdir() if re.fullmatch(r"\d+_\d", p.name)]
    assert len(jobs) == 2
    for job in jobs:  # the result file is written just before the job's process exits
        assert cluster.wait_done(job) == "COMPLETED"
