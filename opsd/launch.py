"""Launch ``python -m opsd.train`` on one or many nodes with ``torchrun`` or ``deepspeed``.

    python -m opsd.launch --config recipes/x.yaml loss.type=jsd --nproc-per-node 8 --dry-run
    python -m opsd.launch --config recipes/x.yaml --hostfile hosts --launcher deepspeed --dry-run

It validates the config (and what depends on the world size: ``rollout.tensor_parallel_size``
must divide it, ``train.prompts_per_step`` must be a multiple of it) before any process starts,
prints the resolved command(s), and without ``--dry-run`` replaces itself with this node's command.

Hostfile: DeepSpeed's format, one ``hostname slots=N`` per line, ``#`` comments. With
``--launcher deepspeed`` one command on the first host starts every node (over ssh/pdsh). With
``--launcher torchrun`` every node runs its own command (printed per node; the one run here is
chosen by ``--node-rank`` or by this machine's hostname). The config path and the working
directory must be the same on every node (a shared file system).
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from opsd.config import ConfigError, load_config

DEFAULT_PORT = 29500
_HOST_LINE = re.compile(r"^(\S+)\s+slots=(\d+)\s*$")


class LaunchError(ValueError):
    """A launch problem (hostfile, world size, node rank); the message names the option or line."""


@dataclass
class Plan:
    """Where the ranks go: ``hosts[i]`` runs ``slots[i]`` processes (node rank i)."""

    hosts: List[str]
    slots: List[int]
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return sum(self.slots)

    @property
    def nnodes(self) -> int:
        return len(self.hosts)


def parse_hostfile(path: str) -> List[Tuple[str, int]]:
    """``[(host, slots), ...]`` from a DeepSpeed hostfile; errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise LaunchError(f"--hostfile {path}: no such file")
    hosts: List[Tuple[str, int]] = []
    for lineno, raw in enumerate(p.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _HOST_LINE.match(line)
        if not m:
            raise LaunchError(f"{path}:{lineno}: expected 'hostname slots=N', got {raw.strip()!r}")
        host, slots = m.group(1), int(m.group(2))
        if slots < 1:
            raise LaunchError(f"{path}:{lineno}: host {host} has slots={slots}; need at least 1")
        if any(h == host for h, _ in hosts):
            raise LaunchError(f"{path}:{lineno}: host {host} is listed twice")
        hosts.append((host, slots))
    if not hosts:
        raise LaunchError(f"{path}: no hosts (expected lines like 'worker-0 slots=8')")
    return hosts


def make_plan(nproc_per_node: Optional[int], nnodes: Optional[int], hostfile: Optional[str],
              master_addr: Optional[str], master_port: int, launcher: str) -> Plan:
    if nproc_per_node is not None and nproc_per_node < 1:
        raise LaunchError(f"--nproc-per-node must be >= 1, got {nproc_per_node}")
    if nnodes is not None and nnodes < 1:
        raise LaunchError(f"--nnodes must be >= 1, got {nnodes}")
    if hostfile:
        entries = parse_hostfile(hostfile)
        if nnodes is not None and nnodes != len(entries):
            raise LaunchError(f"--nnodes {nnodes} but the hostfile {hostfile} lists {len(entries)} hosts")
        hosts = [h for h, _ in entries]
        slots = [s for _, s in entries]
        if nproc_per_node is not None:
            over = [h for h, s in entries if nproc_per_node > s]
            if over:
                raise LaunchError(f"--nproc-per-node {nproc_per_node} exceeds the slots of {', '.join(over)} "
                                  f"in {hostfile}")
            slots = [nproc_per_node] * len(hosts)
        if launcher == "torchrun" and len(set(slots)) > 1:
            raise LaunchError(f"torchrun needs the same number of processes on every node, but {hostfile} has "
                              f"slots {slots}; pass --nproc-per-node or use --launcher deepspeed")
        return Plan(hosts, slots, master_addr or hosts[0], master_port)
    n = nnodes or 1
    if n > 1 and not master_addr:
        raise LaunchError(f"--nnodes {n} needs --master-addr (the node-0 address) or a --hostfile")
    hosts = ["localhost"] if n == 1 else [f"node{i}" for i in range(n)]
    return Plan(hosts, [nproc_per_node or 1] * n, master_addr or "127.0.0.1", master_port)


def check_config(cfg, plan: Plan) -> List[str]:
    """Errors for settings the world size breaks; returns warnings (printed, not fatal)."""
    world, r, t = plan.world_size, cfg.rollout, cfg.train
    if r.backend == "vllm" and world % r.tensor_parallel_size:
        raise LaunchError(f"rollout.tensor_parallel_size={r.tensor_parallel_size} does not divide the world size "
                          f"{world} ({plan.nnodes} node(s) x {_slots_text(plan)} processes): every group of "
                          f"tensor_parallel_size ranks hosts one vLLM engine")
    if t.prompts_per_step % world:
        raise LaunchError(f"train.prompts_per_step={t.prompts_per_step} is not a multiple of the world size "
                          f"{world}: every rank takes prompts_per_step / world_size prompts")
    warnings = []
    if r.backend == "vllm" and r.tensor_parallel_size > 1 and any(s % r.tensor_parallel_size for s in plan.slots):
        warnings.append(f"rollout.tensor_parallel_size={r.tensor_parallel_size} does not divide the processes per "
                        f"node {plan.slots}: some tensor-parallel groups span nodes (slow)")
    if r.backend != "vllm" and r.tensor_parallel_size > 1:
        warnings.append(f"rollout.tensor_parallel_size={r.tensor_parallel_size} is ignored by rollout.backend={r.backend}")
    return warnings


def env_warnings(launcher: str, plan: Plan) -> List[str]:
    """Settings this shell has that the other nodes will not see. The DeepSpeed runner starts them
    over ssh/pdsh forwarding only some variables (PYTHON*, MLFLOW*, ...) and the lines of
    ``.deepspeed_env`` (in ``~`` or here); without ``OPSD_PLUGINS`` there, a plugin section such as
    ``tip`` is unknown on those nodes unless its package is pip-installed (entry point) on them."""
    value = os.environ.get("OPSD_PLUGINS")
    if launcher != "deepspeed" or plan.nnodes == 1 or not value:
        return []
    name = os.environ.get("DS_ENV_FILE", ".deepspeed_env")
    for f in (Path.home() / name, Path(name)):
        if f.is_file() and any(line.startswith("OPSD_PLUGINS=") for line in f.read_text().splitlines()):
            return []
    return [f"OPSD_PLUGINS={value} is set here, but the DeepSpeed runner does not pass it to the other nodes: "
            f"add the line OPSD_PLUGINS={value} to ./{name}, or pip install the plugin package on every node"]


def _slots_text(plan: Plan) -> str:
    return str(plan.slots[0]) if len(set(plan.slots)) == 1 else "+".join(map(str, plan.slots))


def train_args(config: str, overrides: List[str]) -> List[str]:
    return ["--config", config, *overrides]


def torchrun_commands(plan: Plan, args: List[str]) -> List[List[str]]:
    """One command per node (``torch.distributed.run`` is what the ``torchrun`` script runs)."""
    cmds = []
    for node_rank in range(plan.nnodes):
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={plan.nnodes}",
               f"--nproc-per-node={plan.slots[node_rank]}"]
        if plan.nnodes > 1:
            cmd += [f"--node-rank={node_rank}", f"--master-addr={plan.master_addr}",
                    f"--master-port={plan.master_port}"]
        else:
            cmd += ["--standalone"] if plan.master_port == DEFAULT_PORT else [f"--master-port={plan.master_port}"]
        cmds.append(cmd + ["-m", "opsd.train", *args])
    return cmds


