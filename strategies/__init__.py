"""Flower server side of fp8fl: the ``FP8FedAvg`` strategy, its byte ledger, and the ServerApp."""
