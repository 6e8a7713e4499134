"""Model loading helpers: the 4-bit and LoRA configs, without a GPU."""
from __future__ import annotations

import pytest

from competition.candidates.qlora import Params as QLoRAParams


def test_bnb_and_lora_builders_without_gpu():
    from competition.models.modeling import bnb_config, lora_config

    params = QLoRAParams(lora_r=8, lora_alpha=16)
    quant = bnb_config(params, device="cpu")
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant
    import torch

    assert bnb_config(params, device="cuda").bnb_4bit_compute_dtype == torch.bfloat16
    assert bnb_config(QLoRAParams(quantization="8bit")).load_in_8bit
    assert bnb_config(QLoRAParams(quantization="none")) is None
    with pytest.raises(ValueError, match="quantization"):
        QLoRAParams(quantization="3bit")
    lora = lora_config(params)
    assert (lora.r, lora.lora_alpha, lora.target_modules) == (8, 16, "all-linear")
