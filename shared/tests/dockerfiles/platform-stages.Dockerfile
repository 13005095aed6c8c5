# syntax=docker/dockerfile:1
# Release binaries picked per target OS, the way docker/buildx's and moby's own Dockerfiles do it.
ARG GO_VERSION=1.22

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS TARGETARCH
RUN GOOS=$TARGETOS GOARCH=$TARGETARCH go build -o /out/tool ./cmd/tool

FROM scratch AS binaries-linux
COPY --from=build /out/tool /tool

FROM scratch AS binaries-darwin
COPY --from=build /out/tool /tool.app

FROM scratch AS binaries-windows
COPY --from=build /out/tool /tool.exe

FROM binaries-$TARGETOS AS binaries
ENV C trailing\\
LABEL after=continuation
