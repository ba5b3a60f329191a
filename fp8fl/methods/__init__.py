"""Federated methods as components behind seams (quantizer, codec, aggregator, server loop) and
the registry that names them; see docs/architecture.md."""
