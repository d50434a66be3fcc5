# syntax=docker/dockerfile:1
# StreamRec worker image. Multi-stage: dependencies are built in a throwaway stage, the runtime stage
# only copies the virtualenv and runs as an unprivileged user.
#
#   CPU (default):  docker build -t streamrec:latest .
#   CUDA variant:   docker build --build-arg VARIANT=cuda -t streamrec:cuda .
#     The CUDA variant adds onnxruntime-gpu's `cuda` and `cudnn` extras and cuBLAS (the NVIDIA CUDA 13,
#     cuBLAS 13 and cuDNN 9 runtime libraries as pip wheels: onnxruntime-gpu 1.31's CUDA provider links
#     libcublas.so.13 / libcublasLt.so.13, which the extras do not pull), so the base image stays
#     python:3.11-slim; the host needs only an NVIDIA driver new enough for CUDA 13 (580+; the H200 run in
#     docs/BENCHMARKS.md had 580.159.04) and the NVIDIA Container Toolkit (compose: `gpus: all`; Kubernetes: the
#     deploy/k8s/overlays/gpu overlay). The encoder logs the execution provider it really got.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/streamrec
ENV PATH=/opt/streamrec/bin:$PATH
WORKDIR /src
# torch from the CPU wheel index: the encoder is trained offline and inference runs in ONNX Runtime,
# so the several-GB CUDA build of torch is never needed in the image.
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md* ./
COPY app ./app
COPY agents ./agents
COPY models ./models
COPY schemas ./schemas
RUN pip install . \
 && if [ "$VARIANT" = "cuda" ]; then pip install "onnxruntime-gpu[cuda,cudnn]" "nvidia-cublas~=13.0"; fi

FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="streamrec" \
      org.opencontainers.image.description="Real-time scene-aware recommendations on Kafka + Faust" \
      io.streamrec.variant="${VARIANT}"
RUN groupadd --system --gid 10001 streamrec \
 && useradd --system --uid 10001 --gid streamrec --home-dir /var/lib/streamrec --shell /usr/sbin/nologin streamrec \
 && mkdir -p /var/lib/streamrec \
 && chown streamrec:streamrec /var/lib/streamrec
COPY --from=build /opt/streamrec /opt/streamrec
ENV PATH=/opt/streamrec/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STREAMREC_DATA_DIR=/var/lib/streamrec \
    STREAMREC_MODEL_DIR=/var/lib/streamrec/models \
    STREAMREC_SQLITE_PATH=/var/lib/streamrec/streamrec.db \
    STREAMREC_WEB_HOST=0.0.0.0 \
    STREAMREC_WEB_PORT=6066
WORKDIR /var/lib/streamrec
USER 10001:10001
VOLUME ["/var/lib/streamrec"]
EXPOSE 6066
HEALTHCHECK --interval=15s --timeout=3s --start-period=90s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:6066/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["streamrec"]
CMD ["worker"]
