"""CUDA modes (utils/runs.py): cuDNN autotuning only inside its block; --deterministic switches PyTorch's
deterministic algorithms on. Both are plain flags, so they are checked here on CPU."""
import os

import torch

import train
from utils.runs import configure_determinism, cudnn_autotune


def test_cudnn_autotune_is_scoped():
    before = torch.backends.cudnn.benchmark
    with cudnn_autotune(True):
        assert torch.backends.cudnn.benchmark is True
        with cudnn_autotune(False):  # e.g. rect shapes inside a fixed-shape phase
            assert torch.backends.cudnn.benchmark is False
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark == before


def test_deterministic_flag(monkeypatch):
    assert train.parse_opt(['--deterministic']).deterministic and not train.parse_opt([]).deterministic
    configure_determinism(False)
    assert not torch.are_deterministic_algorithms_enabled()
    monkeypatch.delenv('CUBLAS_WORKSPACE_CONFIG', raising=False)
    cudnn_before = torch.backends.cudnn.deterministic
    try:
        configure_determinism(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = cudnn_before
