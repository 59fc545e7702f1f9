# The same spoke image `make image` writes without a daemon: the static
# binary at /spoke, nothing else, run as a non-root user.
#   docker build --build-arg VERSION=$(git describe --always --dirty) -t spoke:dev .
FROM golang:1.26 AS build
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /spoke ./cmd/spoke

FROM scratch
COPY --from=build /spoke /spoke
USER 65532:65532
ENTRYPOINT ["/spoke"]
