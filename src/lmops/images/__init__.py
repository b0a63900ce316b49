"""The lmops container images: the engine that builds and runs them (docker or podman), the base image
(a registry's python image, or a Debian base made here), and the cached build (``make images``)."""
