"""Tests of tangtoc.hardware: the table of published peaks and how device names map onto it."""

from __future__ import annotations

import pytest

from tangtoc import hardware
from tangtoc.hardware import BY_SHORT_NAME, HardwareSpec, lookup

# Every spec the module defines, found by type rather than by a list that could drift from the module.
ALL_SPECS = sorted(
    {id(v): v for v in vars(hardware).values() if isinstance(v, HardwareSpec)}.values(), key=lambda s: s.name
)


@pytest.mark.parametrize(
    ("device_name", "expected"),
    [
        # Strings as torch.cuda.get_device_name() returns them.
        ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM"),
        ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe"),
        ("NVIDIA H100 NVL", "NVIDIA H100 NVL"),
        ("NVIDIA H200", "NVIDIA H200 SXM"),
        ("NVIDIA H200 NVL", "NVIDIA H200 NVL"),
        ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 SXM 80GB"),
        ("NVIDIA A100-SXM4-40GB", "NVIDIA A100 SXM 40GB"),
        ("NVIDIA A100-PCIE-40GB", "NVIDIA A100 PCIe 40GB"),
        ("NVIDIA A100 80GB PCIe", "NVIDIA A100 PCIe 80GB"),
        ("NVIDIA L4", "NVIDIA L4"),
        ("Tesla T4", "NVIDIA T4"),
        ("NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 4090"),
        ("NVIDIA A10G", "NVIDIA A10G"),
        ("NVIDIA GH200 480GB", "NVIDIA GH200 96GB HBM3"),  # 480 GB: the Grace CPU's LPDDR5X
        ("NVIDIA GH200 144G HBM3e", "NVIDIA GH200 144GB HBM3e"),
        ("NVIDIA B200", "NVIDIA B200"),
        ("NVIDIA L40S", "NVIDIA L40S"),
    ],
)
def test_lookup_maps_device_names(device_name: str, expected: str) -> None:
    spec = lookup(device_name)
    assert spec is not None
    assert spec.name == expected
    assert spec in ALL_SPECS


@pytest.mark.parametrize(
    "device_name",
    [
        "NVIDIA L40",  # the L40S's slower sibling: "L40" is not "L40S", nor "L4"
        "NVIDIA A10",  # the A10 is not the A10G
        "NVIDIA GeForce RTX 3090",
        "NVIDIA GB200",  # the Grace Blackwell superchip's B200 runs at up to 1,200 W: not the HGX B200
        "NVIDIA H800",
        "NVIDIA H20",  # a cut-down Hopper for one market: no datasheet tangtoc could cite, so no peak
        "NVIDIA RTX 6000 Ada Generation",  # its datasheet gives FP32 and a sparse FP8 figure only
        "Tesla T40",
        "AMD Instinct MI300X",
        "",
    ],
)
def test_lookup_unknown_is_none(device_name: str) -> None:
    assert lookup(device_name) is None


@pytest.mark.parametrize("device_name", ["NVIDIA GeForce RTX 4090 Laptop GPU", "NVIDIA GeForce RTX 4090 D"])
def test_lookup_rtx_4090_variants_are_not_the_desktop_part(device_name: str) -> None:
    assert lookup(device_name) is None


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s.name)
def test_every_spec_is_sourced_and_sane(spec: HardwareSpec) -> None:
    assert spec.source.strip()
    assert spec.memory_bandwidth > 0
    assert spec.memory_bytes > 0
    assert spec.peak_flops, "a spec without any peak"
    assert all(v > 0 for v in spec.peak_flops.values())
    allowed = {"float64", "float32", "tf32", "bfloat16", "float16", "float8"}
    assert set(spec.peak_flops) <= allowed
    if "bfloat16" in spec.peak_flops and "float32" in spec.peak_flops:
        assert spec.peak_flops["bfloat16"] >= spec.peak_flops["float32"]


def test_the_table_is_not_empty() -> None:
    assert len(ALL_SPECS) >= 12
    assert len({s.name for s in ALL_SPECS}) == len(ALL_SPECS), "two specs share a name"


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s.name)
def test_a_spec_name_looks_up_its_own_spec(spec: HardwareSpec) -> None:
    # The table's order matters (first match wins); each display name must land on its own entry.
    assert lookup(spec.name) is spec


def test_t4_has_no_bfloat16_or_tf32() -> None:
    t4 = lookup("Tesla T4")
    assert t4 is not None
    assert "bfloat16" not in t4.peak_flops
    assert "tf32" not in t4.peak_flops
    assert "float16" in t4.peak_flops


def test_specs_are_read_only() -> None:
    spec = BY_SHORT_NAME["h100"]
    with pytest.raises(TypeError):
        spec.peak_flops["bfloat16"] = 1.0  # type: ignore[index]
    with pytest.raises(TypeError):
        BY_SHORT_NAME["mine"] = spec  # type: ignore[index]


@pytest.mark.parametrize(
    ("short", "device_name"),
    [
        ("a100", "NVIDIA A100-SXM4-80GB"),
        ("h100", "NVIDIA H100 80GB HBM3"),
        ("h100-pcie", "NVIDIA H100 PCIe"),
        ("h200", "NVIDIA H200"),
        ("l4", "NVIDIA L4"),
        ("t4", "Tesla T4"),
        ("rtx4090", "NVIDIA GeForce RTX 4090"),
        ("a10g", "NVIDIA A10G"),
        ("gh200", "NVIDIA GH200 480GB"),
        ("b200", "NVIDIA B200"),
        ("l40s", "NVIDIA L40S"),
    ],
)
def test_short_names(short: str, device_name: str) -> None:
    assert BY_SHORT_NAME[short] is lookup(device_name)


def test_h100_peak_is_not_the_a100_peak() -> None:
    # nanoGPT's "104% MFU on an H100" came from using the A100's 312 TFLOP/s for it.
    h100, a100 = BY_SHORT_NAME["h100"], BY_SHORT_NAME["a100"]
    assert a100.peak_flops["bfloat16"] == pytest.approx(312e12)
    assert h100.peak_flops["bfloat16"] > 3 * a100.peak_flops["bfloat16"]


@pytest.mark.parametrize(
    ("device_name", "bf16_tflops", "tf32_tflops", "bandwidth_tb_s"),
    [
        # Dense rates, as each datasheet prints them or halved from its sparse figures (the module's rules).
        ("NVIDIA GH200 480GB", 990, 494, 4.0),
        ("NVIDIA GH200 144G HBM3e", 990, 494, 4.9),
        ("NVIDIA B200", 2250, 1100, 7.7),
        ("NVIDIA L40S", 362.05, 183, 0.864),
    ],
)
def test_new_parts_carry_their_datasheet_figures(
    device_name: str, bf16_tflops: float, tf32_tflops: float, bandwidth_tb_s: float
) -> None:
    spec = lookup(device_name)
    assert spec is not None
    assert spec.peak_flops["bfloat16"] == pytest.approx(bf16_tflops * 1e12)
    assert spec.peak_flops["tf32"] == pytest.approx(tf32_tflops * 1e12)
    assert spec.memory_bandwidth == pytest.approx(bandwidth_tb_s * 1e12)
    assert "datasheet" in spec.source or "specifications" in spec.source
