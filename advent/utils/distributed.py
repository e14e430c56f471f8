"""Several processes for train / esl / test under torchrun: the process group and the few collectives used.

    torchrun --nproc_per_node=N advent/scripts/train.py --cfg FILE      (also esl.py, test.py)

A thin layer, as torchvision's reference scripts: each stage runs every check that can fail
(config, data lists, checkpoints, output folders) before it joins the process group
(`join_process_group`), identically on every process, and after that any process that fails
simply ends: torchrun then stops the others. Started plainly, a script stays one process on
cuda:GPU_ID (or the CPU: GPU_ID -1, or no CUDA) and every helper below reduces to the
single-process case. torchrun with one process (WORLD_SIZE 1) is the plain case too: no group.

Each process takes its own share of the images (`shard_batches`: whole batches, no padding, no
image twice), counts are summed over the processes (`sum_over_processes`), and only the main
process (rank 0) writes results, caches, snapshots and run records.
"""
import inspect
import logging
import os
from contextlib import ExitStack

import torch
import torch.distributed as dist

from advent.utils.cuda_flags import set_cuda_flags
from advent.utils.errors import UserError

log = logging.getLogger(__name__)


# --- where this process stands ---

def launched_by_torchrun():
    """True when torchrun started this process as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    """This process's rank; before the process group exists, torchrun's RANK."""
    if is_distributed():
        return dist.get_rank()
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def get_world_size():
    """The number of processes; before the process group exists, torchrun's WORLD_SIZE."""
    if is_distributed():
        return dist.get_world_size()
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def is_main_process():
    """Rank 0, or the only process."""
    return get_rank() == 0


# --- starting and ending ---

def select_device(gpu_id=0, tf32=True, cudnn_benchmark=False):
    """This process's device, before any process group: the CPU with `gpu_id` -1 (GPU_ID -1,
    also under torchrun, which then uses gloo) or without CUDA; under torchrun cuda:LOCAL_RANK
    (GPU_ID is then ignored); otherwise cuda:GPU_ID. Sets the config's TF32 and CUDNN_BENCHMARK
    for CUDA kernels (advent.utils.cuda_flags)."""
    set_cuda_flags(tf32, cudnn_benchmark)
    if gpu_id < 0 or not torch.cuda.is_available():
        return torch.device("cpu")
    if launched_by_torchrun():
        per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        if per_machine > torch.cuda.device_count():
            raise UserError(f"torchrun started {per_machine} processes on this machine, which sees "
                            f"{torch.cuda.device_count()} GPU(s): --nproc_per_node must not exceed them")
        gpu_id = int(os.environ["LOCAL_RANK"])
    elif gpu_id >= torch.cuda.device_count():
        raise UserError(f"GPU_ID is {gpu_id}, but this machine sees {torch.cuda.device_count()} GPU(s) "
                        "(GPU_ID -1: the CPU)")
    device = torch.device("cuda", gpu_id)
    torch.cuda.set_device(device)
    return device


def join_process_group(device):
    """Under torchrun, join its process group (once): NCCL for a GPU, gloo on the CPU. A stage
    calls it after its checks; without torchrun it does nothing."""
    if not launched_by_torchrun() or is_distributed():
        return
    if device.type == "cuda":
        # binding the group to this GPU (torch >= 2.3) tells every collective, barriers included, its device
        bind = {"device_id": device} if _accepts(dist.init_process_group, "device_id") else {}
        dist.init_process_group("nccl", **bind)
    else:
        dist.init_process_group("gloo")
    log.info("process %d of %d on %s", get_rank(), get_world_size(), device)


def _accepts(function, name):
    """Whether `function` takes the keyword `name` (in the installed torch)."""
    return name in inspect.signature(function).parameters


def leave_process_group():
    """Leave the process group (when joined); every process waits for the others first, so
    that none ends (and makes torchrun stop the rest) before the main process is done."""
    if is_distributed():
        barrier()
        dist.destroy_process_group()


def lost_another_process(error):
    """Whether `error` is the process group's report that another process ended (gloo: its
    connection closed; NCCL: a backend error), which torchrun answers by stopping the rest."""
    if not is_distributed():
        return False
    text = str(error)
    return (isinstance(error, getattr(dist, "DistBackendError", ())) or "closed by peer" in text
            or "reset by peer" in text)


def barrier():
    if is_distributed():  # NCCL: on this process's GPU
        dist.barrier(device_ids=[torch.cuda.current_device()] if dist.get_backend() == "nccl" else None)


# --- collectives ---

def _comm_device():
    """Where collective tensors live: the current GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_over_processes(tensor):
    """The element-wise sum of `tensor` over all processes (a new tensor on the input's device;
    the input itself when there is one process)."""
    if not is_distributed():
        return tensor
    total = tensor.detach().to(_comm_device(), copy=True)
    dist.all_reduce(total)
    return total.to(tensor.device)


def max_over_processes(value):
    """The largest of the processes' integer `value`s."""
    if not is_distributed():
        return int(value)
    flag = torch.tensor([int(value)], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def broadcast_from_main(obj):
    """The main process's `obj` (any picklable object), on every process."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


# --- sharing the work ---

def shard_batches(indices, batch_size, rank=None, world_size=None):
    """This process's share of `indices` (a range or list, in order) cut into batches of
    `batch_size`: the batches a single process would form, split into contiguous blocks, one per
    process. No padding, no index twice; a process may get none. Because whole batches are
    shared out, every batch is the one a single process computes."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    indices = list(indices)
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    first, last = (len(batches) * r // world_size for r in (rank, rank + 1))
    return batches[first:last]


# --- training ---

def data_parallel(module, device):
    """`module` in DistributedDataParallel (the module itself keeps its plain state-dict names).

    No buffer broadcast before each forward: the frozen-affine batch norms normalise with the
    statistics of each process's own batch in training mode, so their running statistics never
    enter a gradient; each process keeps its own, and the main process saves its own (as a single
    process would). Every parameter that requires a gradient gets one in each synchronising
    backward of the AdvEnt loop, so unused-parameter detection stays off."""
    ddp = torch.nn.parallel.DistributedDataParallel
    # torch >= 2.14 renamed the switch (and syncs the buffers once at the start, which is harmless)
    no_buffer_sync = ({"forward_sync_buffers": False} if _accepts(ddp, "forward_sync_buffers")
                      else {"broadcast_buffers": False})
    device_ids = [device.index] if device.type == "cuda" else None
    return ddp(module, device_ids=device_ids, **no_buffer_sync)


def no_sync(modules):
    """Gradients of the backward passes inside accumulate locally in these DDP-wrapped modules,
    and are averaged with the next synchronising backward (a no-op for plain modules)."""
    stack = ExitStack()
    for module in modules:
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            stack.enter_context(module.no_sync())
    return stack
