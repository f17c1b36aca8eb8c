"""geeps sandbox: the GeePSJob flow on one machine without a cluster.

An emulated Kubernetes API (not a cluster), the operator, and a test kubelet that runs
pods as hardened podman containers where podman is installed, as local processes
otherwise. `images` builds the two images with buildah; `engine` holds the flags podman
and buildah need.
"""
