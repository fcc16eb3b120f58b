"""Data: IDX data sets (MNIST, Fashion-MNIST) and image folders, as float32 NCHW arrays in [0, 1]. No torch."""
