ARG BASE_IMAGE=debian:bookworm-slim
ARG APP_VERSION

FROM ${BASE_IMAGE}
ARG APP_VERSION
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y curl
RUN curl -fsSL "https://example.com/releases/${APP_VERSION}/app.tar.gz" | tar -xz -C /usr/local/bin
ONBUILD COPY . /app/src
ONBUILD RUN make -C /app/src
CMD ["app", "--serve"]
