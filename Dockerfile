# syntax=docker/dockerfile:1.7
# One image per component:
#   docker build --target policy|operator|extender|inference|node-agent -t eat-<target> .
# Each component installs only its own pinned lock (requirements/<component>.lock, hashes
# required) into /opt/eat in a build stage; the runtime stage copies that environment onto a
# slim base and runs as a non-root user. No model weights are baked in: inference pods read
# models from the node-local cache, which the node agent fills from the model store.

ARG PYTHON=3.11

FROM python:${PYTHON}-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/eat/bin:$PATH
RUN groupadd --gid 10001 eat && useradd --uid 10001 --gid eat --no-create-home --shell /usr/sbin/nologin eat

FROM base AS source
WORKDIR /src
COPY requirements/ requirements/
RUN python -m venv /opt/eat && pip install --no-cache-dir --require-hashes --no-deps -r requirements/build.lock
COPY pyproject.toml README.md ./
COPY policy/ policy/
COPY operator/ operator/
COPY scheduler_extender/ scheduler_extender/
COPY inference_image/ inference_image/

FROM source AS build-policy
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/policy.lock \
 && pip install --no-cache-dir --no-deps --no-build-isolation .

FROM source AS build-operator
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/operator.lock \
 && pip install --no-cache-dir --no-deps --no-build-isolation .

FROM source AS build-extender
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/extender.lock \
 && pip install --no-cache-dir --no-deps --no-build-isolation .

FROM source AS build-inference
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/inference.lock \
 && pip install --no-cache-dir --no-deps --no-build-isolation .

# The planning service; the shipped checkpoint comes with the package
# (eat_policy/checkpoints). Mount another and set EAT_POLICY_CHECKPOINT to replace it.
FROM base AS policy
ARG PYTHON
COPY --from=build-policy /opt/eat /opt/eat
ENV EAT_POLICY_CHECKPOINT=/opt/eat/lib/python${PYTHON}/site-packages/eat_policy/checkpoints/eat-edge-pods.pt \
    NUMBA_CACHE_DIR=/tmp/numba
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["eat-policy", "serve", "--port", "8000"]

FROM base AS operator
COPY --from=build-operator /opt/eat /opt/eat
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["eat-operator"]

FROM base AS extender
COPY --from=build-extender /opt/eat /opt/eat
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["eat-extender"]

FROM base AS inference
COPY --from=build-inference /opt/eat /opt/eat
USER 10001:10001
ENTRYPOINT ["eat-infer", "run"]

FROM base AS node-agent
COPY --from=build-inference /opt/eat /opt/eat
USER 10001:10001
EXPOSE 9101
ENTRYPOINT ["eat-node-agent"]
