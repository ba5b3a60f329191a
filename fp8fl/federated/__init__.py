"""The federated maths the methods build on, below ``fp8fl.methods``: the seams a method's
components implement, the wire layout of a state, the lossless stage, aggregation and buffered
server maths, per-layer formats and seeds. Nothing here knows a method or a run's composition."""
