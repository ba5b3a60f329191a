"""Flower clients of fp8fl: ``FP8Client`` (a NumPyClient) and the ClientApp."""
