"""CUDA training path: the same steps on the GPU as on the CPU. Skips without a CUDA device
(CI has none); run on a GPU machine with `pytest tests/test_gpu.py -m gpu`."""

from __future__ import annotations

import copy

import pytest
import torch

from recstack.config import resolve
from recstack.data.store import Dataset
from recstack.data.synth import generate
from recstack.models.zoo import build_model
from recstack.scoring.evaluate import evaluate_rows
from recstack.train.trainer import Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_training_matches_cpu(tmp_path):
    generate("tiny", 4096, tmp_path / "data", seed=0, show_progress=False)
    dataset = Dataset(tmp_path / "data")
    cfg = resolve(None, {"model.preset": "tiny", "train.batch_size": "256", "train.optimizer": "sgd", "train.lr": "0.05"})
    torch.manual_seed(0)
    cpu_model = build_model(cfg, dataset.schema)
    gpu_model = copy.deepcopy(cpu_model)
    cfg_gpu = copy.deepcopy(cfg)
    cfg_gpu.train.device = "cuda"
    cpu, gpu = Trainer(cfg, dataset, cpu_model), Trainer(cfg_gpu, dataset, gpu_model)
    assert next(gpu.model.parameters()).is_cuda and gpu.model.embeddings.weight.is_cuda
    for batch in list(cpu.loader.epoch(0))[:8]:
        cpu.train_step(batch)
        gpu.train_step(batch)
    for (name, a), b in zip(cpu.model.state_dict().items(), gpu.model.state_dict().values()):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-4, atol=1e-5, msg=name)
    m_cpu = evaluate_rows(cpu.model, dataset, dataset.split("test"), 1024, cpu.device)
    m_gpu = evaluate_rows(gpu.model, dataset, dataset.split("test"), 1024, gpu.device)
    assert m_cpu["auc"] == pytest.approx(m_gpu["auc"], abs=1e-4)
