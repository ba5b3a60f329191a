"""Flower server side of fp8fl: the ServerApp, its server loops, the ``QuantizedFedAvg`` strategy
(clients, rounds, journal) and the byte ledger."""
