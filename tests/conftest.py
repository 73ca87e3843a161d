import torch

torch.set_num_threads(1)  # project rule: tests pin torch to one thread
