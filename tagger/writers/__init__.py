"""Output writers: sidecar JSON, XMP sidecars, keywords embedded in the photo."""
