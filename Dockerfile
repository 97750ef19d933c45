# The stream worker image: `pipeline` with the example models, no Java, no broker.
# docker-compose.yml brings Kafka; elsewhere point KAFKA_BOOTSTRAP_SERVERS at your cluster.
#
#   docker build -t kafka-onnx-pipeline .
#   docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=broker:9092 kafka-onnx-pipeline
#
# Settings come from PIPELINE_<SETTING> variables (see `pipeline run --help`); the image sets
# PIPELINE_MODELS, and a model store mounted over /app/models replaces the examples.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The package carries the example models (pipeline/dev/_models links to models/, for
# `pipeline models examples DIR`), so the build needs both. The source tree is only needed to
# build the wheel, so it is removed after.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline/ pipeline/
COPY models/ models/
RUN pip install --no-cache-dir . && rm -rf /src

RUN groupadd --system --gid 10001 pipeline \
    && useradd --system --uid 10001 --gid pipeline --create-home --home-dir /home/pipeline \
        --shell /usr/sbin/nologin pipeline

WORKDIR /app
COPY models/ /app/models/
ENV PIPELINE_MODELS=/app/models

# Numeric, so that runtimes enforcing runAsNonRoot can see it is not root.
USER 10001:10001

# The worker stops on SIGTERM: it finishes the batches in flight, flushes, commits, exits.
ENTRYPOINT ["pipeline"]
CMD ["run"]
