# pgolf's image: the harness, PyTorch and FlashAttention-3 pinned, for one seeded run per container phase.
#
# Two variants from one file (docs/container.md has the pinned versions and the reasons):
#   cuda (default)  the records' H100 stack: Ubuntu 24.04, Python 3.12, torch 2.9.1 (cu128), FA3 for sm_90a
#   cpu             the demo/CI variant: any Debian-like base with python3 + venv, torch's CPU build
# Build with tools/build-image (it fills in the arguments below and caches by content), or by hand:
#   docker build --build-arg FA3_WHEEL=flash_attn_3-....whl --build-arg FA3_SHA256=... -t pgolf:cuda .
#
# Works with the classic builder and BuildKit alike (Debian's docker.io 20.10 has no buildx), so no
# RUN --mount: files the build needs from this machine come through docker/local/ (git-ignored) and
# stay in the builder stage.

# Base images, pinned by tag and digest. The builder is the CUDA *devel* image (nvcc, headers: what a
# source build of a CUDA extension needs); the final stage only needs the CUDA base, because the torch
# wheels bring their own CUDA user-space libraries (cuBLAS, cuDNN, NCCL ...) and only the host driver
# comes from outside. Both digests were copied from public pins and could not be pulled from here.
ARG BUILD_BASE=nvidia/cuda:12.8.1-devel-ubuntu24.04@sha256:4b9ed5fa8361736996499f64ecebf25d4ec37ff56e4d11323ccde10aa36e0c43
ARG RUNTIME_BASE=nvidia/cuda:12.8.1-base-ubuntu24.04@sha256:e711c99333fdfe8ae1e677b4972be6c5021f0128a1d31f775c7e58d88921b6a9

FROM ${BUILD_BASE} AS builder
# Each ARG is declared just before the first step that uses it: a changed value invalidates the
# cache of every later RUN, so the FA3 arguments come after the (slow) locked install.
# apt packages the builder needs for a Python venv (empty when the base already has them)
ARG BUILD_PACKAGES="python3 python3-venv"
SHELL ["/bin/sh", "-eu", "-c"]
RUN if [ -n "$BUILD_PACKAGES" ]; then \
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            $BUILD_PACKAGES && rm -rf /var/lib/apt/lists/*; \
    fi
# cuda | cpu: which lock file docker/requirements-<VARIANT>.lock to install
ARG VARIANT=cuda
# an extra index for wheels that are not on PyPI (the CPU torch: https://download.pytorch.org/whl/cpu);
# hashes in the lock decide what is accepted, wherever a file comes from
ARG EXTRA_INDEX_URL=
# docker/local/: wheels this machine provides (the CPU torch) and, where the package index is
# reached through a proxy with its own CA, that CA bundle as ca-bundle.crt
COPY docker/local/ /tmp/local/
COPY docker/requirements-${VARIANT}.lock /tmp/requirements.lock
RUN if [ -f /tmp/local/ca-bundle.crt ]; then export PIP_CERT=/tmp/local/ca-bundle.crt; fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --require-hashes --only-binary :all: \
        --no-deps --find-links /tmp/local ${EXTRA_INDEX_URL:+--extra-index-url "$EXTRA_INDEX_URL"} \
        -r /tmp/requirements.lock; \
    echo "lock_sha256=$(sha256sum /tmp/requirements.lock | cut -c1-64)" > /opt/venv/pgolf-image.txt
# FlashAttention-3: "wheel" installs docker/fa3/$FA3_WHEEL after checking its sha256; "none" skips it.
# --no-deps because the wheel declares torch, which must stay the locked one.
ARG FA3=wheel
ARG FA3_WHEEL=
ARG FA3_SHA256=
COPY docker/fa3/ /tmp/fa3/
RUN case "$FA3" in \
      none) ;; \
      wheel) \
        [ -n "$FA3_WHEEL" ] && [ -n "$FA3_SHA256" ] \
            || { echo "FA3=wheel needs FA3_WHEEL (a file in docker/fa3/) and FA3_SHA256, or FA3=none" >&2; exit 1; }; \
        echo "$FA3_SHA256  /tmp/fa3/$FA3_WHEEL" | sha256sum -c -; \
        /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-index --no-deps \
            "/tmp/fa3/$FA3_WHEEL" ;; \
      *) echo "FA3 must be wheel or none, not '$FA3'" >&2; exit 1 ;; \
    esac; \
    /opt/venv/bin/pip check; \
    { echo "variant=$VARIANT"; echo "fa3=$FA3 $FA3_WHEEL $FA3_SHA256"; } >> /opt/venv/pgolf-image.txt

FROM ${RUNTIME_BASE}
# apt packages the final image needs: the interpreter the venv points at, and a C compiler with
# Python's headers, which Triton (torch.compile) needs at run time to build its launchers
ARG RUNTIME_PACKAGES="python3 python3-dev gcc g++ libc6-dev"
SHELL ["/bin/sh", "-eu", "-c"]
RUN if [ -n "$RUNTIME_PACKAGES" ]; then \
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            $RUNTIME_PACKAGES && rm -rf /var/lib/apt/lists/*; \
    fi; \
    if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu 2>/dev/null; fi; \
    useradd --uid 1000 --user-group --create-home --shell /bin/sh pgolf; \
    mkdir -p /data /runs /artifact /submission; \
    chown pgolf:pgolf /runs
COPY --from=builder /opt/venv /opt/venv
COPY harness /opt/pgolf/harness
COPY schemas /opt/pgolf/schemas
COPY pyproject.toml /opt/pgolf/pyproject.toml
ARG VARIANT=cuda
ARG FA3=wheel
ARG BUILD_BASE
ARG RUNTIME_BASE
# pgolf runs from its source tree (it reads schemas/ beside harness/), put on the venv's path by a .pth
RUN site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    echo /opt/pgolf > "$site/pgolf.pth"; \
    printf '#!/opt/venv/bin/python\nimport sys\nfrom harness.cli import main\nsys.exit(main())\n' > /opt/venv/bin/pgolf; \
    chmod 755 /opt/venv/bin/pgolf; \
    echo "build_base=$BUILD_BASE" >> /opt/venv/pgolf-image.txt; \
    echo "runtime_base=$RUNTIME_BASE" >> /opt/venv/pgolf-image.txt
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1
# the build-time smoke test: pgolf starts, and FA3 imports from the flash_attn_3 distribution
RUN pgolf --version; if [ "$FA3" != none ]; then pgolf doctor --only fa3; fi
LABEL org.opencontainers.image.title="pgolf" \
      org.opencontainers.image.description="Parameter Golf run-and-verify harness (${VARIANT} variant)" \
      org.opencontainers.image.base.name="${RUNTIME_BASE}" \
      org.pgolf.variant="${VARIANT}" \
      org.pgolf.fa3="${FA3}"
USER pgolf
WORKDIR /runs
ENTRYPOINT ["pgolf"]
CMD ["doctor"]
