"""Request fields to simulator terms: GPU types from the product label."""

import pytest

from eat_policy.service import requests
from eat_policy.sim import catalog


@pytest.mark.parametrize("gpu", catalog.GPU_TYPES.values(), ids=lambda g: g.name)
def test_each_catalog_product_label_names_its_type(gpu: catalog.GpuType) -> None:
    assert requests.gpu_type(gpu.product) == gpu


@pytest.mark.parametrize(("product", "name", "link", "mem_gb"), [
    ("NVIDIA-L40", "unknown", "pcie", 16),
    ("NVIDIA-GeForce-RTX-4090", "unknown", "pcie", 16),
    ("NVIDIA-A100-PCIE-40GB", "A100", "pcie", 40),
    ("NVIDIA-A100-SXM4-40GB", "A100", "nvlink", 40),
    ("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", "A100", "nvlink", 5),
    ("NVIDIA-H100-PCIe", "H100", "pcie", 80),
    ("NVIDIA A100 80GB PCIe", "A100", "pcie", 80),
    ("NVIDIA-L4", "L4", "pcie", 24),
])
def test_a_label_names_a_type_by_whole_words_with_its_link_and_memory(product: str, name: str, link: str,
                                                                      mem_gb: float) -> None:
    gpu = requests.gpu_type(product)
    assert (gpu.name, gpu.link, gpu.mem_gb) == (name, link, mem_gb)
