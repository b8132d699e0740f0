"""tagger: tag photos with your own vocabulary, from a single self-describing ONNX model."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("tagger")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
