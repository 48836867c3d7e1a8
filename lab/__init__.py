"""The tooling both sides share, written once: the command line (cli, commands/), the training loop and
checkpoints (runner, checkpoint, config), data (data/), pictures (plots), metrics, and sampling a trained
model (sampling). It imports reference/ and, for the torch backend, torch_port/; never the other way."""
