"""The PyTorch port: the reference's modules and names, the math written again in torch."""
