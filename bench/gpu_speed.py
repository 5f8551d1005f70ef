"""G1: `pgd-at` training throughput on a GPU, bf16 autocast + channels_last vs. fp32, measured side
by side in one run on the same batch; and a check that the attack loop never waits on the device.

    make bench-gpu                                    # ResNet-50, 224 px, batch 64, K = 10
    python bench/gpu_speed.py --device cpu --backbone resnet18 --size 32 --batch 4 --steps 2   # smoke run

Each side runs the training step the way ``robustdml train`` does (the model in channels_last and
the step under ``torch.autocast(bfloat16)`` when ``amp`` is on): the K-step attack, the forward and
backward of the adversarial batch, the optimiser step. fp32 is PyTorch's default, in which cuDNN
may use TF32 for convolutions. Prints ``G1 RATIO`` (bf16 images/s over fp32 images/s), then details.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import compare, print_figures, training_setup  # noqa: E402

from robustdml.methods import create_method  # noqa: E402


def _setup(device: torch.device, backbone: str, batch: int, size: int, steps: int, fast: bool):
    model, criterion, optimizer, x, y, index = training_setup(device, backbone, batch, size, classes=100)
    if fast:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    method = create_method("pgd-at", eps=8 / 255, steps=steps)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            loss = method.loss(model, criterion, x, y, index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, model, x


def attack_syncs(device: torch.device, model, x, steps: int) -> str:
    """Run the K-step attack with CUDA's sync debug mode set to error: 'none' if no step of the
    loop made the host wait for the device, else the error."""
    if device.type != "cuda":
        return "not checked (CUDA only)"
    from robustdml.attacks import EmbeddingDisplacement
    attack = EmbeddingDisplacement(eps=8 / 255, steps=steps)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            attack(model, x)
        return "none"
    except RuntimeError as e:
        return str(e).splitlines()[0][:200]
    finally:
        torch.cuda.set_sync_debug_mode("default")


def measure(device: torch.device, backbone: str = "resnet50", batch: int = 64, size: int = 224, steps: int = 10,
            repeats: int = 5) -> tuple[list[str], dict]:
    fast_step, fast_model, fast_x = _setup(device, backbone, batch, size, steps, fast=True)
    fp32_step, _, _ = _setup(device, backbone, batch, size, steps, fast=False)
    t_fast, t_fp32 = compare(fast_step, fp32_step, device, repeats=repeats)
    details = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "backbone": backbone, "image": size, "batch": batch, "attack_steps": steps,
        "bf16_channels_last_images_per_s": round(batch / t_fast, 1), "fp32_images_per_s": round(batch / t_fp32, 1),
        "bf16_step_s": round(t_fast, 4), "fp32_step_s": round(t_fp32, 4),
        "attack_loop_host_syncs": attack_syncs(device, fast_model, fast_x, steps),
    }
    if device.type == "cuda":
        details["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return [f"G1 {t_fp32 / t_fast:.2f}"], details


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke run")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="attack steps K")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_speed: no CUDA device here; this benchmark needs a GPU (or --device cpu for a smoke run)",
              file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    lines, details = measure(device, args.backbone, args.batch, args.size, args.steps, args.repeats)
    return print_figures(lines, details)


if __name__ == "__main__":
    raise SystemExit(main())
