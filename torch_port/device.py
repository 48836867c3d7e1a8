"""Where the port trains (not math): the device, torchrun's process group, and the dataset resident on the device.

torch_port/train.py re-exports these names (``resolve_device``, ``DeviceData``, ``RESIDENT_FRACTION``).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from reference.errors import InputError

# A dataset larger than this fraction of the free device memory stays on the host (pinned) instead.
RESIDENT_FRACTION = 0.25


def resolve_device(device="auto"):
    """"auto": cuda:LOCAL_RANK when CUDA is there, else the CPU. "cuda" means cuda:LOCAL_RANK too."""
    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but torch sees no CUDA device (torch.cuda.is_available() "
                         "is False)")
    index = dev.index if dev.index is not None else int(os.environ.get("LOCAL_RANK", 0))
    if index >= torch.cuda.device_count():
        raise InputError(f"this process wants cuda:{index} (LOCAL_RANK) but only {torch.cuda.device_count()} "
                         "CUDA device(s) are visible: start at most that many processes per node")
    return torch.device("cuda", index)


def init_distributed(device):
    """Join the process group when launched by torchrun (WORLD_SIZE > 1). Returns (rank, world)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return dist.get_rank(), dist.get_world_size()


def unwrap(model):
    """The plain module under torch.compile (``_orig_mod``) and DDP (``module``)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


# ---- data on the device ---------------------------------------------------------------------------

class DeviceData:
    """The dataset as one tensor on the device (or pinned on the host when it is too large).

    ``data[idx]`` takes the runner's GLOBAL batch of indices (a NumPy int array of batch_size) and
    returns this rank's contiguous slice of it, gathered on the device: the indices travel
    host-to-device from pinned memory without blocking, so indexing costs no host sync.
    """

    def __init__(self, x, device, rank=0, world=1, channels_last=False, resident=True):
        self.device, self.rank, self.world, self.channels_last = device, rank, world, channels_last
        self.shape = tuple(x.shape)
        self.pin = device.type == "cuda"
        self.x = x.to(device) if resident else (x.pin_memory() if self.pin else x)

    def __len__(self):
        return self.shape[0]

    def _to(self, a):
        return a.pin_memory().to(self.device, non_blocking=True) if self.pin else a.to(self.device)

    def __getitem__(self, idx):
        idx = np.asarray(idx)
        if idx.ndim != 1 or idx.shape[0] % self.world:
            raise InputError(f"a global batch of {idx.shape[0]} indices does not split over {self.world} processes")
        b = idx.shape[0] // self.world
        local = torch.from_numpy(np.ascontiguousarray(idx[self.rank * b:(self.rank + 1) * b], dtype=np.int64))
        if self.x.device == self.device:
            x0 = self.x.index_select(0, self._to(local))                 # (b, ...) gathered on the device
        else:
            x0 = self._to(self.x.index_select(0, local))                 # (b, ...) gathered on the host
        if self.channels_last and x0.ndim == 4:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        return x0


def fits_on_device(nbytes, device):
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)  # setup time only
    return nbytes <= RESIDENT_FRACTION * free
