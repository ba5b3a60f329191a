"""Flower clients of fp8fl: ``QuantizedClient`` (a NumPyClient) and the ClientApp."""
