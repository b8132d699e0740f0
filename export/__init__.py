"""Checkpoint -> one self-describing ONNX model (DESIGN.md §2, §6): parity-checked fp32, int8, fp16."""
