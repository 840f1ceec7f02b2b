# Corral's API and worker. The worker talks to the host's libvirtd through its socket (see docker-compose.yml).
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends gcc pkg-config libvirt-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/corral
COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
RUN pip install --no-cache-dir -e .
ENV CORRAL_DATA_DIR=/var/lib/corral
EXPOSE 8080
ENTRYPOINT ["corral"]
CMD ["serve", "--host", "0.0.0.0"]
