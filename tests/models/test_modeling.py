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


def test_bitsandbytes_kernel_fetch_warning_is_dropped_and_other_warnings_are_not(caplog):
    """bitsandbytes, imported on an AVX512-BF16 CPU without the hub, logs that it could not fetch an
    optional kernel and to "set trust_remote_code=True" (unrelated to our key of that name); the
    model loaders drop that one record, on the logger bitsandbytes gets when it is imported later."""
    import logging

    from competition.models.modeling import BNB_CPU_KERNEL_LOGGER, quiet_bitsandbytes_kernel_fetch

    quiet_bitsandbytes_kernel_fetch()
    quiet_bitsandbytes_kernel_fetch()  # once per logger, however many models load
    logger = logging.getLogger(BNB_CPU_KERNEL_LOGGER)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=BNB_CPU_KERNEL_LOGGER):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you "
                       "already `pip install kernels` and the kernels >= 0.11.1",
                       "Kernel repository 'kernels-community/quantization-bitsandbytes' could not verify publisher "
                       "trust status. Set trust_remote_code=True or add the repository ID to the allowlist")
        logger.warning("a warning about something else")
    assert [record.getMessage() for record in caplog.records] == ["a warning about something else"]
