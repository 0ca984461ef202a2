"""A declared chip that contradicts what the board reports is called; anything else is not."""

from __future__ import annotations

import pytest

from controller.boards.chip_check import contradiction

EPYC = {"arch": "x86_64", "cpu_model": "AMD EPYC 7B13"}
XEON = {"arch": "x86_64", "cpu_model": "Intel(R) Xeon(R) CPU @ 2.20GHz"}
JETSON = {"arch": "aarch64", "cpu_model": "NVIDIA Jetson Orin Nano Developer Kit"}
RK3399 = {"arch": "aarch64", "cpu_model": "Rockchip RK3399"}
PHONE = {"arch": "armv8l", "cpu_model": "Qualcomm Technologies, Inc SM8250"}


@pytest.mark.parametrize("chip, fingerprint, family", [
    ("jetson-orin-nano", EPYC, "Arm"),
    ("Jetson Xavier NX", XEON, "Arm"),
    ("rk3399", EPYC, "Arm"),
    ("Atlas 200 DK", EPYC, "Arm"),
    ("snapdragon-865", XEON, "Arm"),
    ("epyc-7b13", JETSON, "x86"),
    ("x86_64", RK3399, "x86"),
    ("Xeon E5-2680", EPYC, "Intel"),
    ("ryzen-7950x", XEON, "AMD"),
    ("visionfive2 jh7110", PHONE, "RISC-V"),
])
def test_a_contradiction_names_the_chip_the_family_and_what_the_board_reports(
        chip: str, fingerprint: dict[str, str], family: str) -> None:
    why = contradiction(chip, fingerprint)
    assert why is not None
    assert why.startswith(f"chip {chip!r} declares {family} hardware, but the board reports {fingerprint['arch']}")
    assert fingerprint["cpu_model"] in why


@pytest.mark.parametrize("chip, fingerprint", [
    ("auto", EPYC),
    ("epyc-7b13", EPYC),
    ("x86_64 AMD EPYC 7B13", EPYC),
    ("NVIDIA A100", EPYC),  # a GPU name says nothing of the host's CPU
    ("jetson-orin-nano", JETSON),
    ("rk3399", RK3399),
    ("sm8250", PHONE),
    ("lab-box-3", EPYC),  # a lab's own name is not judged
    ("rk3399", {}),  # nothing reported: nothing to contradict
    ("rk3399", {"arch": "mips64", "cpu_model": "?"}),  # an architecture the table does not know
])
def test_what_may_be_true_is_not_called(chip: str, fingerprint: dict[str, str]) -> None:
    assert contradiction(chip, fingerprint) is None
