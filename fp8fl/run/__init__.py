"""What composes a run, above ``fp8fl.methods``: the validated run config, local training and
evaluation, the clients' data and formats, the message protocol, results and checkpoints."""
