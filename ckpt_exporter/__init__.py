"""ckpt_exporter: Prometheus exporter for OpenAI fine-tuning checkpoints."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ckpt-exporter")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
