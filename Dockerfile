# One image for the web app, the Celery worker, beat, Flower and the migrate job (compose.yaml).
#
# Reproducible: the base image is pinned, and every Python package comes from the lock files
# (hashes checked, wheels only); `scripts/lock` regenerates them from pyproject.toml.
# Layers: the dependencies are installed from requirements.lock alone, so a change to the code
# rebuilds only the small last layers, never numpy, scipy, scikit-learn or onnxruntime.
ARG PYTHON_IMAGE=python:3.11.16-slim-trixie

FROM ${PYTHON_IMAGE} AS python
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# The dependencies, in a venv of their own.
FROM python AS deps
COPY requirements.lock /tmp/requirements.lock
RUN python -m venv /opt/digest \
    && /opt/digest/bin/pip install --require-hashes --only-binary :all: -r /tmp/requirements.lock

# Our wheel, built by the locked build backend (no unpinned download while building).
FROM python AS wheel
COPY requirements-build.lock /tmp/requirements-build.lock
RUN pip install --require-hashes --only-binary :all: -r /tmp/requirements-build.lock
WORKDIR /src
COPY pyproject.toml README.md ./
COPY digest ./digest
COPY workers ./workers
COPY templates ./templates
COPY seeds ./seeds
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /dist .

FROM python
# A user of its own, no login, no root; its one writable folder is /var/lib/digest (beat's
# schedule, on a volume). The code and the venv belong to root and cannot be changed by it.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/digest --create-home \
        --shell /usr/sbin/nologin digest
COPY --from=deps /opt/digest /opt/digest
COPY --from=wheel /dist /tmp/dist
# --no-deps --no-index: nothing but our wheel; `pip check` then fails the build when the locked
# dependencies do not satisfy what the wheel requires (a lock behind pyproject.toml).
RUN /opt/digest/bin/pip install --no-deps --no-index /tmp/dist/*.whl \
    && /opt/digest/bin/pip check \
    && rm -rf /tmp/dist
ENV PATH=/opt/digest/bin:$PATH \
    DIGEST_ENV=production
USER digest
WORKDIR /var/lib/digest
EXPOSE 8000 5555
CMD ["digest", "serve", "--host", "0.0.0.0", "--port", "8000"]
