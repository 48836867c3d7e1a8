"""DDPM as executable math: the NumPy reference implementation (the specification).

The math modules (schedules, diffusion, losses, samplers, layers, unet, optim, train) import
NumPy only. Non-math helpers shared with torch_port (data, pictures, checkpoints, CLI, input
checks) live here too and are used by both sides.
"""
