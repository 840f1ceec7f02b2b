# Corral's API and worker, one image. The worker talks to the host's libvirtd through its socket (see
# docker-compose.yml). Built from the wheel, so the image holds what `pip install corral` installs.
FROM python:3.11-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc pkg-config libvirt-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# libvirt-python has no binary wheel: it is compiled here, against the same libvirt the runtime gets.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends libvirt0 qemu-utils \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV CORRAL_DATA_DIR=/var/lib/corral
EXPOSE 8080
ENTRYPOINT ["corral"]
CMD ["serve", "--host", "0.0.0.0"]
