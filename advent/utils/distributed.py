"""Several processes for train / esl / test: torchrun's process group, and the few collectives used.

    torchrun --nproc_per_node=N advent/scripts/train.py --cfg FILE      (also esl.py, test.py)

Launched by torchrun with WORLD_SIZE > 1, a script joins the process group torchrun describes
in its environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): backend NCCL with
one GPU per process (cuda:LOCAL_RANK), gloo on the CPU. Started plainly, it stays one process on
cuda:GPU_ID (or the CPU) and every helper below reduces to the single-process case.

Who does what: each process takes its own share of the images (`shard_batches`: whole batches,
no padding and no image twice), counts are summed over the processes (`sum_over_processes`), and
only the main process (rank 0) writes results, caches, snapshots and run records. A UserError
(or any exception) inside `same_outcome()` on one process is raised on every process, so none is
left waiting in a collective the failed one never reaches.
"""
import inspect
import logging
import os
from contextlib import ExitStack, contextmanager

import torch
import torch.distributed as dist

from advent.utils.errors import UserError

log = logging.getLogger(__name__)


# --- where this process stands ---

def launched_by_torchrun():
    """True when torchrun started this process as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_distributed() else 0


def get_world_size():
    return dist.get_world_size() if is_distributed() else 1


def select_device(gpu_id=0):
    """cuda:GPU_ID when CUDA is available, else the CPU (a single-process run)."""
    if torch.cuda.is_available():
        return torch.device("cuda", gpu_id)
    return torch.device("cpu")


def is_main_process():
    """Rank 0, or the only process; also before the process group exists (from RANK)."""
    if is_distributed():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


# --- starting and ending ---

def init_distributed(gpu_id=0):
    """Join torchrun's process group when launched by it; return this process's device.

    Under torchrun: cuda:LOCAL_RANK with NCCL (GPU_ID is ignored), or the CPU with gloo.
    Otherwise: select_device(GPU_ID), no process group. cuDNN autotuning is switched on for
    CUDA (every stage feeds fixed input sizes).
    """
    if not launched_by_torchrun():
        device = select_device(gpu_id)
    elif torch.cuda.is_available():
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"torchrun started process {local_rank} on this machine, which sees "
                            f"{torch.cuda.device_count()} GPU(s): --nproc_per_node must not exceed them")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        # binding the group to this GPU (torch >= 2.3) tells every collective, barriers included, its device
        bind = {"device_id": device} if _accepts(dist.init_process_group, "device_id") else {}
        dist.init_process_group("nccl", **bind)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if is_distributed():
        log.info("process %d of %d on %s", get_rank(), get_world_size(), device)
    return device


def _accepts(function, name):
    """Whether `function` takes the keyword `name` (in the installed torch)."""
    return name in inspect.signature(function).parameters


def cleanup():
    if is_distributed():
        dist.destroy_process_group()


def leave_together():
    """After an outcome every process shares (an agreed error, a stop signal): wait for all, so
    that none ends (and makes torchrun stop the others) before the main process has said why,
    then leave the group."""
    if is_distributed():
        barrier()
        cleanup()


@contextmanager
def process_group(gpu_id=0):
    """init_distributed(gpu_id) for the block (yields the device); leaves the group when the
    block ends normally. After an error the process just ends: `run_main` leaves together after
    an error all processes share (leave_together), and torchrun stops the others after any other."""
    device = init_distributed(gpu_id)
    yield device
    cleanup()


def barrier():
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])  # on this process's GPU
    else:
        dist.barrier()


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


def true_everywhere(flag):
    """True when `flag` is true on every process (e.g. every process sees a file)."""
    return -max_over_processes(-int(bool(flag))) == 1


def broadcast_from_main(obj):
    """The main process's `obj` (any picklable object), on every process."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


@contextmanager
def same_outcome(what="setup"):
    """Run the block on every process and agree on how it ended: when it raises on any process,
    every process raises (the failing one its own exception, the others a UserError naming the
    failing process and its message), instead of waiting for it in the next collective.
    One exchange of a short message per use; nothing when there is one process."""
    error = None
    try:
        yield
    except Exception as raised:  # any: shared with the other processes, then raised again
        if not is_distributed():
            raise
        error = raised
    if not is_distributed():
        return
    messages = [None] * get_world_size()
    dist.all_gather_object(messages, None if error is None else _one_line(error))
    failed = [(rank, message) for rank, message in enumerate(messages) if message is not None]
    if not failed:
        return
    if error is not None:
        raise shared_error(error)
    rank, message = failed[0]
    raise shared_error(UserError(f"process {rank} failed during {what}: {message}"))


def shared_error(error):
    """Mark `error` as raised by every process at the same point (`run_main` prints it once)."""
    error.all_processes = True
    return error


def _one_line(error):
    text = str(error).strip().splitlines()
    text = text[-1] if text else ""
    return text if isinstance(error, UserError) else f"{type(error).__name__}: {text}"


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
