"""ONNX export profiles shipped as package data (profiles.json)."""
