# livecap on an NVIDIA GPU (the GPU path: Whisper fp16 on onnxruntime's CUDA provider).
# Mirrors the README set-up (editable install: the pages are served from client/). UNBUILT: no
# Docker engine was available where this was written. The CUDA path itself was verified on an
# H200 with the same onnxruntime-gpu release outside Docker (see README "Docker").
#
#   docker build -t livecap .
#   docker run --gpus all -p 8765:8765 -v livecap-data:/data livecap
#
# CUDA 13 and cuDNN 9 come as nvidia-* wheels (onnxruntime-gpu's cuda and cudnn extras, which
# the engine preloads); the host's driver comes in with --gpus. Without a GPU the same image
# runs on the CPU (int8 models): the engine checks that a CUDA session really runs first.
FROM ubuntu:24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 \
    LIVECAP_HOST=0.0.0.0 LIVECAP_DATA_DIR=/data LIVECAP_MODEL_CACHE=/models
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY livecap ./livecap
COPY models ./models
COPY client ./client
RUN python3 -m venv /venv \
 && /venv/bin/pip install --no-cache-dir -e '.[base]' \
 # CUDA build of onnxruntime in place of the CPU one (same API, same import name); 1.31.1 is
 # built for CUDA 13, the release verified on a GPU
 && /venv/bin/pip uninstall -y onnxruntime \
 && /venv/bin/pip install --no-cache-dir 'onnxruntime-gpu[cuda,cudnn]==1.31.1'
# Build every model variant into the image: fp16 for CUDA, int8 for CPU-only hosts.
RUN /venv/bin/livecap models build tiny.en base --precision fp16 \
 && /venv/bin/livecap models build tiny.en base --precision int8

EXPOSE 8765
VOLUME ["/data"]
# SIGTERM (docker stop) finishes open utterances before the process exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/venv/bin/livecap", "serve"]
