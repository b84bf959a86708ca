# steerboard's app server: the workspace on a volume, a non-root user, Streamlit's health check.
#
#   docker build -t steerboard .                                   # CPU wheels (default)
#   docker build --build-arg TORCH_VARIANT=cuda -t steerboard:cuda . # PyPI's CUDA wheels
#   docker run -p 8501:8501 -v steerboard-workspace:/workspace steerboard
#
# Several replicas: see compose.yaml and the README's Deployment section (one workspace each).
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

# cpu: torch and torchvision from PyTorch's CPU index (no CUDA libraries, a few GB smaller);
# cuda: the same pins from PyPI, whose Linux wheels are CUDA builds (they also run on a CPU).
ARG TORCH_VARIANT=cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STEERBOARD_WORKSPACE=/workspace \
    STEERBOARD_DATA_CACHE=/workspace/cache \
    STREAMLIT_SERVER_PORT=8501 \
    STREAMLIT_SERVER_ADDRESS=0.0.0.0 \
    STREAMLIT_SERVER_HEADLESS=true \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false

WORKDIR /app
COPY requirements.txt .
RUN set -eu; \
    torch_pins="$(grep -E '^(torch|torchvision)==' requirements.txt | tr '\n' ' ')"; \
    case "$TORCH_VARIANT" in \
      cpu)  pip install --index-url "$TORCH_CPU_INDEX" $torch_pins ;; \
      cuda) pip install $torch_pins ;; \
      *)    echo "TORCH_VARIANT must be cpu or cuda, not $TORCH_VARIANT" >&2; exit 2 ;; \
    esac; \
    pip install -r requirements.txt; \
    python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin steerboard \
    && mkdir -p /workspace \
    && chown steerboard:steerboard /workspace
COPY .streamlit/ .streamlit/
COPY core/ core/
COPY app/ app/
COPY pages/ pages/

USER steerboard
VOLUME ["/workspace"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=10s --start-period=90s --retries=3 CMD ["python", "-m", "app.health"]
CMD ["python", "-m", "app.serve"]
