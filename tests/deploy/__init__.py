"""Tests of deploy/: Dockerfiles and the built image, compose, Prometheus (rules, a real
Prometheus scraping a live server), Grafana, Kubernetes manifests and KServe runtimes."""
