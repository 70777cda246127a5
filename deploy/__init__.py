"""deploy: container images, Kubernetes manifests (k8s/) and the simulation of their autoscaling rule (autoscale.py).

Run from a checkout; not part of the installed package (docs/deploy.md)."""
