"""Which shard this process generates when started by a launcher (``shard=auto``): torchrun or SLURM.

torchrun sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; ``srun`` sets ``SLURM_PROCID`` / ``SLURM_NTASKS`` /
``SLURM_LOCALID``. Each process takes shard = its rank of num_shards = the world size, and on ``device=cuda`` the
GPU of its local rank. Generation needs no communication between processes (each writes its own shard files), so
no process group is created; the merge (``stage=filter``) runs once afterwards.
"""

from __future__ import annotations

from typing import Any, Mapping, MutableMapping

from pseudo_ris.data.errors import PseudoRISError

LAUNCHER_VARS = (("RANK", "WORLD_SIZE", "LOCAL_RANK"), ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"))


class LaunchError(PseudoRISError):
    """``shard=auto`` disagrees with the launcher's environment."""


def launcher_shard(params: MutableMapping[str, Any], env: Mapping[str, str]) -> None:
    """Resolve ``params['shard'] == 'auto'`` in place from ``env`` (a plain run: shard 0 of ``num_shards``)."""
    if params.get("shard") != "auto":
        return
    for rank, world, local in LAUNCHER_VARS:
        if rank in env and world in env:
            shard, n = int(env[rank]), int(env[world])
            given = int(params.get("num_shards") or 1)
            if given not in (1, n):
                raise LaunchError(f"num_shards={given} but the launcher started {n} processes ({world}={n}); "
                                  "drop num_shards with shard=auto")
            params["shard"], params["num_shards"] = shard, n
            if params.get("device") == "cuda" and env.get(local) is not None:
                params["device"] = f"cuda:{env[local]}"  # one GPU per process
            return
    params["shard"], params["num_shards"] = 0, int(params.get("num_shards") or 1)
