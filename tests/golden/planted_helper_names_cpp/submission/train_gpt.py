import torch
from kernel_helper import build
if __name__ == '__main__':
    build()
