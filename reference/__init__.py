"""DDPM as executable math: the NumPy reference implementation (the specification).

Math only: schedules, diffusion, losses, samplers, layers, unet, optim, train (Trainer, train_step),
oracle, and errors (the input checks both sides share). It imports the standard library, NumPy,
SciPy and itself. The tooling that runs it (command line, training loop, data, checkpoints,
pictures, metrics) is the package ``lab``; ``python -m reference`` is lab's command line on this side.
"""