def deepspeed_command(plan: Plan, args: List[str], hostfile: Optional[str]) -> List[str]:
    """One command for all nodes (the DeepSpeed runner reaches the others over ssh/pdsh)."""
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", f"--master_port={plan.master_port}"]
    if hostfile:
        cmd += [f"--hostfile={hostfile}", f"--master_addr={plan.master_addr}", f"--num_nodes={plan.nnodes}"]
        if len(set(plan.slots)) == 1:
            cmd += [f"--num_gpus={plan.slots[0]}"]
    else:
        if plan.nnodes > 1:
            raise LaunchError("--launcher deepspeed with --nnodes > 1 needs a --hostfile")
        cmd += [f"--num_gpus={plan.slots[0]}"]
    return cmd + ["--module", "opsd.train", *args]


def this_node_rank(plan: Plan, node_rank: Optional[int]) -> int:
    if node_rank is not None:
        if not 0 <= node_rank < plan.nnodes:
            raise LaunchError(f"--node-rank {node_rank} is outside 0..{plan.nnodes - 1}")
        return node_rank
    if plan.nnodes == 1:
        return 0
    names = {socket.gethostname(), socket.getfqdn(), socket.gethostname().split(".")[0]}
    for i, h in enumerate(plan.hosts):
        if h in names:
            return i
    raise LaunchError(f"this machine ({socket.gethostname()}) is not in the host list {plan.hosts}; "
                      "pass --node-rank")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m opsd.launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config passed to opsd.train")
    p.add_argument("--nproc-per-node", type=int, default=None,
                   help="processes (GPUs) per node; default: the hostfile's slots, else 1")
    p.add_argument("--nnodes", type=int, default=None, help="nodes; default: the hostfile's hosts, else 1")
    p.add_argument("--node-rank", type=int, default=None,
                   help="torchrun: this node's rank (default: found by hostname in the hostfile)")
    p.add_argument("--hostfile", default=None, help="DeepSpeed hostfile: 'hostname slots=N' per line")
    p.add_argument("--master-addr", default=None, help="rendezvous address (default: the first host)")
    p.add_argument("--master-port", type=int, default=DEFAULT_PORT, help="rendezvous port")
    p.add_argument("--launcher", choices=["torchrun", "deepspeed"], default="torchrun")
    p.add_argument("--dry-run", action="store_true", help="validate and print the command(s); start nothing")
    p.add_argument("overrides", nargs="*", help="section.key=value, passed to opsd.train")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # overrides may sit between options
    try:
        cfg = load_config(args.config, args.overrides)
        plan = make_plan(args.nproc_per_node, args.nnodes, args.hostfile, args.master_addr, args.master_port,
                         args.launcher)
        warnings = check_config(cfg, plan) + env_warnings(args.launcher, plan)
        targs = train_args(args.config, args.overrides)
        if args.launcher == "deepspeed":
            cmds, labels = [deepspeed_command(plan, targs, args.hostfile)], ["all nodes (run on the first host)"]
            mine = 0
        else:
            cmds = torchrun_commands(plan, targs)
            labels = [f"node {i} ({h})" for i, h in enumerate(plan.hosts)]
            mine = None if args.dry_run else this_node_rank(plan, args.node_rank)
    except (ConfigError, LaunchError) as e:
        print(f"launch error: {e}", file=sys.stderr)
        return 2
    r = cfg.rollout
    engines = (f"{plan.world_size // r.tensor_parallel_size} vLLM engine(s) of TP {r.tensor_parallel_size}"
               if r.backend == "vllm" else "HF generate rollouts")
    print(f"# config {args.config}: valid | {plan.nnodes} node(s) x {_slots_text(plan)} = world size "
          f"{plan.world_size} | ZeRO-{cfg.engine.zero_stage} | {engines} | "
          f"{cfg.train.prompts_per_step // plan.world_size} prompt(s) per rank per step")
    for w in warnings:
        print(f"# warning: {w}")
    for label, cmd in zip(labels, cmds):
        print(f"# {label}")
        print(shlex.join(cmd))
    if args.dry_run:
        return 0
    sys.stdout.flush()
    cmd = cmds[mine]
    os.execvp(cmd[0], cmd)  # replaces this process; only returns by raising
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
