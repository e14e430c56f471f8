# ESL / AdvEnt on NVIDIA GPUs (docs/speed.md, "Docker"):
#   docker build -t esl-advent .
#   docker run --gpus all --shm-size=16g -v "$PWD/data:/workspace/ESL/data" \
#       -v "$PWD/pretrained_models:/workspace/ESL/pretrained_models" \
#       -v "$PWD/experiments:/workspace/ESL/experiments" esl-advent python train.py --cfg configs/advent.yml
# The base image's torch (2.9.0, CUDA 12.8) lies within setup.py's bounds and is kept: pip is
# constrained to it, so that installing the package never replaces it with another build.
FROM pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /workspace/ESL
COPY setup.py README.md ./
COPY advent ./advent
COPY benchmarks ./benchmarks
COPY tests ./tests
# [dev]: pytest, for benchmarks/gpu_check.py, which runs the test suite on the GPU first
RUN python -c "import torch; print('torch==' + torch.__version__)" > /tmp/constraints.txt \
    && pip install --no-cache-dir --constraint /tmp/constraints.txt -e ".[dev]" \
    && rm /tmp/constraints.txt \
    && ln -s experiments/labels labels \
    && ln -s experiments/labels_synthia labels_synthia

# Datasets, weights and runs live outside the image. The shipped ESL configs write their
# pseudo-labels to ../../labels and ../../labels_synthia, which link into experiments/: esl.py
# swaps its finished folder in by a rename, which must stay on one file system.
VOLUME ["/workspace/ESL/data", "/workspace/ESL/pretrained_models", "/workspace/ESL/experiments"]

WORKDIR /workspace/ESL/advent/scripts
CMD ["python", "train.py", "--help"]
