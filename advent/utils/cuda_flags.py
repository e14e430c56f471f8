"""How a CUDA run computes float32 convolutions and picks their algorithms: the config's TF32 and
CUDNN_BENCHMARK, set where a script selects its device, and read back for its run record.

Both are process-wide torch settings that only CUDA kernels read; a CPU run is unaffected.
torch >= 2.9 sets TF32 per backend and operation (`fp32_precision`) and warns about its older
`allow_tf32` flags (reading those after the new setting was used can even raise), so the older
flags are used only by a torch that lacks the new setting.
"""
import torch


def _new_precision_api():
    return hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision")


def set_cuda_flags(tf32, cudnn_benchmark):
    """TF32 (`tf32`) or IEEE float32 for cuDNN convolutions and CUDA matrix products; the cuDNN
    autotuner on or off (`cudnn_benchmark`)."""
    if _new_precision_api():
        precision = "tf32" if tf32 else "ieee"
        torch.backends.cudnn.conv.fp32_precision = precision
        torch.backends.cuda.matmul.fp32_precision = precision
    else:
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = cudnn_benchmark


def bf16_supported(device):
    """Whether the GPU `device` computes bfloat16 natively (Ampere, compute capability 8.0, or
    newer); torch.cuda.is_bf16_supported() also says yes where it is only emulated, slowly."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def _resolved(*settings):
    """The first precision of `settings` (most specific first) that is not 'none' (inherit)."""
    return next((s.fp32_precision for s in settings if s.fp32_precision != "none"), "ieee")


def cuda_flags():
    """The settings in force, for a run record: {'tf32_convolutions', 'tf32_matmul', 'cudnn_benchmark'}."""
    backends = torch.backends
    if _new_precision_api():
        conv = _resolved(backends.cudnn.conv, backends.cudnn, backends) == "tf32"
        matmul = _resolved(backends.cuda.matmul, backends) == "tf32"
    else:
        conv, matmul = backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32
    return {"tf32_convolutions": bool(conv), "tf32_matmul": bool(matmul),
            "cudnn_benchmark": bool(backends.cudnn.benchmark)}
