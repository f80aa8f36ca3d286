"""Side checkpoints: only the side network and its config, never the backbone or the head.

    side.safetensors    the side network's weights
    side_config.json    its SideConfig, optimisation and data settings, and the store it was
                        trained from (fingerprint, codec, backbone info)
    resume.pt           optimizer and schedule state, to continue training exactly
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .model import SideConfig, SideNetwork

WEIGHTS, CONFIG, RESUME = "side.safetensors", "side_config.json", "resume.pt"


def _replace(path: Path, write) -> None:
    """Writes through a temporary file then renames: a checkpoint is never half-written."""
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    os.replace(temporary, path)


def save(out: Path, model: SideNetwork, config: dict) -> None:
    _replace(out / WEIGHTS, lambda p: save_file({k: v.contiguous() for k, v in model.state_dict().items()}, p))
    _replace(out / CONFIG, lambda p: p.write_text(json.dumps(config, indent=1) + "\n"))


def save_resume_state(out: Path, optimizer, scheduler, step: int) -> None:
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step}
    _replace(out / RESUME, lambda p: torch.save(state, p))


def load_config(out: Path) -> dict:
    path = Path(out) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{out} holds no side checkpoint ({CONFIG} is missing)")
    return json.loads(path.read_text())


def load_weights(out: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    return load_file(Path(out) / WEIGHTS, device=str(device))


def load_side(out: Path, device: torch.device | str = "cpu") -> tuple[SideNetwork, dict]:
    """The trained side network (eval mode) and its checkpoint config."""
    config = load_config(out)
    model = SideNetwork(SideConfig(**config["side"])).to(device)
    model.load_state_dict(load_weights(out, device))
    return model.eval(), config


def load_resume_state(out: Path, optimizer, scheduler, device: torch.device) -> int:
    path = Path(out) / RESUME
    if not path.is_file():
        raise FileNotFoundError(f"{out} has no {RESUME} to resume from; train without --resume")
    state = torch.load(path, map_location=device, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["step"]
