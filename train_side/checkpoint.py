"""Side checkpoints: only the side network and its config, never the backbone or the head.

    side.safetensors    the side network's weights
    side_config.json    a :class:`Checkpoint`: its SideConfig, optimisation and data settings,
                        progress, and the store it was trained from (fingerprint, codec, provenance)
    resume.pt           optimizer and schedule state, to continue training exactly (deleted when
                        the run finishes, unless kept with --keep-resume)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from extract.provenance import Provenance
from featurestore import FeatureStore
from featurestore.errors import UserError

from .config import DataConfig, OptimConfig
from .network.model import SideConfig, SideNetwork

WEIGHTS, CONFIG, RESUME = "side.safetensors", "side_config.json", "resume.pt"
VERSION = 1  # of side_config.json; a file without "version" is version 1


class CheckpointError(UserError, FileNotFoundError):
    """A directory that holds no usable side checkpoint; the message says what to do."""


@dataclass
class TrainedFrom:
    """The store a side network was trained from: enough to find it again, to check that another
    store matches it, and to reload its backbone for generation."""

    fingerprint: str
    codec: dict
    layers: list[int]
    location: str
    provenance: Provenance

    @classmethod
    def of(cls, store: FeatureStore) -> TrainedFrom:
        return cls(store.fingerprint, store.codec.spec, list(store.layers), store.location,
                   Provenance.load(store.attrs))

    def to_json(self) -> dict:
        return {"fingerprint": self.fingerprint, "codec": self.codec, "layers": self.layers,
                "location": self.location, **self.provenance.source()}

    @classmethod
    def from_json(cls, d: dict) -> TrainedFrom:
        return cls(d["fingerprint"], d["codec"], d["layers"], d["location"], Provenance.load(d))


@dataclass
class Checkpoint:
    """What side_config.json says of a trained side network (its weights are side.safetensors)."""

    name: str
    side: SideConfig
    optim: OptimConfig
    data: DataConfig
    store: TrainedFrom
    n_parameters: int
    step: int
    epochs: float  # epochs done, fractional mid-epoch
    val_loss: float | None
    train_seconds: float
    stopped_early: bool = False  # by --early-stop, before its last step: the run is finished all the same
    version: int = VERSION

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {
            "side": asdict(self.side), "optim": asdict(self.optim), "data": asdict(self.data),
            "store": self.store.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> Checkpoint:
        if d.get("version", 1) != VERSION:
            raise CheckpointError(f"checkpoint version {d.get('version')} is not {VERSION}; upgrade ladder-cache")
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d} | {
            "side": SideConfig(**d["side"]), "optim": OptimConfig(**d["optim"]), "data": DataConfig(**d["data"]),
            "store": TrainedFrom.from_json(d["store"])})

    @classmethod
    def load(cls, out: str | Path) -> Checkpoint:
        return cls.from_json(load_config(out))


def _replace(path: Path, write) -> None:
    """Writes through a temporary file then renames: a checkpoint is never half-written. Every file
    gets the mode the process umask gives (safetensors writes its file 0600, which would keep a run
    on a shared disk from the team)."""
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    os.chmod(temporary, 0o666 & ~_umask())
    os.replace(temporary, path)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: set it straight back
    os.umask(mask)
    return mask


def save(out: Path, model: SideNetwork, config: Checkpoint) -> None:
    _replace(out / WEIGHTS, lambda p: save_file({k: v.contiguous() for k, v in model.state_dict().items()}, p))
    _replace(out / CONFIG, lambda p: p.write_text(json.dumps(config.to_json(), indent=1) + "\n"))


def save_resume_state(out: Path, optimizer, scheduler, step: int) -> None:
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step}
    _replace(out / RESUME, lambda p: torch.save(state, p))


def load_config(out: Path) -> dict:
    """side_config.json as it is on disk (see :class:`Checkpoint` for the typed record)."""
    path = Path(out) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{out} holds no side checkpoint ({CONFIG} is missing)")
    return json.loads(path.read_text())


def load_weights(out: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    return load_file(Path(out) / WEIGHTS, device=str(device))


def load_side(out: Path, device: torch.device | str = "cpu") -> SideNetwork:
    """The trained side network, in eval mode (:meth:`Checkpoint.load` reads the rest of the record)."""
    model = SideNetwork(Checkpoint.load(out).side).to(device)
    model.load_state_dict(load_weights(out, device))
    return model.eval()


def load_resume_state(out: Path, optimizer, scheduler, device: torch.device) -> int:
    path = Path(out) / RESUME
    if not path.is_file():
        raise CheckpointError(f"{out} has no {RESUME} to resume from; train without --resume")
    state = torch.load(path, map_location=device, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["step"]
